"""The learner: DeepSpeed ZeRO-3 engine wrapper (gloo on CPU, NCCL on GPU), micro-batching, export."""

from sposd.learner.batching import LearnerSample, collate
from sposd.learner.plan import plan_micro_batches

__all__ = ["LearnerSample", "collate", "plan_micro_batches"]
