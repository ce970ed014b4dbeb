"""The training loop in stages: `train` (the loop), `build` (components from the config), `rollouts`, `metrics`,
`heldout` (the toy benchmark's evaluation during training)."""

from sposd.loop.train import train

__all__ = ["train"]
