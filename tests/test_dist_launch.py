"""Process-group arguments and the device index of a rank (pure logic; no GPU needed)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from sposd.dist import local_device_env, process_group_kwargs


def test_one_visible_gpu_per_task_maps_local_rank_to_device_0():
    # SLURM binding one GPU per task: SLURM_LOCALID 3 -> LOCAL_RANK 3, but the task only sees cuda:0
    assert local_device_env({"LOCAL_RANK": "3"}, visible_gpus=1) == {"LOCAL_RANK": "0"}
    assert local_device_env({"LOCAL_RANK": "0"}, visible_gpus=1) == {}


def test_all_gpus_visible_keeps_local_rank():
    assert local_device_env({"LOCAL_RANK": "5"}, visible_gpus=8) == {}
    assert local_device_env({}, visible_gpus=0) == {}  # CPU


def test_more_ranks_than_visible_gpus_is_one_clear_line():
    with pytest.raises(ValueError, match="LOCAL_RANK=4 but this task sees 2 GPUs") as e:
        local_device_env({"LOCAL_RANK": "4", "CUDA_VISIBLE_DEVICES": "0,1"}, visible_gpus=2)
    assert "\n" not in str(e.value)


def test_nccl_gets_a_generous_timeout_and_its_device():
    kw = process_group_kwargs("cuda", local_rank=3, timeout_min=180)
    assert kw == {"backend": "nccl", "timeout": timedelta(hours=3), "device_id": torch.device("cuda", 3)}


def test_gloo_gets_the_timeout_and_no_device():
    assert process_group_kwargs("cpu", local_rank=0, timeout_min=30) == {
        "backend": "gloo",
        "timeout": timedelta(minutes=30),
    }
    with pytest.raises(ValueError, match="dist_timeout_min must be > 0"):
        process_group_kwargs("cpu", local_rank=0, timeout_min=0)
