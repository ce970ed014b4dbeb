"""LoRA runs of OPSD and SSOPD on the real stack (warm-started embedded model, one rank, one shared vLLM engine).

For each: two steps with the stale-weight alarm quiet (vLLM samples the merged adapter), a checkpoint that holds
the adapter only, a run resumed from step 1 that computes step 2 exactly as the straight run did, an export of
the merged model that equals the run's final model, and an adapter export that `sposd eval` evaluates.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[2] / "conf"
COMMON = ["hardware=cpu", "num_steps=2", "heldout_eval=false", "logger=jsonl", "train.checkpoint.every=1",
          "train.checkpoint.keep=0", "model.lora.rank=8", "model.lora.alpha=16"]  # fmt: skip
METHODS = {"opsd": ["prompts_per_step=4"], "ssopd": ["prompts_per_step=4", "algo.group_size=4"]}
TIMING = ("time/", "sync/gb_per_s", "mem/")


def _cfg(name: str, *extra: str):
    from hydra import compose, initialize_config_dir

    from sposd.config import register_configs, register_resolvers, to_object

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=[*COMMON, f"algo={name}", *METHODS[name], *extra]))


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _computed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


def _logps(model_dir: Path, ids: list[int], n_prompt: int) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        return torch.log_softmax(model(x).logits[0, n_prompt - 1 : -1], -1).gather(-1, x[0, n_prompt:, None])[:, 0]


def _check_adapter_only(ckpt: Path, model_dir: Path) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="policy", exclude_frozen_parameters=True)
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    policy_bytes = sum(f.stat().st_size for f in (ckpt / "policy").rglob("*") if f.is_file())
    model_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    adapter_bytes = sum(t.numel() * 4 for t in state.values())
    # the adapter, Adam's two moments and the fp32 master: ~4 x the adapter, none of the base
    assert policy_bytes < 4 * adapter_bytes + model_bytes / 4, (policy_bytes, adapter_bytes, model_bytes)
    assert (ckpt / "model" / "adapter_config.json").is_file()


def test_lora_opsd_and_ssopd_sync_resume_export_and_evaluate(tmp_path):
    from sposd import dist as sdist
    from sposd.checkpoint import export_hf
    from sposd.models.paths import resolve_model_path
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.train import train

    sdist.init_distributed("cpu")
    base = _cfg("opsd")
    model_path = Path(resolve_model_path(base.model, data=base.data, cache_dir=base.cache_dir))
    engine = VLLMEngine(str(model_path), dtype=base.model.dtype, seed=0, kv_cache_gb=base.hardware.vllm_kv_cache_gb,
                        max_model_len=base.model.max_prompt_len + base.model.max_new_tokens)
    try:
        for name in METHODS:
            straight, resumed = tmp_path / name, tmp_path / f"{name}_resumed"
            train(_cfg(name), straight, engine=engine, sync_engine_first=True, close_engine=False)
            gc.collect()
            rows = _rows(straight)
            assert [r["step"] for r in rows] == [1, 2]
            assert all(r["actor/rollout_logp_abs_diff"] < 1e-4 for r in rows), f"{name}: vLLM sampled stale weights"
            assert sum(r["distill/targets"] for r in rows) > 0, name
            _check_adapter_only(straight / "checkpoints" / "step_2", model_path)

            step1 = straight / "checkpoints" / "step_1"
            train(_cfg(name, f"train.resume={step1}"), resumed, engine=engine, close_engine=False)
            gc.collect()
            again = _rows(resumed)
            assert [r["step"] for r in again] == [2], "the resumed run must start after step 1"
            assert json.loads((resumed / "summary.json").read_text())["resumed_from"] == str(step1)
            assert _computed(again[0]) == _computed(rows[1]), f"{name}: resume is not exact"

            merged = export_hf(straight / "checkpoints" / "step_2", tmp_path / f"{name}_merged")
            ids = [1, *range(5, 20)]
            torch.testing.assert_close(_logps(merged, ids, 4), _logps(straight / "final", ids, 4), atol=1e-5,
                                       rtol=0)
            assert (_logps(merged, ids, 4) - _logps(model_path, ids, 4)).abs().max() > 1e-4  # the adapter counts
    finally:
        engine.close()

    adapter = export_hf(tmp_path / "ssopd" / "checkpoints" / "step_2", tmp_path / "adapter", adapter=True)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    run = tmp_path / "eval"
    r = subprocess.run(
        [sys.executable, "-m", "sposd", "eval", f"model.path={adapter}", "hardware=cpu", "eval.k=1",
         "benchmarks.toy.limit=8", "eval.max_new_tokens=16", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    results = json.loads((run / "results.json").read_text())
    assert results["complete"] and results["benchmarks"]["toy"]["num_problems"] == 8
    torch.testing.assert_close(_logps(run / "merged_model", [1, *range(5, 20)], 4),
                               _logps(tmp_path / "ssopd" / "final", [1, *range(5, 20)], 4), atol=1e-5, rtol=0)
