"""Training defaults per model, published recipes per algorithm (conf/model/defaults, algo/recipe, model/fixed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sposd.algos.config import AlgoCfg, recipe_warnings
from sposd.config import TrainCfg, register_configs, register_resolvers, to_object
from sposd.data.templates import OPEN_THINK, build_teacher_message

CONF = Path(__file__).resolve().parents[2] / "conf"
register_resolvers()
register_configs()


def _compose(*overrides: str) -> TrainCfg:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=list(overrides)))


def test_embedded_default_keeps_the_toy_budget():
    cfg = _compose()
    assert (cfg.num_steps, cfg.prompts_per_step, cfg.optim.lr, cfg.optim.warmup_steps) == (150, 16, 1e-4, 2)
    assert (cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k, cfg.optim.grad_clip) == (1.0, 1.0, -1, 1.0)
    assert (cfg.model.max_prompt_len, cfg.model.max_new_tokens) == (384, 48)


def test_demo_is_the_studys_grpo_run_at_300_steps():
    # `make demo` = `sposd train experiment=demo`; its numbers in the README are the study's v2_long GRPO runs
    # (scripts/study.py: algo=grpo num_steps=300 on the embedded default), so the two must compose to one config
    demo = _compose("experiment=demo")
    assert (demo.algo.name, demo.num_steps, demo.model.name) == ("grpo", 300, "tiny")
    study = _compose("algo=grpo", "num_steps=300")
    assert demo == study
    assert _compose("experiment=demo", "seed=1") == _compose("algo=grpo", "num_steps=300", "seed=1")


@pytest.mark.parametrize("model", ["qwen3-1.7b", "qwen3-4b", "qwen3-8b"])
def test_real_models_do_not_train_at_the_toy_lr(model):
    cfg = _compose("algo=ssopd", f"model={model}")  # the design card's command (GPU_AUDIT F9)
    assert cfg.optim.lr <= 1e-5
    assert (cfg.num_steps, cfg.prompts_per_step, cfg.optim.warmup_steps) == (500, 32, 10)
    assert recipe_warnings(cfg.algo, model_path=cfg.model.path, lr=cfg.optim.lr) == []


def test_opsd_recipe_on_a_real_model():
    cfg = _compose("algo=opsd", "model=qwen3-1.7b")
    assert (cfg.optim.lr, cfg.optim.grad_clip, cfg.optim.warmup_steps, cfg.prompts_per_step) == (5e-6, 0.1, 0, 32)
    assert (cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k) == (1.1, 0.95, 20)
    assert cfg.model.max_new_tokens == 1024 and cfg.train.checkpoint.every == 25
    a, d = cfg.algo, cfg.algo.distill
    assert (a.group_size, a.rl_coef, a.student_thinking) == (1, 0.0, False)
    lora = cfg.model.lora  # OPSD's adapter on a real model; its fixed teacher is the base with the adapter off
    assert (lora.rank, lora.alpha, lora.dropout) == (64, 128, 0.0)
    assert lora.targets == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (d.divergence, d.support, d.clip_max, d.clip_mode, d.teacher) == ("fkl", "full", 0.05, "element", "initial")
    assert (d.wrapper, d.teacher_thinking, d.think_boundary) == ("opsd_v3", True, "open_think")
    assert d.loss_temperature is None  # = the rollout temperature 1.1


def test_recipe_knobs_do_not_reach_the_toy_budget():
    cfg = _compose("algo=opsd")
    assert (cfg.optim.lr, cfg.num_steps, cfg.prompts_per_step, cfg.model.max_new_tokens) == (1e-4, 150, 16, 48)
    assert cfg.rollout.temperature == 1.1  # sampling and the clip are the recipe's
    assert cfg.model.lora.rank == 0  # the toy trains in full; a recipe's adapter is for real models
    assert _compose("algo=opsd", "model.lora.rank=8").model.lora.rank == 8
    # the command line still wins over every layer
    assert _compose("algo=opsd", "model=qwen3-8b", "optim.lr=2e-6").optim.lr == 2e-6


def test_every_algorithm_composes_on_a_real_model():
    for path in sorted((CONF / "algo").glob("*.yaml")):
        cfg = _compose(f"algo={path.stem}", "model=qwen3-8b")
        assert cfg.algo.name == path.stem and cfg.optim.lr <= 1e-5


def test_warnings_for_a_real_model_above_1e_5_trained_in_full():
    algo = AlgoCfg(name="opsd")
    lines = recipe_warnings(algo, model_path="Qwen/Qwen3-8B", lr=1e-4)
    assert len(lines) == 1
    assert "optim.lr=0.0001 is above 1e-05" in lines[0] and "Qwen/Qwen3-8B" in lines[0]
    assert recipe_warnings(algo, model_path="Qwen/Qwen3-8B", lr=1e-4, lora_rank=64) == []  # adapters train faster
    assert recipe_warnings(AlgoCfg(), model_path="builtin", lr=1e-4) == []  # the toy trains at 1e-4 on purpose


def test_opsd_v3_teacher_message_and_think_boundary():
    msg = build_teacher_message("P?", "S.", wrapper="opsd_v3", instruction="I.")
    assert msg.startswith("Problem: P?\n\nHere is a reference solution to this problem:\n")
    assert "=== Reference Solution Begin ===\nS.\n=== Reference Solution End ===\n\n\nAfter reading" in msg
    assert "\u2014 do not copy or paraphrase it. Now, using your own words and independent reasoning" in msg
    assert msg.endswith("reconsider if something doesn't work out:\n\nI.")
    assert OPEN_THINK == "<think>\n"


def test_bad_keys_fail_in_one_line():
    with pytest.raises(ValueError, match="algo.distill.clip_mode='vocab' is not valid"):
        _compose("algo=opsd", "algo.distill.clip_mode=vocab")
    with pytest.raises(ValueError, match=r"algo.distill.select='longest_wrongg' is not valid; choose from \[.*tip"):
        _compose("algo=uopsd", "algo.distill.select=longest_wrongg")
    with pytest.raises(Exception, match="Could not override 'algo.distill.tip_ratio'"):  # a removed (nested) key
        _compose("algo=tip", "algo.distill.tip_ratio=0.3")
    assert _compose("algo=tip", "algo.distill.tip.ratio=0.3").algo.distill.tip.ratio == 0.3
    with pytest.raises(ValueError, match="clip_mode=element clamps"):
        _compose("algo=opsd_sgtopk", "algo.distill.clip_max=0.1", "algo.distill.clip_mode=element")
