"""Shared prompts (`hardware.share_prompts`): each distinct prompt of a micro-batch runs once and its group's
completions attend to its cached keys and values. One learner step with and without sharing gives the same loss
and the same gradient of every parameter (tiny model, fp32, CPU, one gloo rank, DeepSpeed ZeRO-3, no vLLM).
"""

from __future__ import annotations

import gc

import pytest
import torch
from test_hidden_state_parity import _algo_cfg, _learner, _step_and_grads

from sposd.learner.batching import LearnerSample, collate, distinct_prompts
from sposd.learner.plan import plan_micro_batches

TEMPERATURE = 0.9
GROUPS = [  # (student prompt, teacher context, [(completion, advantage, distilled)])
    ([5, 6, 7], [5, 6, 7, 40, 41, 42], [([20, 21, 22, 23], 1.0, False), ([24, 25], -0.5, True), ([26], -0.5, True)]),
    ([9, 10], [9, 10, 50, 51], [([30, 31, 32], 0.7, False), ([33, 34, 35, 36, 37], -0.7, True)]),
    ([11, 12, 13, 14], None, [([38, 39], 0.0, False)]),
]


def _samples() -> list[LearnerSample]:
    out = []
    for prompt, teacher, completions in GROUPS:
        for comp, adv, distilled in completions:
            d = distilled and teacher is not None
            out.append(
                LearnerSample(
                    prompt,
                    comp,
                    adv,
                    rollout_logprobs=[-1.0] * len(comp),
                    teacher_prompt_ids=teacher if d else None,
                    distill_weight=0.5 if d else 0.0,
                    distill_len=len(comp) if d else 0,
                    distill_units=float(len(comp)) if d else 0.0,
                )
            )
    return out


def test_distinct_prompts_index_rows_by_first_appearance():
    s = [LearnerSample(p, [1], 0.0) for p in ([3, 4], [5], [3, 4], [5], [6, 7, 8], [3, 4])]
    idx = distinct_prompts(s)
    # prompts in order of appearance: [3,4] -> 0 (first at row 0), [5] -> 1 (row 1), [6,7,8] -> 2 (row 4)
    assert idx["prompt_rows_U"].tolist() == [0, 1, 4]
    assert idx["prompt_of_B"].tolist() == [0, 1, 0, 1, 2, 0]
    mb = collate(s, pad_id=0, share_prompts=True)
    assert mb["prompt_of_B"].tolist() == [0, 1, 0, 1, 2, 0]
    assert "prompt_of_B" not in collate(s, pad_id=0)


def test_shared_prompt_micro_batches_count_a_prompt_once():
    # 4 completions of one 10-token prompt (lengths 3, 5, 2, 4) and 2 of another 10-token prompt (1, 6).
    lengths = [(10, 3), (10, 5), (10, 2), (10, 4), (10, 1), (10, 6)]
    keys = [7, 7, 7, 7, 9, 9]
    # unshared: rows x (10 + longest completion) -- budget 60 holds 4 rows of 10 + 5 at most ... sorted by total
    # length (1, 2, 3, 4, 5, 6): [4, 2, 0, 3] costs 4 x 14 = 56; adding row 1 costs 5 x 15 = 75 > 60
    assert plan_micro_batches(lengths, 60) == [[4, 2, 0, 3], [1, 5]]
    # shared: distinct prompts x 10 + rows x longest completion; sorted by (10, key, completion):
    # key 7 rows 2, 0, 3, 1 cost 1 x 10 + 4 x 5 = 30; + row 4 (key 9): 2 x 10 + 5 x 5 = 45; + row 5: 20 + 36 = 56
    assert plan_micro_batches(lengths, 60, prompt_keys=keys) == [[2, 0, 3, 1, 4, 5]]
    # a tighter budget splits where the next row would exceed it: 45 <= 50, 56 > 50
    assert plan_micro_batches(lengths, 50, prompt_keys=keys) == [[2, 0, 3, 1, 4], [5]]


@pytest.mark.integration
@pytest.mark.parametrize(
    "algo_name, overrides",
    [
        ("grpo", []),
        ("grpo", ["algo.kl_coef=0.1", "algo.ppo_epochs=2"]),  # reference model and frozen old log-probs
        ("ssopd", []),  # the teacher (the policy) on shared teacher contexts
    ],
)
def test_one_step_with_shared_prompts_equals_the_step_without(algo_name, overrides, tiny_model_dir):
    from sposd.algos import get_algo

    cfg = _algo_cfg(algo_name, overrides)
    algo = get_algo(cfg.name)(cfg, rollout_temperature=TEMPERATURE)
    algo.begin_step(1, 10)
    results = []
    for share in (True, False):
        # two or three micro-batches either way
        learner = _learner(tiny_model_dir, algo, micro_batch_tokens=40, loss_temperature=TEMPERATURE,
                           share_prompts=share)  # fmt: skip
        assert learner.share_prompts is share
        results.append(_step_and_grads(learner, _samples()))
        del learner
        gc.collect()
    (m_shared, g_shared), (m_plain, g_plain) = results
    assert abs(m_shared["loss/total"] - m_plain["loss/total"]) <= 1e-5
    assert g_shared.keys() == g_plain.keys() and g_shared
    assert max((g_shared[n] - g_plain[n]).abs().max().item() for n in g_shared) <= 1e-5
    assert any(g.abs().max() > 0 for g in g_shared.values())
    if algo.cfg.distill.enabled:
        assert m_shared["distill/tokens"] == m_plain["distill/tokens"] > 0


def test_gradient_checkpointing_turns_sharing_off(tiny_model_dir):
    from sposd.algos import get_algo

    cfg = _algo_cfg("grpo", [])
    algo = get_algo(cfg.name)(cfg, rollout_temperature=1.0)
    learner = _learner(tiny_model_dir, algo, micro_batch_tokens=64, total_steps=1, loss_temperature=1.0,
                       gradient_checkpointing=True, share_prompts=True)  # fmt: skip
    try:
        assert learner.share_prompts is False  # transformers would drop the prompt's cache under checkpointing
    finally:
        del learner
        gc.collect()
        torch.manual_seed(0)
