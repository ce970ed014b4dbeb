"""Two steps of every self-distillation method (SSOPD, OPSD, PAINT and the rest of the family) on the real stack,
in ONE process.

Each method is a fresh `train()` run (its own DeepSpeed ZeRO-3 learner, teacher copies, verifier pool) on the
warm-started embedded model, but all runs share one in-process vLLM engine: each run first pushes its learner's
initial weights into it (`sync_engine_first`), so no run samples from another run's weights (checked by the
stale-weight alarm, vLLM vs learner log-probs). Sharing the engine saves ~20 s of vLLM start-up per method.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[2] / "conf"
COMMON = ["hardware=cpu", "num_steps=2", "heldout_eval=false", "save_final=false", "logger=jsonl"]
G1 = ["prompts_per_step=8"]  # single-rollout methods: 8 prompts x 1
G8 = ["prompts_per_step=2", "algo.group_size=8"]  # group methods: 2 prompts x 8
METHODS = {
    "ssopd": ["prompts_per_step=8", "algo.group_size=8"],  # 8 groups: some are mixed
    "opsd": G1,
    "paint": G1,
    "sdpo": G8,
    "srpo": G8,
    "cepo": G8,
    "ace": G8,
    "paced": G8,
    "atesd": [*G1, "algo.distill.exposure.window=1", "algo.distill.exposure.update_every=2"],
    "tip": G1,
    "opsdc": G1,
    "gopd": G1,
    "sdzero": G1,
    "opsd_sgtopk": G1,
    "uopsd": G8,
}


def _cfg(name: str):
    from hydra import compose, initialize_config_dir

    from sposd.config import register_configs, register_resolvers, to_object

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=[*COMMON, f"algo={name}", *METHODS[name]]))


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _check(name: str, rows: list[dict]) -> None:
    assert [r["step"] for r in rows] == [1, 2], name
    assert all(r["actor/rollout_logp_abs_diff"] < 1e-4 for r in rows), f"{name}: vLLM sampled from stale weights"
    assert all("response/len_reduction" in r for r in rows)
    distills = name not in ("cepo", "ace", "gopd")
    if name in ("ssopd", "opsd", "paint"):
        # finite, but not necessarily >= 0: OPSD-v3's element clip (these YAMLs' default) clamps each vocabulary
        # entry T (log T - log S) from above only, so the negative entries can outweigh the clipped positive ones
        assert all(math.isfinite(r["loss/distill"]) for r in rows), name
    if name == "ssopd":
        assert all(r["distill/targets"] == r["distill/groups"] for r in rows)  # one wrong completion per group
        assert "loss/pg" in rows[0]
    if name in ("opsd", "paint"):
        assert all(r["distill/targets"] == 8 for r in rows) and "loss/pg" not in rows[0]
    if name == "paint":
        assert all(0.25 <= r["distill/reveal_ratio"] <= 1 for r in rows)
        assert all(r["distill/interp_tokens"] > 0 for r in rows)
    if distills:
        assert sum(r["distill/targets"] for r in rows) > 0, f"{name}: no completion got a teacher"
        assert sum(r["distill/tokens"] for r in rows) > 0, name
        assert all(r["distill/skipped_too_long"] == 0 for r in rows), name
        assert rows[0]["time/teacher_fwd_s"] > 0, name
    else:
        assert "distill/targets" not in rows[0] and "loss/pg" in rows[0], name
    if name in ("tip", "opsdc", "sdzero", "atesd", "opsd_sgtopk"):
        assert all(r["distill/targets"] == 8 for r in rows), name  # every single rollout has a teacher
    if name == "srpo":
        assert "loss/pg" in rows[0]  # correct samples and failures without a sibling keep GRPO
    if name == "sdpo":
        assert "loss/pg" not in rows[0]
    if name == "tip":  # floor(0.5 N) of the batch's N positions carry the loss
        for r in rows:
            assert r["distill/tokens"] == max(1, int(0.5 * r["distill/positions"])), r
    if name == "paced":
        assert [r["distill/divergence_stage"] for r in rows] == [1.0, 2.0]  # fkl, then rkl at half of training
    if name == "cepo":
        assert [round(r["adv_mod/lambda"], 6) for r in rows] == [0.5, 0.48]  # 0.5 (1 - 1/25)
        assert all(r["score/fallback"] == 0 for r in rows)
    if name == "gopd":
        assert all(r["score/fallback"] == 0 for r in rows) and "adv_mod/teacher_gain_mean" in rows[0]
    if name == "ace":
        assert "adv_mod/shift_mean" in rows[0]
    if name == "atesd":
        assert all(0 <= r["exposure/rho"] <= 1 for r in rows)
        assert rows[0]["distill/reveal_ratio"] == pytest.approx(rows[0]["exposure/rho"])
        assert rows[1]["exposure/decisions"] == 1  # the first window's decision was scored and learned from


def test_every_method_runs_two_steps_in_one_process(tmp_path):
    from sposd import dist as sdist
    from sposd.models.paths import resolve_model_path
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.train import train

    sdist.init_distributed("cpu")  # as train() does first: vLLM then joins this world instead of making its own
    base = _cfg("sdpo")
    model_path = resolve_model_path(base.model, data=base.data, cache_dir=base.cache_dir)
    engine = VLLMEngine(
        model_path,
        dtype=base.model.dtype,
        max_model_len=base.model.max_prompt_len + base.model.max_new_tokens,
        seed=0,
        kv_cache_gb=base.hardware.vllm_kv_cache_gb,
    )
    walls = {}
    try:
        for name in METHODS:
            cfg = _cfg(name)
            assert (
                cfg.model.max_prompt_len + cfg.model.max_new_tokens == engine._llm.llm_engine.model_config.max_model_len
            )
            t0 = time.perf_counter()
            train(cfg, tmp_path / name, engine=engine, sync_engine_first=True, close_engine=False)
            walls[name] = round(time.perf_counter() - t0, 1)
            gc.collect()  # DeepSpeed engines hold reference cycles: free the finished run's learner now
            _check(name, _rows(tmp_path / name))
    finally:
        engine.close()
    print(f"\nseconds per method (2 steps, learner start-up included): {walls}")
