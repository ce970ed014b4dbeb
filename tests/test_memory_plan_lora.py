"""`sposd plan` with a LoRA adapter: only the adapter is trained, the reference / initial teacher costs no copy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sposd.errors import UserError
from sposd.plan import GIB, ModelShape, compose_train_cfg, learner_peak, model_shape, plan_memory, zero_states
from sposd.plan_lora import adapter_params, linear_shapes

# d 8, i 16, 2 layers, 2 heads x head_dim 4 (q 8), 1 kv head (kv 4)
SMALL = ModelShape(8, 16, 2, 2, 1, 4, 32, True)


def _plan(*overrides, gpu_gib=80):
    cfg = compose_train_cfg(list(overrides))
    return cfg, plan_memory(cfg, model_shape(cfg.model), device_bytes=gpu_gib * GIB)


def test_adapter_params_and_zero_states_by_hand():
    # (in, out): q 8->8, k 8->4, v 8->4, o 8->8, gate 8->16, up 8->16, down 16->8
    assert linear_shapes(SMALL) == {
        "q_proj": (8, 8),
        "k_proj": (8, 4),
        "v_proj": (8, 4),
        "o_proj": (8, 8),
        "gate_proj": (8, 16),
        "up_proj": (8, 16),
        "down_proj": (16, 8),
    }
    # in + out summed over the seven: 16 + 12 + 12 + 16 + 24 + 24 + 24 = 128; x rank 2 x 2 layers = 512
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert adapter_params(SMALL, rank=2, targets=every) == 512
    # q + v at rank 4: (16 + 12) x 4 x 2 layers = 224; a target named twice is adapted once
    assert adapter_params(SMALL, rank=4, targets=["q_proj", "v_proj", "q_proj"]) == 224
    # base: attn 8*8 + 2*8*4 + 8*8 + 2*4 = 200, mlp 3*8*16 = 384, norms 2*8 -> 600 a layer; x 2 + embed 32*8 + 8
    P = SMALL.num_params
    assert P == 1464
    # ZeRO-3 over 4 ranks, bf16: params (1464 + 512) x 2 / 4 = 988; only the 512 adapter params have grads
    # 512 x 2 / 4 = 256, an fp32 master 512 x 4 / 4 = 512 and Adam 512 x 8 / 4 = 1024
    z = zero_states(P + 512, 2, frozen=P, world=4, stage=3, offload_optimizer=False, offload_params=False)
    assert z == {"params": 988, "grads": 256, "master": 512, "adam": 1024}


def test_adapter_activations_by_hand():
    # rank 2 on 7 linears: 14 elements a token a layer; 10 tokens x 14 x 2 B = 280 in the one recomputed layer,
    # x 2 layers = 560 without checkpointing
    ckpt = learner_peak(SMALL, 2, tokens=10, checkpointing=True, teacher=False, adapter_width=14)
    full = learner_peak(SMALL, 2, tokens=10, checkpointing=False, teacher=False, adapter_width=14)
    assert (ckpt["adapter"], full["adapter"]) == (280, 560)
    assert "adapter" not in learner_peak(SMALL, 2, tokens=10, checkpointing=True, teacher=False)


def test_qwen3_8b_opsd_plans_the_adapter_not_the_model():
    cfg, lora = _plan("model=qwen3-8b", "algo=opsd", "hardware=gpu8")
    _, full = _plan("model=qwen3-8b", "algo=opsd", "hardware=gpu8", "model.lora.rank=0")
    assert cfg.model.lora.rank == 64 and cfg.algo.distill.teacher == "initial"  # the OPSD recipe
    # a layer: q 4096+4096, k and v 4096+1024 each, o 4096+4096, gate and up 4096+12288 each, down 12288+4096
    # = 75,776; x rank 64 x 36 layers = 174,587,904 (0.175 B of 8.19 B)
    assert lora.trainable_params == 174_587_904 and full.trainable_params == full.num_params
    assert lora.lora == {
        "rank": 64,
        "alpha": 128.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "adapter_params": 174_587_904,
    }
    optimizer = lambda p: p.zero_states["grads"] + p.zero_states["master"] + p.zero_states["adam"]  # noqa: E731
    # 174.6 M x 14 B / 8 = 0.31 GB against 8.19 B x 14 B / 8 = 14.3 GB
    assert optimizer(lora) == pytest.approx(174_587_904 * 14 / 8)
    assert optimizer(lora) < 0.03 * optimizer(full)
    # the base is still held (partitioned), plus the adapter
    assert lora.zero_states["params"] == pytest.approx((full.num_params + 174_587_904) * 2 / 8)
    # the initial teacher: a partitioned copy (8.19 B x 2 B / 8) for full fine-tuning, the adapter off with LoRA
    assert full.frozen_copies == pytest.approx(full.num_params * 2 / 8) and lora.frozen_copies == 0
    assert lora.learner_peak["adapter"] > 0 and lora.train_phase < full.train_phase


def test_kl_reference_costs_no_copy_under_lora():
    _, full = _plan("model=qwen3-8b", "algo=grpo", "algo.kl_coef=0.01", "hardware=gpu8")
    _, lora = _plan("model=qwen3-8b", "algo=grpo", "algo.kl_coef=0.01", "hardware=gpu8", "model.lora.rank=16")
    assert full.frozen_copies == pytest.approx(full.num_params * 2 / 8) and lora.frozen_copies == 0


def test_opsd_on_one_gpu_fits_with_the_recipes_adapter(monkeypatch):
    import sposd.plan as plan

    # full fine-tuning of 8 B on one 80 GiB GPU: 131 GB of ZeRO states, refused; the r64 adapter: ~19 GB, fits
    monkeypatch.setattr(plan, "device_bytes_here", lambda device, nproc: 80 * GIB)
    assert plan.check_before_training(compose_train_cfg(["model=qwen3-8b", "algo=opsd", "hardware=gpu1"])).fits
    with pytest.raises(UserError, match="does not fit"):
        plan.check_before_training(
            compose_train_cfg(["model=qwen3-8b", "algo=opsd", "hardware=gpu1", "model.lora.rank=0"])
        )


def test_an_unknown_target_is_one_line_naming_the_valid_ones():
    with pytest.raises(UserError) as e:
        _plan("model=qwen3-8b", "algo=opsd", "model.lora.targets=[q_proj,qkv_proj]")
    msg = str(e.value)
    assert "\n" not in msg and "['qkv_proj']" in msg and "choose from ['down_proj', 'gate_proj', 'k_proj'" in msg


def test_cli_json_shows_lora_and_an_unknown_target_exits_2():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sposd",
            "plan",
            "model=qwen3-8b",
            "algo=opsd",
            "hardware=gpu1",
            "--gpu-gib",
            "80",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "LoRA                rank 64 (alpha 128)" in r.stdout and "174.6 M trainable params" in r.stdout
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["fits"] and out["lora"]["rank"] == 64 and out["trainable_params"] == 174_587_904
    r = subprocess.run(
        [sys.executable, "-m", "sposd", "plan", "model=qwen3-8b", "algo=opsd", "model.lora.targets=[lm_head]"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("sposd: error: model.lora.targets ['lm_head'] name no linear layer")
