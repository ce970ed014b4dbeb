"""Rendezvous from SLURM's environment: srun tasks become torch.distributed ranks."""

from __future__ import annotations

import pytest

from sposd.dist import first_host, slurm_rendezvous


@pytest.mark.parametrize(
    "nodelist,host",
    [
        ("gpu07", "gpu07"),
        ("gpu[03-05,9]", "gpu03"),
        ("gpu[12,3]", "gpu12"),
        ("a-node[001-016]", "a-node001"),
        ("cpu1,gpu[2-3]", "cpu1"),
    ],
)
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_first_host_rejects_garbage():
    with pytest.raises(ValueError, match="cannot parse"):
        first_host("[1-2]")


SLURM = {
    "SLURM_PROCID": "9",
    "SLURM_NTASKS": "16",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[10-11]",
    "SLURM_JOB_ID": "123456",
}


def test_rendezvous_from_slurm_tasks():
    assert slurm_rendezvous(SLURM) == {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu10",
        "MASTER_PORT": str(20000 + 123456 % 20000),  # every task derives the same port from the job id
    }


def test_no_rendezvous_for_one_task_or_under_torchrun():
    assert slurm_rendezvous({**SLURM, "SLURM_NTASKS": "1"}) is None  # sbatch + one task: the CLI relaunches
    assert slurm_rendezvous({**SLURM, "RANK": "0"}) is None  # torchrun inside the allocation: its variables win
    assert slurm_rendezvous({}) is None


def test_explicit_master_wins():
    env = {**SLURM, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    r = slurm_rendezvous(env)
    assert (r["MASTER_ADDR"], r["MASTER_PORT"]) == ("10.0.0.1", "29500")
