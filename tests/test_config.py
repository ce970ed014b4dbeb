"""Config composition: every experiment composes and validates; typos and bad values fail with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sposd.config import TrainCfg, register_configs, register_resolvers, to_object

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()
register_configs()


def _compose(*overrides: str) -> TrainCfg:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=list(overrides)))


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_composes(name):
    assert isinstance(_compose(f"experiment={name}"), TrainCfg)


@pytest.mark.parametrize("group", ["model", "algo", "data", "hardware", "logger", "eval"])
def test_every_option_composes(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        extra = ["data.path=/tmp/x.jsonl"] if (group, option) == ("data", "local") else []
        cfg = _compose(f"{group}={option}", *extra)
        assert getattr(cfg, group).name == option


def test_embedded_default_is_tiny_toy_on_cpu():
    cfg = _compose()
    assert (cfg.model.path, cfg.data.kind, cfg.algo.name) == ("builtin", "toy", "ssopd")
    assert cfg.hardware.device == ("cuda" if __import__("torch").cuda.is_available() else "cpu")


def test_real_model_implies_math_data_but_cli_data_wins():
    cfg = _compose("model=qwen3-8b", "hardware=gpu8")
    assert cfg.data.hf_id == "siyanzhao/Openthoughts_math_30k_opsd"
    assert (cfg.model.path, cfg.model.dtype, cfg.hardware.nproc) == ("Qwen/Qwen3-8B", "bfloat16", 8)
    assert _compose("model=qwen3-8b", "data=dapo_math").data.name == "dapo_math"


def test_algo_presets_differ_as_the_papers_say():
    dapo, dr = _compose("algo=dapo").algo, _compose("algo=dr_grpo").algo
    assert (dapo.clip_high, dapo.loss_agg, dapo.dynamic_sampling) == (0.28, "token-mean", True)
    assert (dr.adv_std_norm, dr.loss_agg) == (False, "seq-mean-token-sum-norm")


def test_distillation_presets_follow_the_spec():
    ss, op, pa = (_compose(f"algo={n}").algo for n in ("ssopd", "opsd", "paint"))
    # SSOPD: GRPO + lambda 1 frontier-weighted forward KL with OPSD-v3's element clip 0.05 from the shortest
    # correct into the longest wrong
    assert (ss.rl_coef, ss.group_size, ss.clip_high, ss.loss_agg) == (1.0, 8, 0.28, "token-mean")
    d = ss.distill
    assert (d.coef, d.context, d.select, d.teacher, d.prompt_weight, d.normalize) == (
        1.0,
        "shortest_correct",
        "longest_wrong",
        "current",
        "frontier",
        "prompt_mean",
    )
    assert (d.divergence, d.support, d.clip_max, d.clip_mode) == ("fkl", "full", 0.05, "element")
    # OPSD: pure distillation, one rollout, fixed initial teacher, reference solution, token mean
    assert (op.rl_coef, op.group_size, op.distill.context, op.distill.teacher) == (
        0.0,
        1,
        "reference_solution",
        "initial",
    )
    # PAINT: OPSD + partial solution + interpolation at 10% entropy-mismatch positions
    assert (pa.distill.context, pa.distill.interp_gamma, pa.distill.mismatch_q) == ("partial_solution", 0.1, 0.1)
    with pytest.raises(ValueError, match="algo.distill.divergence"):
        _compose("algo=ssopd", "algo.distill.divergence=kl")


FAMILY = ("sdpo", "srpo", "cepo", "atesd", "tip", "paced", "opsdc", "ace", "gopd", "sdzero", "opsd_sgtopk")


def test_every_family_method_has_a_yaml_that_composes():
    algos = {p.stem for p in (CONF / "algo").glob("*.yaml")}
    assert set(FAMILY) <= algos
    for name in FAMILY:
        assert _compose(f"algo={name}").algo.name == name


def test_family_presets_follow_the_spec():
    a = {n: _compose(f"algo={n}").algo for n in FAMILY}
    sd = a["sdpo"].distill  # section 3: replaces RL; first other successful sibling; top-100 + tail; IS 2; EMA .05
    assert a["sdpo"].rl_coef == 0 and a["sdpo"].group_size == 8
    assert (sd.context, sd.wrapper, sd.witness_thinking, sd.teacher, sd.ema_rate) == (
        "successful_sibling",
        "sdpo_exact",
        "strip",
        "ema",
        0.05,
    )
    assert (sd.divergence, sd.beta, sd.support, sd.topk, sd.is_clip) == ("jsd", 0.5, "student_topk_tail", 100, 2.0)
    sr = a["srpo"].distill  # section 4: routing + teacher-entropy weights
    assert a["srpo"].rl_coef == 1 and (sr.select, sr.rl_on_distilled, sr.token_weight) == (
        "failed_only",
        False,
        "teacher_entropy",
    )
    ce = a["cepo"].adv_mod  # section 6
    assert (ce.kind, ce.context, ce.teacher, ce.cepo_lambda, ce.cepo_warmup_steps, ce.cepo_eps) == (
        "cepo",
        "answer_contrast",
        "current",
        0.5,
        25,
        0.2,
    )
    assert (a["cepo"].clip_low, a["cepo"].clip_high, a["cepo"].distill.enabled) == (0.2, 0.28, False)
    at = a["atesd"].distill  # section 7
    assert (at.context, at.exposure.window, at.exposure.discount, at.teacher) == ("exposure_prefix", 10, 0.9, "initial")
    ti = a["tip"].distill  # section 8
    assert (ti.select, ti.tip.ratio, ti.divergence, ti.tip.h_quantile, ti.tip.j_quantile) == (
        "tip",
        0.5,
        "rkl",
        0.5,
        0.8,
    )
    pa = a["paced"].distill  # section 9
    assert (pa.prompt_weight, pa.prompt_weight_a, pa.prompt_weight_b, pa.prompt_weight_norm) == (
        "beta",
        1,
        1,
        "batch_mean",
    )
    assert (pa.divergence, pa.divergence_after, pa.divergence_switch_frac) == ("fkl", "rkl", 0.5)
    oc = a["opsdc"].distill  # section 10
    assert (oc.context, oc.teacher, oc.update_every, oc.divergence, oc.support, oc.select) == (
        "concise_instruction",
        "periodic",
        50,
        "rkl",
        "full",
        "all",
    )
    assert (a["ace"].adv_mod.kind, a["ace"].adv_mod.ace_reduce, a["ace"].rl_coef) == ("ace", "sum", 1.0)  # section 11
    go = a["gopd"]  # section 12: ExOPD lambda 1.25, n = 1, base = initial weights
    assert (go.group_size, go.adv_mod.kind, go.adv_mod.gopd_lambda, go.adv_mod.teacher) == (1, "gopd", 1.25, "initial")
    sz = a["sdzero"].distill  # section 5
    assert (sz.context, sz.teacher, sz.update_every) == ("reviser", "periodic", 50)
    sg = a["opsd_sgtopk"].distill  # section 13
    assert (sg.divergence, sg.support, sg.topk) == ("sg_topk_rkl", "student_topk", 20)


def test_invalid_value_names_the_key():
    with pytest.raises(ValueError, match="optim.schedule"):
        _compose("optim.schedule=exponential")
    with pytest.raises(ValueError, match="prompts_per_step"):
        _compose("hardware=cpu2", "prompts_per_step=3")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sposd", *args], capture_output=True, text=True, timeout=120)


def test_cli_typo_exits_nonzero_naming_the_key():
    r = _cli("train", "algo.clip_hgih=0.3")
    assert r.returncode != 0
    assert "clip_hgih" in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_value_is_one_line():
    r = _cli("train", "rollout.temperature=-1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["sposd: error: rollout.temperature must be > 0, got -1.0"]


def test_cli_unknown_group_option_lists_choices():
    r = _cli("train", "algo=grpoo")
    assert r.returncode != 0 and "grpoo" in r.stderr and "Traceback" not in r.stderr


def test_cli_help_and_cfg_job():
    assert "train" in _cli("--help").stdout
    assert "Config groups" in _cli("train", "--help").stdout
    r = _cli("train", "algo=grpo", "model=qwen3-8b", "hardware=gpu8", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    job = OmegaConf.create(r.stdout)
    assert job.model.path == "Qwen/Qwen3-8B" and job.hardware.nproc == 8


def test_cli_missing_model_path_is_one_line(tmp_path):
    r = _cli("train", f"model.path={tmp_path}/nope", f"hydra.run.dir={tmp_path}/run", "num_steps=1")
    assert r.returncode == 2
    assert "model.path" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


# ---- sposd eval ------------------------------------------------------------------------------------------
def _compose_eval(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("eval", overrides=list(overrides)))


def test_eval_presets_follow_the_spec():
    # spec/ALGORITHMS.md 0.7: opsd_repo T 1.0, top_p 0.95, top_k off, 38,912 new tokens, thinking, k 12 (the default);
    # qwen3_recommended T 0.6, top_p 0.95, top_k 20
    op, qw = _compose_eval().eval, _compose_eval("eval=qwen3_recommended").eval
    assert (op.name, op.temperature, op.top_p, op.top_k, op.max_new_tokens, op.enable_thinking, op.k) == (
        "opsd_repo", 1.0, 0.95, -1, 38912, True, 12)  # fmt: skip
    assert (qw.temperature, qw.top_p, qw.top_k, qw.max_new_tokens, qw.enable_thinking) == (0.6, 0.95, 20, 38912, True)
    assert _compose_eval("eval=qwen3_recommended", "eval.k=4", "eval.top_k=-1").eval.k == 4


def test_eval_defaults_pick_benchmarks_by_model():
    # the embedded default evaluates its own toy task; a Qwen3 preset the three contests; the command line wins
    assert list(_compose_eval().benchmarks) == ["toy"]
    assert list(_compose_eval("model=qwen3-8b").benchmarks) == ["aime24", "aime25", "hmmt25"]
    assert list(_compose_eval("model=qwen3-8b", "benchmarks=[math500]").benchmarks) == ["math500"]
    train = _compose("model=qwen3-8b", "hardware=gpu8")
    assert list(train.benchmarks) == ["aime24", "aime25", "hmmt25"] and train.train.eval.every == 0
    cfg = _compose("train.eval.every=5", "eval.k=4")
    assert (cfg.train.eval.every, cfg.eval.k) == (5, 4)  # when (train.eval) and how (the eval group)
    with pytest.raises(ValueError, match="train.eval.every=5 needs benchmarks"):
        _compose("train.eval.every=5", "benchmarks=[]")


def test_cli_usage_lists_eval_and_grade(capsys):
    from sposd.cli import main

    main(["--help"])
    out = capsys.readouterr().out
    assert "eval " in out and "grade " in out and "benchmarks=[aime24,aime25,hmmt25]" in out


def test_cli_unknown_benchmark_is_one_line_listing_the_valid_ones(capsys):
    from sposd.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "benchmarks=[aime24,aime26]"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sposd: error: unknown benchmark 'aime26' in 'benchmarks=[aime24,aime26]'; "
        "choose from ['aime24', 'aime25', 'hmmt25', 'local', 'math500', 'toy']"
    ]


def test_cli_eval_bad_values_are_one_line(tmp_path, tiny_model_dir):
    r = _cli("eval", "eval.k=0", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["sposd: error: eval.k must be >= 1, got 0"]
    missing = f"benchmarks.math500.path={tmp_path}/x.jsonl"
    r = _cli("eval", f"model.path={tiny_model_dir}", "benchmarks=[math500]", missing, f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"sposd: error: benchmarks.math500.path='{tmp_path}/x.jsonl' does not exist (or is not a file)"
    ]


def test_cli_eval_help():
    r = _cli("eval", "--help")
    assert r.returncode == 0 and "Config groups" in r.stdout and "benchmarks" in r.stdout and "sposd grade" in r.stdout
