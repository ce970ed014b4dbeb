"""Recording on the real stack (tiny model, DeepSpeed ZeRO-3 on one gloo rank).

- The learner's tap: the D_t and clip counts it captures during a real `train_step` equal, row by row, what that
  step's loss sums ("distill/div_sum", "distill/clipped_sum"; lr 0, so every step sees the same weights), including
  a row whose loss covers only its first positions, and a row's values do not depend on its micro-batch.
- A 2-step SSOPD run with train.inspect.every=1 writes inspect/step_1 and step_2, whose rows read back, carry the
  teacher context with the privileged witness marked, and render with `sposd inspect`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sposd.learner.batching import LearnerSample

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "conf"


class _Optim:
    lr, weight_decay, betas, eps = 0.0, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


ROWS = [  # (student prompt, teacher context, completion, positions with loss)
    ([5, 6, 7], [5, 6, 7, 40, 41, 42, 43, 44], [20, 21, 22, 23], 4),
    ([9, 10, 11, 12], [9, 10, 11, 12, 60, 61, 62, 63], [33, 34, 35, 36, 37, 38], 3),
]


@pytest.mark.parametrize(
    "distill",
    [
        dict(divergence="fkl", clip_max=1e-3, clip_mode="element", teacher="initial"),
        dict(divergence="jsd", beta=0.5, clip_max=2e-3, clip_mode="token", teacher="current", loss_temperature=1.3),
    ],
    ids=["fkl_element_clip_initial_teacher", "jsd_token_clip_current_teacher"],
)
def test_recorded_divergence_is_what_the_learner_step_sums(tiny_model_dir, distill):
    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg, DistillCfg
    from sposd.algos.distill.term import DistillTerm
    from sposd.inspect.record import InspectTap
    from sposd.learner.learner import DeepSpeedLearner

    d = DistillCfg(coef=1.0, context="reference_solution", normalize="token_mean", **distill)
    algo = get_algo("opsd")(AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, dual_clip_c=None, distill=d))
    learner = DeepSpeedLearner(
        str(tiny_model_dir), algo=algo, optim=_Optim, total_steps=10, device="cpu", dtype="float32",
        zero_stage=3, micro_batch_tokens=4096, pad_id=0,
    )  # fmt: skip
    samples = [
        LearnerSample(p, c, 0.0, teacher_prompt_ids=t, distill_weight=1.0, distill_len=n, distill_units=float(n))
        for p, t, c, n in ROWS
    ]
    term = next(t for t in algo.terms if isinstance(t, DistillTerm))

    def step_with_tap(rows):
        learner.inspect_tap = tap = InspectTap(term, topk=3)
        for s in rows:
            s.inspect_key = (0, samples.index(s))
        m = learner.train_step(rows, max_len=8)  # lr 0: every step sees the same weights
        learner.inspect_tap = None
        return m, tap.captured

    both, captured = step_with_tap(samples)
    assert sorted(captured) == [(0, 0), (0, 1)] and captured[(0, 1)]["div_DT"].shape == (6,)
    for r, s in enumerate(samples):
        alone, mine = step_with_tap([s])
        n, m, rec = s.distill_len, len(s.completion_ids), captured[(0, r)]
        assert rec["weight_DT"][:m].tolist() == [1.0] * n + [0.0] * (m - n)
        # the same row alone or in a micro-batch of two (padded to 6 positions there)
        torch.testing.assert_close(mine[(0, r)]["div_DT"][:m], rec["div_DT"][:m], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(
            torch.tensor(alone["distill/div_sum"]), rec["div_DT"][:n].sum(), atol=1e-5, rtol=1e-5
        )
        assert alone["distill/clipped_sum"] == rec["clipped_DT"][:n].sum().item()
    total = sum(captured[(0, r)]["div_DT"][: s.distill_len].sum() for r, s in enumerate(samples))
    torch.testing.assert_close(torch.tensor(both["distill/div_sum"]), total, atol=1e-5, rtol=1e-5)
    # the clip acted at some positions but not all (a random tiny model's divergences are small: small clips)
    rec = torch.cat([captured[(0, r)]["clipped_DT"] for r in range(2)])
    assert 0 < rec.sum() and any((c["div_DT"] != c["div_raw_DT"]).any() for c in captured.values())
    p = captured[(0, 0)]["p_student_DT"][:4]
    top = captured[(0, 0)]["teacher_topp_DTK"]
    assert ((p > 0) & (p <= 1)).all() and (top[:, 0] >= top[:, 1]).all()


def test_two_step_ssopd_run_records_and_renders(tmp_path):
    from hydra import compose, initialize_config_dir

    from sposd.config import register_configs, register_resolvers, to_object
    from sposd.inspect.app import inspect_run
    from sposd.inspect.records import load_step, recorded_steps
    from sposd.train import train

    register_resolvers()
    register_configs()
    overrides = [
        "algo=ssopd", "hardware=cpu", "num_steps=2", "prompts_per_step=8", "algo.group_size=8",
        "heldout_eval=false", "save_final=false", "logger=jsonl", "train.inspect.every=1", "train.inspect.rows=3",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_object(compose("train", overrides=overrides))
    run = tmp_path / "run"
    train(cfg, run)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recorded_steps(run) == [1, 2]
    assert all(m["time/inspect_s"] > 0 for m in metrics)
    rows = [r for s in (1, 2) for r in load_step(run, s)]
    targets = [min(3, int(m["distill/targets"])) for m in metrics]
    assert [len(load_step(run, s)) for s in (1, 2)] == targets and rows, "no row had a teacher in 2 steps"
    for r in rows:
        n = len(r["tokens"])
        assert not r["correct"] and n > 0  # SSOPD distils the longest wrong completion
        assert all(len(r[k]) == n for k in ("div", "div_raw", "clipped", "weight", "p_student", "teacher_top"))
        assert len(r["teacher_top"][0]) == 3 and r["loss"]["divergence"] == "fkl"
        a, b = r["privileged"]
        assert 0 < a < b <= len(r["teacher_context"])  # the witness (a correct sibling) inside the teacher context
        assert r["prompt"] in r["teacher_context"] or r["problem"] in r["teacher_context"]
    page, _ = inspect_run(run, with_png=False)
    assert page.read_text().count("<section class='row") == targets[-1]
