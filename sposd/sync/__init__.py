"""Weight sync: stream gathered learner parameters into the rollout engine after every optimiser step."""

from sposd.sync.weights import iter_gathered_params, push_weights

__all__ = ["iter_gathered_params", "push_weights"]
