"""scripts/study.py: the paired t-intervals (hand-computed), resumability, and the tables of crafted runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_interval_hand_computed(study):
    # diffs 0.1, 0.2, 0.3: mean 0.2; sd = sqrt((0.01 + 0 + 0.01) / 2) = 0.1; t_{0.975, 2} = 4.303;
    # half width = 4.303 * 0.1 / sqrt(3) = 0.24843
    iv = study.paired_interval([0.1, 0.2, 0.3])
    assert iv["n"] == 3 and iv["mean"] == pytest.approx(0.2) and iv["sd"] == pytest.approx(0.1)
    assert iv["low"] == pytest.approx(0.2 - 0.24843, abs=1e-5) and iv["high"] == pytest.approx(0.44843, abs=1e-5)
    # five seeds, diffs -0.02, 0.00, 0.01, 0.03, 0.03: mean 0.01; deviations -0.03 -0.01 0 0.02 0.02, squares sum
    # 0.0009 + 0.0001 + 0 + 0.0004 + 0.0004 = 0.0018, sd = sqrt(0.0018 / 4) = 0.0212132; t_{0.975, 4} = 2.776;
    # half = 2.776 * 0.0212132 / sqrt(5) = 0.026336
    iv = study.paired_interval([-0.02, 0.0, 0.01, 0.03, 0.03])
    assert iv["mean"] == pytest.approx(0.01) and iv["sd"] == pytest.approx(0.0212132, abs=1e-6)
    assert iv["low"] == pytest.approx(0.01 - 0.026336, abs=1e-5) and iv["high"] == pytest.approx(0.036336, abs=1e-5)
    one = study.paired_interval([0.05])
    assert one["mean"] == 0.05 and one["low"] is None
    assert study.t_quantile(4) == 2.776 and study.t_quantile(27) == 2.060 and study.t_quantile(100) == 1.96
    with pytest.raises(ValueError, match="at least 2"):
        study.t_quantile(0)


def _craft_run(d: Path, acc: dict[int, float], *, finished: bool = True) -> None:
    d.mkdir(parents=True)
    rows = [{"step": s, "reward/accuracy": 0.3, "time/step_s": 1.0} for s in range(1, max(acc) + 1)]
    for r in rows:
        if r["step"] in acc:
            r["eval/heldout_accuracy"] = acc[r["step"]]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (d / "summary.json").write_text(json.dumps({"base_accuracy": acc[0]}))


GRID = {
    "question": "test",
    "cells": [{"arm": "grpo", "condition": "own"}, {"arm": "ssopd", "condition": "own"}],
    "seeds": [0, 1, 2],
    "budget": {"steps": 4, "rollouts": 16, "eval_every": 2},
    "baseline": "grpo",
}


def test_compare_pairs_by_seed_final_and_best(study, tmp_path):
    # grpo finals 0.40 0.42 0.44, ssopd finals 0.45 0.44 0.47 -> diffs 0.05, 0.02, 0.03 (mean 0.0333)
    # best: grpo 0.40 0.45 0.44, ssopd 0.50 0.44 0.47 -> diffs 0.10, -0.01, 0.03 (mean 0.04)
    grpo = [{0: 0.3, 2: 0.35, 4: 0.40}, {0: 0.3, 2: 0.45, 4: 0.42}, {0: 0.3, 2: 0.30, 4: 0.44}]
    ssopd = [{0: 0.3, 2: 0.50, 4: 0.45}, {0: 0.3, 2: 0.40, 4: 0.44}, {0: 0.3, 2: 0.35, 4: 0.47}]
    for arm, accs in (("grpo", grpo), ("ssopd", ssopd)):
        for seed, acc in enumerate(accs):
            _craft_run(study.run_dir(tmp_path, {"arm": arm, "condition": "own"}, seed), acc)
    rows = {r["arm"]: r for r in study.compare(study.collect(GRID, tmp_path), "grpo")}
    assert rows["ssopd"]["vs_baseline_final"]["mean"] == pytest.approx(0.10 / 3)
    assert rows["ssopd"]["vs_baseline_best"]["mean"] == pytest.approx(0.04)
    assert rows["grpo"]["gain_final"]["mean"] == pytest.approx(0.12)  # (0.10 + 0.12 + 0.14) / 3
    assert "vs_baseline_final" not in rows["grpo"]
    doc = study.report("t", GRID, tmp_path, tmp_path / "results")
    assert doc["finished"] == 6 and not doc["partial"]
    assert json.loads((tmp_path / "results" / "study_t.json").read_text())["grid"]["seeds"] == [0, 1, 2]
    assert "| own | ssopd | 3 |" in (tmp_path / "results" / "study_t.md").read_text()


def test_execute_skips_finished_and_redoes_partial_runs(study, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    runs = study.plan_runs(GRID, out)
    done, partial = runs[0][2], runs[1][2]
    _craft_run(done, {0: 0.3, 2: 0.31, 4: 0.32})
    _craft_run(partial, {0: 0.3, 2: 0.31}, finished=False)
    (partial / "stale.txt").write_text("from the killed run")
    done_bytes = (done / "summary.json").read_bytes()
    writer = (  # a scripted stand-in for `sposd train`: writes a finished run into its directory
        "import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True);"
        "(d / 'metrics.jsonl').write_text(json.dumps({'step': 4, 'reward/accuracy': 0.5, 'time/step_s': 1,"
        " 'eval/heldout_accuracy': 0.5}) + '\\n'); (d / 'summary.json').write_text(json.dumps({'base_accuracy': 0.3}))"
    )
    started = []

    def fake_command(cell, seed, d, budget, g, extra):
        started.append(d)
        return [sys.executable, "-c", writer, str(d)]

    monkeypatch.setattr(study, "train_command", fake_command)
    monkeypatch.setattr(study, "group_size", lambda arm: 8)
    study.execute(runs, GRID["budget"], jobs=2, extra=[], nice=0)
    assert done not in started and partial in started and len(started) == len(runs) - 1
    assert (done / "summary.json").read_bytes() == done_bytes
    assert not (partial / "stale.txt").exists() and (partial / "summary.json").exists()
    assert all(study.run_state(d) == "done" for _, _, d in runs)
    started.clear()
    study.execute(runs, GRID["budget"], jobs=2, extra=[], nice=0)  # everything finished: nothing runs
    assert started == []


def test_grid_is_the_preregistered_one(study):
    main = study.GRIDS["main"]
    cells = {(c["arm"], c["condition"]) for c in main["cells"]}
    for cond in ("own", "foreign", "none"):
        assert {(a, cond) for a in ("grpo", "ssopd", "uopsd", "sdpo")} <= cells
    for cond in ("own", "foreign"):
        assert {(a, cond) for a in ("opsd", "paint")} <= cells
    assert ("opsd", "none") not in cells and len(main["seeds"]) >= 5
    labels = {study.cell_label(c) for c in study.GRIDS["ablations"]["cells"]}
    assert {"lambda=0.1", "lambda=0.5", "num_wrong=all", "jsd", "teacher=ema", "ssopd", "grpo"} <= labels
    assert len(study.GRIDS["ablations"]["seeds"]) == 3


def test_train_command_splits_rollouts_by_group_size(study, tmp_path):
    cmd = study.train_command({"arm": "ssopd", "condition": "none"}, 3, tmp_path, {"steps": 5, "rollouts": 128,
                              "eval_every": 5}, 8, ["x=1"])
    assert "prompts_per_step=16" in cmd and "data.solution_style=none" in cmd and "seed=3" in cmd
    assert "hardware.num_threads=1" in cmd and cmd[-1] == "x=1"
    with pytest.raises(SystemExit, match="not a multiple"):
        study.train_command({"arm": "grpo", "condition": "own"}, 0, tmp_path, {"steps": 5, "rollouts": 100,
                            "eval_every": 5}, 8, [])


def test_primary_pair_runs_first_then_seed_major(study, tmp_path):
    grid = dict(GRID, cells=[*GRID["cells"], {"arm": "opsd", "condition": "own"}, {"arm": "grpo", "condition": "none"},
                             {"arm": "ssopd", "condition": "own", "label": "lambda=0.1"}], first=["grpo", "ssopd"])
    order = [(c["condition"], study.cell_label(c), s) for c, s, _ in study.plan_runs(grid, tmp_path)]
    assert order[:6] == [("own", "grpo", 0), ("own", "ssopd", 0), ("own", "grpo", 1), ("own", "ssopd", 1),
                         ("own", "grpo", 2), ("own", "ssopd", 2)]
    assert order[6:9] == [("none", "grpo", 0), ("none", "grpo", 1), ("none", "grpo", 2)]
    assert order[9:] == [("own", "opsd", 0), ("own", "lambda=0.1", 0), ("own", "opsd", 1), ("own", "lambda=0.1", 1),
                         ("own", "opsd", 2), ("own", "lambda=0.1", 2)]
    assert len(set(order)) == len(order) == 15


def test_arms_without_a_reference_run_once_and_report_under_every_condition(study, tmp_path, monkeypatch):
    # grpo and ssopd read no reference solution: data.solution_style cannot change their runs
    monkeypatch.setattr(study, "reads_reference", lambda arm, overrides=(): arm == "opsd")
    grid = dict(GRID, share_conditions=True, seeds=[0, 1],
                cells=[{"arm": a, "condition": c} for c in ("own", "none") for a in ("grpo", "ssopd")]
                + [{"arm": "opsd", "condition": c} for c in ("own", "foreign")])
    runs = study.plan_runs(grid, tmp_path)
    unique = study.unique_runs(runs)
    # 2 shared arms x 2 seeds once each, opsd 2 conditions x 2 seeds: 8 of the 12 (cell, seed) pairs
    assert len(runs) == 12 and len(unique) == 8
    assert {d.relative_to(tmp_path).parts[0] for _, _, d in unique} == {"any", "own", "foreign"}
    cmd = study.train_command(unique[0][0], 0, unique[0][2], grid["budget"], 8, [])
    assert "data.solution_style=own" in cmd
    for _cell, seed, d in unique:
        if not d.exists():
            _craft_run(d, {0: 0.3, 2: 0.3 + 0.01 * seed, 4: 0.4})
    res = study.collect(grid, tmp_path)
    assert set(res) == {"own", "none", "foreign"}
    assert res["own"]["grpo"] == res["none"]["grpo"] and set(res["none"]) == {"grpo", "ssopd"}
    assert set(res["foreign"]) == {"opsd"}
    doc = study.report("s", grid, tmp_path, tmp_path / "results")
    assert doc["finished"] == doc["planned"] == 8


def test_reads_reference_follows_the_algorithm(study):
    assert study.reads_reference("opsd") and study.reads_reference("paint")
    assert not any(study.reads_reference(a) for a in ("grpo", "ssopd", "uopsd", "sdpo"))


def test_v2_grid_pins_its_toy(study):
    for name in ("v2", "v2_ablations"):
        assert "model.builtin.slip_frac=0.3" in study.GRIDS[name]["overrides"] and study.GRIDS[name]["tree"] == "v2"
    for name in ("main", "ablations"):
        assert "model.builtin.slip_frac=0" in study.GRIDS[name]["overrides"]
    assert len(study.GRIDS["v2"]["seeds"]) >= 5 and len(study.GRIDS["v2_ablations"]["seeds"]) == 3
