"""Learner engine helpers.

A learner built after the default process group was torn down and re-created in the same process:

vLLM's in-process engine destroys the default group when it shuts down; DeepSpeed keeps its cloned world
group in a module global. Without `forget_stale_deepspeed_groups`, the next learner's ZeRO-3 optimizer asks
torch for its rank in that dead group and fails with "Group ... is not registered" (the CI failure of the
teacher-pass tests, which run after the in-process vLLM tests).
"""

from __future__ import annotations

import pytest


@pytest.mark.integration  # DeepSpeed's comm backend
def test_stale_world_group_is_dropped_after_the_world_is_recreated():
    import deepspeed
    import torch.distributed as tdist
    from deepspeed.utils import groups

    from sposd import dist as sdist
    from sposd.learner.deepspeed import forget_stale_deepspeed_groups, use_cached_torch_extensions

    use_cached_torch_extensions()  # the learner's op cache: deepspeed.init_distributed builds a comm op once
    sdist.init_distributed("cpu")
    deepspeed.init_distributed(dist_backend="gloo")  # wraps the live default group, as deepspeed.initialize does
    stale = groups._clone_world_group()
    tdist.destroy_process_group()
    sdist.init_distributed("cpu")
    with pytest.raises(ValueError, match="not registered"):
        tdist.get_rank(group=stale)  # what DeepSpeed would have been handed

    forget_stale_deepspeed_groups()

    assert groups._WORLD_GROUP is None
    assert tdist.get_rank(group=groups._clone_world_group()) == 0  # a fresh clone of the live world


def test_peak_memory_counts_what_a_block_allocates_and_frees():
    # In a fresh process: in a long one (the suite), the allocator may serve the block from memory that is
    # already resident, which RSS-based peaks rightly do not count as new.
    import subprocess
    import sys

    code = """
import torch
from sposd.learner.memory import PeakMemory
with PeakMemory("cpu") as mem:
    x = torch.ones(16, 2**20)  # 16 x 2^20 x 4 B = 64 MiB, every page touched
    del x
print(mem.peak_gb)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    peak = r.stdout.split()[-1]
    if peak == "None":
        pytest.skip("no /proc/self/clear_refs on this platform")
    assert 60 / 1024 < float(peak) < 1.0, peak
