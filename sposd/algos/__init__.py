"""Algorithms: config schema, the Algorithm (a composition of components: the RL term, teacher contexts, token
selections, advantage modifiers), and a registry for subclasses."""

from sposd.algos.base import ALGOS, Algorithm, LossTerm, Normalizer, PolicyBatch, get_algo, register_algo
from sposd.algos.config import AlgoCfg
from sposd.algos.grpo import KLToRefTerm, PolicyGradientTerm, rl_terms

__all__ = [
    "ALGOS",
    "AlgoCfg",
    "Algorithm",
    "KLToRefTerm",
    "LossTerm",
    "Normalizer",
    "PolicyBatch",
    "PolicyGradientTerm",
    "get_algo",
    "register_algo",
    "rl_terms",
]
