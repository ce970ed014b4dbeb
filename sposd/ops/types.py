"""The return type shared by every loss in `sposd.ops` and `sposd.algos`."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LossOut(NamedTuple):
    """A differentiable scalar loss plus detached diagnostics.

    Attributes:
        loss: scalar to call `.backward()` on.
        metrics: computed under `no_grad`; each is this micro-batch's share of the batch value (normalised by
            the same global counts as the loss); summed over micro-batches and ranks: the batch value.
    """

    loss: Tensor
    metrics: dict[str, Tensor | float]
