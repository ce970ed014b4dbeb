"""The learner: DeepSpeed ZeRO-3 (gloo on CPU, NCCL on GPU), the step's plan, passes on hidden states, export.

`DeepSpeedLearner` lives in `sposd.learner.learner`; `from sposd.learner import DeepSpeedLearner` imports it
lazily (DeepSpeed stays out of `import sposd.learner`).
"""

from sposd.learner.batching import LearnerSample, collate
from sposd.learner.plan import plan_micro_batches

__all__ = ["DeepSpeedLearner", "LearnerSample", "collate", "plan_micro_batches"]


def __getattr__(name: str):
    if name == "DeepSpeedLearner":
        from sposd.learner.learner import DeepSpeedLearner

        return DeepSpeedLearner
    raise AttributeError(f"module 'sposd.learner' has no attribute {name!r}")
