"""Rollout engines: the `RolloutEngine` protocol, the vLLM engine, and a scripted fake for unit tests."""

from sposd.rollout.base import RolloutEngine, SamplingCfg

__all__ = ["RolloutEngine", "SamplingCfg"]
