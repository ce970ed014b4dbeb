"""Group-relative advantages from outcome rewards (verl `compute_grpo_outcome_advantage`).

Legend: P prompts, G completions per prompt (group size), B = P * G completions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def group_advantages(rewards_PG: Tensor, *, std_normalize: bool, eps: float = 1e-6) -> Tensor:
    """Centre each prompt's G rewards; divide by their unbiased std + eps (GRPO) or not (Dr.GRPO).

    A group of one completion has no peers: it uses mean 0 and std 1, as verl does, so its advantage is its
    reward (divided by 1 + eps when std_normalize).

    Args:
        rewards_PG: one row of G rewards per prompt.
        std_normalize: True for GRPO/DAPO, False for Dr.GRPO.
        eps: added to the std.
    Returns: adv_PG.
    """
    if rewards_PG.shape[-1] <= 1:
        mean_P1, std_P1 = torch.zeros_like(rewards_PG), torch.ones_like(rewards_PG)
    else:
        mean_P1 = rewards_PG.mean(dim=-1, keepdim=True)
        std_P1 = rewards_PG.std(dim=-1, keepdim=True)
    centred_PG = rewards_PG - mean_P1
    return centred_PG / (std_P1 + eps) if std_normalize else centred_PG


def ragged_group_advantages(
    rewards: Sequence[Sequence[float]], *, std_normalize: bool, eps: float = 1e-6
) -> Tensor:
    """`group_advantages` for groups of different sizes, flattened in group order.

    Args:
        rewards: one list of rewards per group (sizes may differ, e.g. after per-completion filtering).
        std_normalize, eps: as in `group_advantages`.
    Returns: adv_B (float32) with B = total number of completions.
    """
    parts = [
        group_advantages(torch.tensor([list(r)], dtype=torch.float32), std_normalize=std_normalize, eps=eps)[
            0
        ]
        for r in rewards
    ]
    return torch.cat(parts) if parts else torch.zeros(0)
