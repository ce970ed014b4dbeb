"""`sposd report` on crafted run directories: grouping by config minus seed, final/best, mean ± std, files."""

from __future__ import annotations

import json

import pytest
import yaml

from sposd.report import main, report


def _run(d, *, algo, seed, lr, rewards, losses, heldout=None, summary=None):
    d.mkdir(parents=True)
    cfg = {"seed": seed, "run_dir": str(d), "algo": {"name": algo, "group_size": 8}, "optim": {"lr": lr}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for i, (r, loss) in enumerate(zip(rewards, losses, strict=True), start=1):
        row = {"step": i, "reward/mean": r, "loss/total": loss}
        if heldout and i in heldout:
            row["eval/heldout_accuracy"] = heldout[i]
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')  # torn line
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "multirun"
    _run(root / "0_algo=grpo,seed=0", algo="grpo", seed=0, lr=1e-4, rewards=[0.1, 0.3, 0.2], losses=[1.0, 0.5, 0.7])
    _run(root / "1_algo=grpo,seed=1", algo="grpo", seed=1, lr=1e-4, rewards=[0.2, 0.5, 0.4], losses=[0.9, 0.4, 0.6])
    _run(
        root / "2_algo=ssopd,seed=0",
        algo="ssopd",
        seed=0,
        lr=1e-4,
        rewards=[0.3, 0.4, 0.6],
        losses=[0.8, 0.2, 0.3],
        heldout={3: 0.5},
        summary={"base_accuracy": 0.30, "trained_accuracy": 0.36},
    )
    _run(
        root / "3_algo=ssopd,seed=1",
        algo="ssopd",
        seed=1,
        lr=1e-4,
        rewards=[0.3, 0.2, 0.2],
        losses=[0.6, 0.3, 0.1],
        heldout={3: 0.3},
        summary={"base_accuracy": 0.34, "trained_accuracy": 0.40},
    )
    return root


def test_points_final_best_mean_std(sweep):
    s = report(sweep)["summary"]
    assert list(s["points"]) == ["algo.name=grpo", "algo.name=ssopd"]  # lr is equal everywhere: not in the label
    grpo = s["points"]["algo.name=grpo"]
    assert sorted(grpo["seeds"]) == [0, 1] and grpo["steps"] == [3, 3]  # the torn 4th line is ignored
    r = grpo["metrics"]["reward/mean"]
    # final: 0.2 and 0.4 -> mean 0.3, sample std sqrt(((-.1)^2 + .1^2) / 1) = 0.1414
    assert r["final_mean"] == pytest.approx(0.3) and r["final_std"] == pytest.approx(0.1414, abs=1e-4)
    # best (max): 0.3 and 0.5 -> 0.4
    assert r["best_mean"] == pytest.approx(0.4)
    loss = grpo["metrics"]["loss/total"]
    assert loss["better"] == "min" and loss["best_mean"] == pytest.approx(0.45)  # min 0.5 and 0.4
    h = s["points"]["algo.name=ssopd"]["metrics"]["eval/heldout_accuracy"]
    assert h["final_mean"] == pytest.approx(0.4) and h["n"] == 2  # (0.5 + 0.3) / 2
    assert "eval/heldout_accuracy" not in grpo["metrics"]  # never logged for grpo
    # summary.json's held-out accuracy: base (0.30 + 0.34) / 2 = 0.32, trained (0.36 + 0.40) / 2 = 0.38,
    # sample std sqrt(2 * 0.02^2 / 1) = 0.0283
    t = s["points"]["algo.name=ssopd"]["metrics"]["heldout/trained_accuracy"]
    assert t["final_mean"] == pytest.approx(0.38) and t["final_std"] == pytest.approx(0.0283, abs=1e-4)
    assert s["points"]["algo.name=ssopd"]["metrics"]["heldout/base_accuracy"]["final_mean"] == pytest.approx(0.32)
    assert "heldout/trained_accuracy" not in grpo["metrics"]  # its runs wrote no summary.json
    assert s["metrics"][:2] == ["heldout/base_accuracy", "heldout/trained_accuracy"]


def test_files_and_table(sweep, capsys):
    main([str(sweep)])
    out = capsys.readouterr().out
    assert "| algo.name=ssopd | 2 | 3 |" in out and "0.3 ± 0.14" in out
    assert (sweep / "report.md").read_text().startswith("| sweep point |")
    assert json.loads((sweep / "report.json").read_text())["metrics"][2] == "reward/mean"  # after heldout/*
    assert "| heldout/base_accuracy | heldout/trained_accuracy | reward/mean final |" in out
    assert "| 0.32 ± 0.028 | 0.38 ± 0.028 |" in out  # the ssopd row; grpo's runs have no summary.json: "–"
    for name in ("report_reward_mean.png", "report_loss_total.png", "report_eval_heldout_accuracy.png"):
        assert (sweep / name).stat().st_size > 1000


def test_label_lists_every_varying_key_but_the_seed(tmp_path):
    _run(tmp_path / "a", algo="grpo", seed=0, lr=1e-4, rewards=[0.1], losses=[1.0])
    _run(tmp_path / "b", algo="grpo", seed=1, lr=3e-4, rewards=[0.1], losses=[1.0])
    assert list(report(tmp_path)["summary"]["points"]) == ["optim.lr=0.0001", "optim.lr=0.0003"]


def test_empty_dir_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    assert "holds no run directory" in capsys.readouterr().err


def test_label_comes_from_the_sweep_overrides_when_hydra_wrote_them(sweep):
    import yaml as y

    for d in sorted(sweep.iterdir()):
        algo, seed = d.name.split("_", 1)[1].split(",")
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(y.safe_dump([algo, seed, "num_steps=3", "hydra.x=1"]))
    assert list(report(sweep)["summary"]["points"]) == ["algo=grpo", "algo=ssopd"]


def test_checkpoint_views_final_best_per_benchmark_best_macro():
    from sposd.evals.results import checkpoint_views

    rows = [
        {"step": 25, "eval/a/avg@k": 0.50, "eval/b/avg@k": 0.20, "eval/macro/avg@k": 0.35},
        {"step": 50, "eval/a/avg@k": 0.40, "eval/b/avg@k": 0.40, "eval/macro/avg@k": 0.40},
        {"step": 75, "eval/a/avg@k": 0.45, "eval/b/avg@k": 0.25, "eval/macro/avg@k": 0.35},
        {"step": 76, "reward/mean": 1.0},
    ]
    v = checkpoint_views(rows)
    assert v["final"]["step"] == 75 and v["final"]["macro"] == pytest.approx(0.35)
    # per benchmark: a best at step 25 (0.50), b at step 50 (0.40): (0.50 + 0.40) / 2 = 0.45 > any one checkpoint
    assert v["best_per_benchmark"]["a"] == {"avg@k": 0.50, "step": 25}
    assert v["best_per_benchmark"]["macro"] == pytest.approx(0.45)
    assert v["best_macro"]["step"] == 50 and v["best_macro"]["macro"] == pytest.approx(0.40)
    assert checkpoint_views([{"step": 1, "reward/mean": 0.0}]) is None


def test_checkpoint_views_console_lines_are_labelled():
    from sposd.evals.results import checkpoint_views, format_checkpoint_views

    rows = [
        {"step": 25, "eval/a/avg@k": 0.5, "eval/b/avg@k": 0.2},
        {"step": 50, "eval/a/avg@k": 0.4, "eval/b/avg@k": 0.4},
    ]
    text = format_checkpoint_views(checkpoint_views(rows))
    assert "final (last step)" in text and "best per benchmark (papers' convention)" in text
    assert "best macro (one checkpoint)" in text and "a @ 25, b @ 50" in text and "macro 0.450" in text
