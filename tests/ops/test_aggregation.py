import pytest
import torch

from sposd.ops.aggregation import AGG_MODES, aggregate

# loss [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 0], [1, 0, 0]]: row sums 3 and 4, total 7, 3 tokens, 2 sequences
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
HAND = {
    "token-mean": 7 / 3,
    "seq-mean-token-mean": (3 / 2 + 4 / 1) / 2,  # 2.75
    "seq-mean-token-sum": 7 / 2,
    "seq-mean-token-sum-norm": 7 / (2 * 4),  # L_const = 4
}


@pytest.mark.parametrize("mode", AGG_MODES)
def test_hand_computed(mode):
    out = aggregate(LOSS, MASK, mode=mode, num_tokens=3, num_seqs=2, max_len=4)
    torch.testing.assert_close(out, torch.tensor(HAND[mode]))


def _split(loss_BT, mask_BT, rows):
    """Micro-batch `rows`, trimmed to its own longest completion (as the learner pads per micro-batch)."""
    width = int(mask_BT[rows].sum(-1).max())
    return loss_BT[rows, :width], mask_BT[rows, :width]


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_split_invariance(mode):
    torch.manual_seed(0)
    lengths = torch.tensor([7, 2, 5, 1, 3, 6])
    mask_BT = (torch.arange(7)[None] < lengths[:, None]).float()
    loss_BT = torch.randn(6, 7)
    norm = {"num_tokens": float(mask_BT.sum()), "num_seqs": 6.0, "max_len": 10}
    whole = aggregate(loss_BT, mask_BT, mode=mode, **norm)
    pieces = [[0, 3], [1], [2, 4, 5]]
    parts = sum(aggregate(*_split(loss_BT, mask_BT, rows), mode=mode, **norm) for rows in pieces)
    torch.testing.assert_close(parts, whole)


def test_fully_masked_row_adds_nothing():
    out = aggregate(
        torch.ones(2, 3),
        torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        mode="seq-mean-token-mean",
        num_tokens=2,
        num_seqs=1,
        max_len=3,
    )
    torch.testing.assert_close(out, torch.tensor(1.0))


def test_token_mean_gradient_is_mask_over_num_tokens():
    loss = LOSS.clone().requires_grad_()
    aggregate(loss, MASK, mode="token-mean", num_tokens=10, num_seqs=2, max_len=4).backward()
    torch.testing.assert_close(loss.grad, MASK / 10)


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        aggregate(LOSS, MASK, mode="token_mean", num_tokens=3, num_seqs=2, max_len=4)
