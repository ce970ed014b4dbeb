"""`sposd plan`: per-rank memory arithmetic, checked by hand and against GPU_AUDIT F15's table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sposd.errors import UserError
from sposd.plan import GB, GIB, compose_train_cfg, model_shape, plan_memory, zero_states


def _plan(*overrides, gpu_gib=80):
    cfg = compose_train_cfg(list(overrides))
    return cfg, plan_memory(cfg, model_shape(cfg.model), device_bytes=gpu_gib * GIB)


def test_zero3_states_by_hand():
    # 1000 bf16 params over 4 ranks: params 2 B, grads 2 B, fp32 master 4 B, Adam 8 B -> 500, 500, 1000, 2000
    assert zero_states(1000, 2, world=4, stage=3, offload_optimizer=False, offload_params=False) == {
        "params": 500,
        "grads": 500,
        "master": 1000,
        "adam": 2000,
    }
    # offload_optimizer moves master + Adam to the host; fp32 training has no master copy
    z = zero_states(1000, 4, world=4, stage=3, offload_optimizer=True, offload_params=False)
    assert z == {"params": 1000, "grads": 1000, "master": 0, "adam": 0}
    # ZeRO-1 partitions only the optimizer: params and grads are whole on every rank
    z = zero_states(1000, 2, world=4, stage=1, offload_optimizer=False, offload_params=False)
    assert (z["params"], z["grads"], z["adam"]) == (2000, 2000, 2000)


@pytest.mark.parametrize("preset,billions", [("qwen3-1.7b", 1.72), ("qwen3-4b", 4.02), ("qwen3-8b", 8.19)])
def test_preset_shapes_give_the_published_parameter_counts(preset, billions):
    cfg = compose_train_cfg([f"model={preset}"])
    assert model_shape(cfg.model).num_params / 1e9 == pytest.approx(billions, abs=0.01)


def test_qwen3_8b_on_8x80gb_matches_gpu_audit_f15():
    # GPU_AUDIT F15, "H100 80 GB, util 0.4 (gpu8 as shipped)" column, per rank, decimal GB
    _, p = _plan("model=qwen3-8b", "hardware=gpu8", "algo=grpo", "prompts_per_step=64")
    within = lambda x, ref: abs(x - ref) <= 0.15 * ref  # noqa: E731
    assert within(sum(p.zero_states.values()) / GB, 16.4)  # 2.05 + 2.05 + 4.1 + 8.2
    assert within(p.buffers / GB, 4.0)  # "~3-5 GB"
    assert within(p.vllm["budget"] / GB, 34)
    assert within(p.vllm["weights"] / GB, 16.4)
    assert within(p.vllm["kv_cache"] / GB, 14)  # "KV ~13-15 GB"
    assert within(p.kv_tokens, 95_000)  # "~90-100k tokens/rank"
    assert within(p.rollout_phase / GB, 55)  # "rollout phase total ~55 GB"
    assert within(p.learner_peak["layer_inputs"] / GB, 4.8)  # "ckpt acts 4.8 GB" at 16k tokens
    assert p.seqs_configured == 64 and p.fits  # 64 prompts / 8 ranks x 8 samples


def test_plan_names_the_knob_when_it_does_not_fit():
    _, p = _plan("model=qwen3-8b", "hardware=gpu1", "algo=grpo")  # 131 GB of ZeRO states on one 80 GB GPU
    assert not p.fits and "hardware.offload_optimizer=true" in p.problems[0]
    # a KV cache smaller than one sequence: vLLM would refuse to start
    _, p = _plan("model=qwen3-8b", "hardware=gpu8", "hardware.vllm_gpu_memory_utilization=0.22")
    assert not p.fits and any("raise hardware.vllm_gpu_memory_utilization" in x for x in p.problems)


def test_a_local_config_json_wins_over_the_preset(tiny_model_dir):
    cfg = compose_train_cfg(["model=qwen3-8b", f"model.path={tiny_model_dir}"])
    shape = model_shape(cfg.model)
    assert shape.source.endswith("config.json") and shape.hidden_size < 4096


def test_train_refuses_a_plan_that_cannot_fit_unless_told(monkeypatch):
    import sposd.plan as plan

    monkeypatch.setattr(plan, "device_bytes_here", lambda device, nproc: 80 * GIB)
    cfg = compose_train_cfg(["model=qwen3-8b", "hardware=gpu1", "algo=grpo"])
    with pytest.raises(UserError, match="does not fit.*train.ignore_memory_plan=true"):
        plan.check_before_training(cfg)
    cfg = compose_train_cfg(["model=qwen3-8b", "hardware=gpu1", "algo=grpo", "train.ignore_memory_plan=true"])
    assert not plan.check_before_training(cfg).fits
    assert plan.check_before_training(compose_train_cfg([])) is None  # CPU: nothing to check


def test_cli_prints_the_table_and_json_last():
    r = subprocess.run(
        [sys.executable, "-m", "sposd", "plan", "model=qwen3-4b", "hardware=gpu8", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "verdict: fits" in r.stdout
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ranks"] == 8 and out["fits"] and out["kv_tokens"] > 0
    r = subprocess.run(
        [sys.executable, "-m", "sposd", "plan", "--gpu-gib", "-3"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["sposd: error: --gpu-gib must be > 0, got -3.0"]


@pytest.mark.parametrize(
    ("overrides", "copies"),
    [
        (["algo=grpo"], 0),  # no reference, no teacher
        (["algo=grpo", "algo.kl_coef=0.01"], 1),  # the KL reference
        (["algo=ace"], 1),  # ACE's confidence shift against the initial policy: a reference without a KL term
        (["algo=gopd"], 1),  # G-OPD: the reference, which its `initial` scoring teacher reuses (one copy, not two)
        (["algo=opsd", "model.lora.rank=0"], 1),  # the `initial` teacher, no reference (full fine-tuning)
        (["algo=ssopd"], 0),  # the `current` teacher is the policy
        (["algo=sdpo"], 1),  # the EMA teacher
    ],
)
def test_frozen_copies_are_the_ones_the_learner_builds(overrides, copies):
    # One 8B copy on 8 ranks at bf16 = 8.19e9 * 2 / 8 bytes per rank, once per copy the learner builds
    # (sposd/learner/learner.py: `algo.needs_ref` makes a reference; TeacherWeights reuses it for `initial`).
    _, p = _plan("model=qwen3-8b", "hardware=gpu8", *overrides)
    assert p.frozen_copies == pytest.approx(copies * p.num_params * 2 / 8)
