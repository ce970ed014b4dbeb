"""Which vLLM executor an in-process engine gets."""

from __future__ import annotations

import pytest

from sposd.rollout.vllm_engine import executor_backend


def test_one_engine_per_rank_of_a_multi_rank_world_uses_the_external_launcher():
    # uni would read the device index from torch.device("cuda") (none) and put every rank on cuda:0
    assert executor_backend(tensor_parallel_size=1, world_size=8) == "external_launcher"
    assert executor_backend(tensor_parallel_size=1, world_size=2) == "external_launcher"


def test_a_lone_process_runs_in_process_or_with_worker_processes_for_tp():
    assert executor_backend(tensor_parallel_size=1, world_size=1) == "uni"
    assert executor_backend(tensor_parallel_size=2, world_size=1) == "mp"  # sposd eval hardware.vllm_tp=2


def test_tp_inside_a_multi_rank_world_is_refused_in_one_line():
    with pytest.raises(ValueError, match="hardware.vllm_tp=1") as e:
        executor_backend(tensor_parallel_size=2, world_size=8)
    assert "\n" not in str(e.value)


def test_train_refuses_vllm_tp_at_config_time_and_eval_accepts_it():
    from hydra import compose, initialize_config_dir

    from sposd.config import register_configs, register_resolvers, to_object
    from tests.rollout.conftest import CONF

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(ValueError, match="hardware.vllm_tp=2: sposd train runs one TP=1") as e:
            to_object(compose("train", overrides=["hardware=gpu8", "hardware.vllm_tp=2"]))
        assert "\n" not in str(e.value)
        assert to_object(compose("eval", overrides=["hardware=gpu1", "hardware.vllm_tp=2"])).hardware.vllm_tp == 2
        with pytest.raises(ValueError, match="hardware.vllm_sleep_level"):
            to_object(compose("train", overrides=["hardware.vllm_sleep_level=3"]))
