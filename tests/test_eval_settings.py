"""results.json's settings describe what ran (the benchmark's own prompt, the capped token budget), and an
evaluation's folder is named after the model evaluated."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from sposd.config import EvalCfg, model_tag, register_configs, register_resolvers
from sposd.evals.benchmarks import Benchmark
from sposd.evaluate import eval_settings
from sposd.types import Prompt

CONF = Path(__file__).resolve().parents[1] / "conf"


def _bench(name: str, prompt: str, thinking: bool, lengths: list[int]) -> Benchmark:
    prompts = [Prompt(id=str(i), problem="p", prompt_ids=[1] * n, answer="1") for i, n in enumerate(lengths)]
    return Benchmark(name=name, records=[], source={}, prompt=prompt, enable_thinking=thinking, prompts=prompts)


def test_toy_settings_are_the_toy_benchmarks_own():
    # opsd_repo asks for thinking and 38,912 new tokens; the toy benchmark ran its own prompt, thinking off, and a
    # 100-token context left 100 - 20 (its shortest prompt) = 80 new tokens at most
    toy = _bench("toy", "Problem: {problem}", False, [20, 30])
    s = eval_settings(EvalCfg(name="opsd_repo"), model_path="m", model_cfg_path="builtin", dtype="float32",
                      max_model_len=100, seed=0, inputs={}, benches=[toy])  # fmt: skip
    assert (s["prompt"]["template"], s["prompt"]["enable_thinking"]) == ("Problem: {problem}", False)
    assert (s["sampling"]["max_new_tokens"], s["sampling"]["max_new_tokens_setting"]) == (80, 38912)


def test_mixed_benchmarks_list_their_prompts():
    ev = EvalCfg(name="opsd_repo", max_new_tokens=10)
    benches = [_bench("toy", "T {problem}", False, [5]), _bench("aime24", ev.prompt, True, [8])]
    s = eval_settings(ev, model_path="m", model_cfg_path="m", dtype="bfloat16", max_model_len=1000, seed=0,
                      inputs={}, benches=benches)  # fmt: skip
    assert s["prompt"]["enable_thinking"] == {"toy": False, "aime24": True}
    assert s["sampling"]["max_new_tokens"] == 10 and "max_new_tokens_setting" not in s["sampling"]


def test_model_tag():
    assert model_tag("tiny", "builtin") == "tiny"
    assert model_tag("qwen3-8b", "Qwen/Qwen3-8B") == "Qwen3-8B"
    assert model_tag("tiny", "runs/2026-12-02/10-00-00_ssopd_tiny/final") == "10-00-00_ssopd_tiny-final"
    assert model_tag("tiny", "/ckpt/step_40/") == "ckpt-step_40"
    assert model_tag("tiny", "my model (v2)") == "my_model__v2_"


def test_eval_folder_is_named_by_the_model():
    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=["model.path=runs/x/10-00-00_ssopd_tiny/final"], return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith("_10-00-00_ssopd_tiny-final_opsd_repo")
