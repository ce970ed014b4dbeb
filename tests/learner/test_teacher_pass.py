"""The learner's teacher pass on the real DeepSpeed ZeRO-3 engine (one gloo rank, tiny model, no vLLM).

- Alignment: a padded batch of [teacher context | completion] rows with different context and completion
  lengths gives, on every completion position, the logits of one-sequence-at-a-time forwards of a plain
  transformers model (no padding anywhere).
- EMA teacher: after one optimiser step, theta_T = (1 - r) theta_0 + r theta_1, shard by shard.
- A distillation-only step lowers the divergence it optimises.
"""

from __future__ import annotations

import pytest
import torch

from sposd.learner.batching import LearnerSample

pytestmark = pytest.mark.integration


class _Optim:
    lr, weight_decay, betas, eps = 1e-2, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


def _learner(path, lr=1e-2, **distill):
    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg, DistillCfg
    from sposd.learner.learner import DeepSpeedLearner

    d = DistillCfg(coef=1.0, context="reference_solution", normalize="token_mean", **distill)
    algo = get_algo("opsd")(AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, dual_clip_c=None, distill=d))
    optim = type("Optim", (_Optim,), {"lr": lr})
    return DeepSpeedLearner(
        str(path),
        algo=algo,
        optim=optim,
        total_steps=10,
        device="cpu",
        dtype="float32",
        zero_stage=3,
        micro_batch_tokens=4096,
        pad_id=0,
    )


def _gathered(module) -> dict[str, torch.Tensor]:
    from sposd.sync.weights import iter_gathered_params

    return {n: t.clone() for n, t in iter_gathered_params(module)}


ROWS = [  # (student prompt, teacher context, completion)
    ([5, 6, 7], [5, 6, 7, 40, 41, 42, 43, 44], [20, 21, 22, 23]),
    ([5, 8], [5, 8, 50], [30, 31]),
    ([9, 10, 11, 12], [9, 10, 11, 12, 60, 61, 62, 63, 64, 65, 66], [33, 34, 35, 36, 37, 38]),
]


def _samples(weight=1.0):
    return [
        LearnerSample(
            p, c, 0.0, teacher_prompt_ids=t, distill_weight=weight, distill_len=len(c), distill_units=float(len(c))
        )
        for p, t, c in ROWS
    ]


def test_teacher_rows_align_with_unpadded_single_sequence_forwards(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    learner = _learner(tiny_model_dir, teacher="current")
    logits = learner._teacher_logits(_samples())  # [3, 6, V] as hidden states + head, contexts left-padded to 11
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for r, (_, ctx, comp) in enumerate(ROWS):
        with torch.no_grad():
            ref = plain(input_ids=torch.tensor([ctx + comp])).logits[0, len(ctx) - 1 : -1]
        got = logits[r, : len(comp)].block(torch.arange(len(comp)))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_ema_teacher_blends_shard_by_shard(tiny_model_dir):
    learner = _learner(tiny_model_dir, teacher="ema", ema_rate=0.5)
    theta0 = _gathered(learner.module)
    samples = _samples()
    first = learner.train_step(samples, max_len=8)
    theta1, teacher = _gathered(learner.module), _gathered(learner.teacher.module)
    assert theta1.keys() == teacher.keys()
    for n in theta0:
        torch.testing.assert_close(teacher[n], 0.5 * theta0[n] + 0.5 * theta1[n], atol=1e-6, rtol=0)
    assert any((theta1[n] - theta0[n]).abs().max() > 0 for n in theta0)
    assert first["distill/tokens"] == sum(len(c) for *_, c in ROWS)
    assert first["time/teacher_fwd_s"] > 0


def test_distillation_steps_lower_the_divergence_to_a_fixed_teacher(tiny_model_dir):
    learner = _learner(tiny_model_dir, lr=1e-3, teacher="initial", divergence="fkl")
    samples = _samples()
    losses = [learner.train_step(samples, max_len=8)["loss/distill"] for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_checkpoint_restores_optimizer_schedule_and_ema_teacher_exactly(tiny_model_dir, tmp_path):
    # Two steps straight through must equal: one step, save, a fresh learner loading it, one step.
    from sposd import checkpoint as ck

    samples = _samples()
    a = _learner(tiny_model_dir, teacher="ema", ema_rate=0.5)
    a.train_step(samples, max_len=8)
    tmp = ck.begin(tmp_path, 1)
    a.save_state(tmp)
    ck.save_model_files(tmp, a.module.config, tokenizer=None)
    saved = ck.commit(tmp_path, tmp, 1, {}, keep=1)
    theta_1 = _gathered(a.module)
    second = a.train_step(samples, max_len=8)
    theta_a, teacher_a = _gathered(a.module), _gathered(a.teacher.module)

    b = _learner(tiny_model_dir, teacher="ema", ema_rate=0.5)
    b.load_state(saved)
    assert b.optimizer_steps == 1
    resumed = b.train_step(samples, max_len=8)
    assert resumed["loss/total"] == second["loss/total"] and resumed["actor/lr"] == second["actor/lr"]
    theta_b, teacher_b = _gathered(b.module), _gathered(b.teacher.module)
    for n in theta_a:
        torch.testing.assert_close(theta_b[n], theta_a[n], atol=0, rtol=0)  # Adam moments restored too
        torch.testing.assert_close(teacher_b[n], teacher_a[n], atol=0, rtol=0)

    # `sposd export`: the checkpoint's policy as a plain transformers model, equal to the gathered weights
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(ck.export_hf(saved, tmp_path / "hf"), dtype=torch.float32)
    sd = exported.state_dict()
    for n, t in theta_1.items():
        torch.testing.assert_close(sd[n], t, atol=0, rtol=0)


def _family_learner(path, algo_cfg, lr=1e-2):
    from sposd.algos import get_algo
    from sposd.learner.learner import DeepSpeedLearner

    return DeepSpeedLearner(
        str(path),
        algo=get_algo(algo_cfg.name)(algo_cfg),
        optim=type("Optim", (_Optim,), {"lr": lr}),
        total_steps=10,
        device="cpu",
        dtype="float32",
        zero_stage=3,
        micro_batch_tokens=4096,
        pad_id=0,
    )


def test_tip_sparse_path_at_full_retention_equals_the_dense_path(tiny_model_dir):
    # TIP computes the divergence at its kept positions only (hidden states + the output layer there, under
    # ZeRO-3). Keeping every position must give the OPSD(rkl) loss over all positions and the same update.
    import gc

    from sposd.algos.config import AlgoCfg, DistillCfg, TipCfg

    base = dict(coef=1.0, context="reference_solution", normalize="token_mean", teacher="current", divergence="rkl")
    dense_cfg = AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, dual_clip_c=None, distill=DistillCfg(**base))
    tip_cfg = AlgoCfg(
        name="tip",
        group_size=1,
        rl_coef=0.0,
        dual_clip_c=None,
        distill=DistillCfg(**base, select="tip", tip=TipCfg(ratio=1.0)),
    )
    results = []
    for cfg in (dense_cfg, tip_cfg):
        learner = _family_learner(tiny_model_dir, cfg)
        m = learner.train_step(_samples(), max_len=8)
        results.append((m, _gathered(learner.module)))
        del learner
        gc.collect()
    (m_dense, p_dense), (m_tip, p_tip) = results
    assert m_tip["distill/tokens"] == m_dense["distill/tokens"] == sum(len(c) for *_, c in ROWS)
    assert m_tip["loss/distill"] == pytest.approx(m_dense["loss/distill"], rel=1e-5)
    assert m_tip["actor/rollout_logp_abs_diff"] == pytest.approx(m_dense["actor/rollout_logp_abs_diff"], abs=1e-6)
    for n in p_dense:
        torch.testing.assert_close(p_tip[n], p_dense[n], atol=1e-6, rtol=1e-5)


def test_tip_keeps_half_the_positions_on_the_learner(tiny_model_dir):
    from sposd.algos.config import AlgoCfg, DistillCfg, TipCfg

    cfg = AlgoCfg(
        name="tip",
        group_size=1,
        rl_coef=0.0,
        dual_clip_c=None,
        distill=DistillCfg(
            coef=1.0, context="reference_solution", select="tip", tip=TipCfg(ratio=0.5), divergence="rkl"
        ),
    )
    learner = _family_learner(tiny_model_dir, cfg)
    m = learner.train_step(_samples(), max_len=8)
    n = sum(len(c) for *_, c in ROWS)  # 12 positions over the batch -> 6 kept
    assert (m["distill/positions"], m["distill/tokens"]) == (n, n // 2)


def test_scoring_passes_equal_the_dense_teacher_log_probs(tiny_model_dir):
    # CEPO's teacher passes run on hidden states with the output layer applied in blocks: the same log-probs as a
    # dense forward of [context | completion]
    from sposd.algos.config import AdvModCfg, AlgoCfg
    from sposd.learner.batching import collate

    learner = _family_learner(tiny_model_dir, AlgoCfg(name="cepo", adv_mod=AdvModCfg(kind="cepo")))
    samples = [LearnerSample(p, c, 1.0, score_prompt_ids=[t, p + [70, 71]]) for p, t, c in ROWS]
    T = max(len(c) for *_, c in ROWS)
    got = learner._score_logps(samples, T)
    assert got.shape == (2, 3, T)
    for k in range(2):
        mb = collate([LearnerSample(s.score_prompt_ids[k], s.completion_ids, 0.0) for s in samples], pad_id=0)
        with torch.no_grad():
            ref = learner._logp(learner.engine, mb)
        for r, (*_, c) in enumerate(ROWS):
            torch.testing.assert_close(got[k, r, : len(c)], ref[r, : len(c)], atol=1e-5, rtol=1e-5)
    m = learner.train_step(samples, max_len=8)
    assert "adv_mod/factor_mean" in m and m["loss/pg"] == m["loss/pg"]  # finite
