"""One learner step of every `conf/algo/*.yaml` on hidden states equals the dense path: loss and every parameter
gradient within 1e-5 (tiny model, fp32, CPU, one gloo rank, DeepSpeed ZeRO-3, no vLLM).

The dense path is the reference kept here only: `passes.logits_of` replaced by the materialised logits h W^T + b
([rows, T, V], with grad), so every op runs its dense code on the whole tensor and autograd differentiates the
output layer. Both steps run on one learner with lr 0 (the parameters, the EMA / periodic teacher and the
reference model stay the initial ones), and the gradient is read from DeepSpeed's fp32 partitions just before the
optimiser step of the accumulation boundary. The micro-batch budget splits the batch in three, so the gradient is
accumulated over micro-batches too.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from sposd.learner.batching import LearnerSample

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[2] / "conf"
ALGOS = sorted(p.stem for p in (CONF / "algo").glob("*.yaml"))
VARIANTS = {  # the divergence options no shipped YAML uses, on top of one that distils every row
    "opsd+token_clip": ("opsd", ["algo.distill.clip_mode=token", "algo.distill.clip_max=0.05"]),
    "opsd+sampled_token+is_clip": (
        "opsd",
        [
            "algo.distill.sampled_token=true",
            "algo.distill.clip_mode=token",
            "algo.distill.divergence=rkl",
            "algo.distill.is_clip=2.0",
        ],
    ),
    "opsd+jsd_unclipped": (
        "opsd",
        ["algo.distill.divergence=jsd", "algo.distill.beta=0.5", "algo.distill.clip_max=null"],
    ),
    "opsd+teacher_topk_fkl": ("opsd", ["algo.distill.support=teacher_topk", "algo.distill.divergence=fkl"]),
    "opsd+student_topk_tail_rkl": ("opsd", ["algo.distill.support=student_topk_tail", "algo.distill.divergence=rkl"]),
    "ssopd+loss_temperature": ("ssopd", ["algo.distill.loss_temperature=1.3"]),
}
ROWS = [  # (student prompt, teacher context, completion, advantage)
    ([5, 6, 7], [5, 6, 7, 40, 41, 42, 43, 44], [20, 21, 22, 23], 1.0),
    ([5, 8], [5, 8, 50], [30, 31], -0.5),
    ([9, 10, 11, 12], [9, 10, 11, 12, 60, 61, 62, 63, 64, 65, 66], [33, 34, 35, 36, 37, 38], 0.7),
    ([13, 14], None, [25, 26, 27, 28, 29], -1.2),
]
TEMPERATURE = 0.9


class _Optim:
    lr, weight_decay, betas, eps = 0.0, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


def _learner(model_dir, algo, *, micro_batch_tokens: int, **kw):
    """The tiny learner these parity tests step: one CPU rank, fp32, ZeRO-3, lr 0 (`_Optim`), pad id 0."""
    from sposd.learner.learner import DeepSpeedLearner

    kw.setdefault("total_steps", 10)
    kw.setdefault("loss_temperature", TEMPERATURE)
    return DeepSpeedLearner(str(model_dir), algo=algo, optim=_Optim, device="cpu", dtype="float32", zero_stage=3,
                            micro_batch_tokens=micro_batch_tokens, pad_id=0, **kw)  # fmt: skip


def _algo_cfg(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from sposd.config import register_configs, register_resolvers, to_object

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=["hardware=cpu", f"algo={name}", *overrides])).algo


def _samples(algo) -> list[LearnerSample]:
    distills, K = algo.cfg.distill.enabled, algo.num_score_contexts
    out = []
    for p, t, c, adv in ROWS:
        teach = distills and t is not None
        out.append(
            LearnerSample(
                p,
                c,
                adv,
                rollout_logprobs=[-1.0] * len(c),
                teacher_prompt_ids=t if teach else None,
                distill_weight=0.5 if teach else 0.0,
                distill_len=len(c) - 1 if teach else 0,
                distill_units=float(len(c)) if teach else 0.0,
                score_prompt_ids=[(t or p) + [70 + k] for k in range(K)] if K else None,
            )
        )
    return out


def _step_and_grads(learner, samples) -> tuple[dict, dict[str, torch.Tensor]]:
    from deepspeed.utils import safe_get_full_grad

    grads: dict[str, torch.Tensor] = {}
    step = learner.engine.step
    torch.manual_seed(0)  # the same draws (TIP's selection) on both paths

    def capture_then_step():
        if learner.engine.is_gradient_accumulation_boundary():
            grads.update({n: safe_get_full_grad(p).clone() for n, p in learner.module.named_parameters()})
        step()

    learner.engine.step = capture_then_step
    try:
        metrics = learner.train_step(samples, max_len=8)
    finally:
        learner.engine.step = step
    return metrics, grads


def _dense_logits(hidden, weight, bias):
    return torch.nn.functional.linear(hidden, weight, bias)


@pytest.mark.parametrize("case", ALGOS + sorted(VARIANTS))
def test_one_step_on_hidden_states_equals_the_dense_path(case, tiny_model_dir, monkeypatch):
    from sposd.algos import get_algo
    from sposd.learner import passes

    name, overrides = VARIANTS.get(case, (case, []))
    cfg = _algo_cfg(name, overrides)
    algo = get_algo(cfg.name)(cfg, rollout_temperature=TEMPERATURE)
    algo.begin_step(1, 10)
    learner = _learner(tiny_model_dir, algo, micro_batch_tokens=24)  # three micro-batches
    samples = _samples(algo)
    m_new, g_new = _step_and_grads(learner, samples)
    with monkeypatch.context() as mp:
        mp.setattr(passes, "logits_of", _dense_logits)
        m_dense, g_dense = _step_and_grads(learner, samples)
    del learner
    gc.collect()

    assert abs(m_new["loss/total"] - m_dense["loss/total"]) <= 1e-5, (m_new["loss/total"], m_dense["loss/total"])
    assert m_new.keys() == m_dense.keys()
    assert g_new.keys() == g_dense.keys() and g_new
    worst = max((g_new[n] - g_dense[n]).abs().max().item() for n in g_new)
    assert worst <= 1e-5, worst
    assert any(g.abs().max() > 0 for g in g_new.values())  # the step does move the policy
    if algo.cfg.distill.enabled:
        assert m_new["distill/tokens"] > 0, case


@pytest.fixture(scope="module")
def qwen3_vocab_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Qwen3 with Qwen3's 151,936-entry vocabulary and an untied output layer (random)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=151_936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen3_vocab") / "model"
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    return out


def test_qwen3_vocabulary_step_on_hidden_states_equals_the_dense_path(qwen3_vocab_model_dir, monkeypatch):
    # SSOPD (clipped surrogate + full-vocabulary JSD to the current policy) with 151,936 logits per position
    from sposd.algos import get_algo
    from sposd.learner import passes

    cfg = _algo_cfg("ssopd", [])
    algo = get_algo(cfg.name)(cfg, rollout_temperature=TEMPERATURE)
    learner = _learner(qwen3_vocab_model_dir, algo, micro_batch_tokens=24)
    big = [
        LearnerSample(
            [150_000 + t for t in s.prompt_ids],
            [151_000 + t for t in s.completion_ids],
            s.adv,
            teacher_prompt_ids=None if s.teacher_prompt_ids is None else s.teacher_prompt_ids + [151_935],
            distill_weight=s.distill_weight,
            distill_len=s.distill_len,
            distill_units=s.distill_units,
        )
        for s in _samples(algo)
    ]
    m_new, g_new = _step_and_grads(learner, big)
    with monkeypatch.context() as mp:
        mp.setattr(passes, "logits_of", _dense_logits)
        m_dense, g_dense = _step_and_grads(learner, big)
    assert m_new["distill/tokens"] > 0
    assert abs(m_new["loss/total"] - m_dense["loss/total"]) <= 1e-5
    assert max((g_new[n] - g_dense[n]).abs().max().item() for n in g_new) <= 1e-5
