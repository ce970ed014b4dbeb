"""Micro-batch planning and the [left-padded prompt | right-padded completion] layout."""

import torch

from sposd.learner.batching import LearnerSample, collate
from sposd.learner.deepspeed import lr_lambda
from sposd.learner.plan import plan_micro_batches


def test_plan_respects_budget_and_covers_every_sample():
    lengths = [(5, 10), (3, 2), (8, 30), (4, 4), (6, 1)]
    plans = plan_micro_batches(lengths, max_tokens=40)
    assert sorted(i for p in plans for i in p) == list(range(5))
    for p in plans:
        if len(p) > 1:  # a lone over-long sample may exceed the budget by itself
            assert len(p) * (max(lengths[i][0] for i in p) + max(lengths[i][1] for i in p)) <= 40
    # (8,30) alone is 38 tokens: it must sit in a micro-batch of its own
    assert [2] in plans


def test_collate_aligns_completions_at_one_column():
    s1 = LearnerSample(prompt_ids=[1, 2, 3], completion_ids=[7, 8], adv=1.0)
    s2 = LearnerSample(
        prompt_ids=[4], completion_ids=[9, 10, 11], adv=-1.0, loss_weight=0.0, rollout_logprobs=[-0.1, -0.2, -0.3]
    )
    b = collate([s1, s2], pad_id=0)
    # P = 3, T = 3: row 1 = [1 2 3 | 7 8 pad], row 2 = [pad pad 4 | 9 10 11]
    assert b["input_ids_BL"].tolist() == [[1, 2, 3, 7, 8, 0], [0, 0, 4, 9, 10, 11]]
    assert b["attention_mask_BL"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    # positions count real tokens only, so a left-padded prompt starts at position 0
    assert b["position_ids_BL"][1, 2:].tolist() == [0, 1, 2, 3]
    assert b["completion_ids_BT"].tolist() == [[7, 8, 0], [9, 10, 11]]
    # loss_weight 0 masks the whole completion; pads are masked
    assert b["mask_BT"].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert b["has_rollout_logp_B"].tolist() == [False, True]
    torch.testing.assert_close(b["rollout_logp_BT"][1], torch.tensor([-0.1, -0.2, -0.3]))


def test_lr_schedule_warmup_then_decay():
    kw = dict(warmup=2, total=10, min_ratio=0.0)
    assert [lr_lambda(s, schedule="constant", **kw) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    # linear: step 6 is half way through the 8 decay steps -> 0.5
    assert lr_lambda(6, schedule="linear", **kw) == 0.5
    assert abs(lr_lambda(6, schedule="cosine", **kw) - 0.5) < 1e-9
    assert lr_lambda(10, schedule="linear", **kw) == 0.0
