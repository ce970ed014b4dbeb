"""Algorithms: config schema, the Algorithm interface and registry, and the registered methods."""

from sposd.algos import grpo  # noqa: F401  (registers grpo, dapo, dr_grpo)
from sposd.algos.base import ALGOS, Algorithm, LossTerm, Normalizer, PolicyBatch, get_algo, register_algo
from sposd.algos.config import AlgoCfg
from sposd.algos.grpo import GroupRelativePO, KLToRefTerm, PolicyGradientTerm, rl_terms

__all__ = [
    "ALGOS",
    "AlgoCfg",
    "Algorithm",
    "GroupRelativePO",
    "KLToRefTerm",
    "LossTerm",
    "Normalizer",
    "PolicyBatch",
    "PolicyGradientTerm",
    "get_algo",
    "register_algo",
    "rl_terms",
]
