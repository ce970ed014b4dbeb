"""Run a piece of Python on two gloo ranks (two processes, torchrun's environment), collect one JSON per rank.

The code runs with `RESULT` (a dict it fills) and `rank`, `world` in scope; `RESULT` is written when it ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sposd.dist import free_port

_PREAMBLE = """
import json, os, sys, warnings
warnings.filterwarnings("ignore", category=FutureWarning)  # torch.distributed's per-call deprecation notices
import torch
torch.set_num_threads(1)
from sposd import dist as sdist
rank, world = sdist.init_distributed("cpu")
RESULT = {}
"""
_EPILOGUE = """
Path = __import__("pathlib").Path
Path(os.environ["RANK_RESULT"]).write_text(json.dumps(RESULT))
print("rank code: finished, result written", flush=True)
sdist.shutdown()
print("rank code: left the process group", flush=True)
sys.stderr.flush()
# Skip interpreter finalization: the DeepSpeed engines the code built stay referenced by their hooks until then, and
# freeing ZeRO-3 state during finalization is C++ static-destruction territory, not what these tests check.
os._exit(0)
"""


def run_ranks(code: str, tmp_path: Path, *, world: int = 2, timeout: float = 600) -> list[dict]:
    """Run `code` on `world` ranks; returns each rank's RESULT (rank order). Fails with the ranks' stderr."""
    script = tmp_path / "rank_code.py"
    script.write_text(_PREAMBLE + textwrap.dedent(code) + _EPILOGUE)
    port = str(free_port())
    procs, logs = [], []
    for r in range(world):
        env = {
            **os.environ,
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
            "RANK_RESULT": str(tmp_path / f"rank{r}.json"),
        }
        log = open(tmp_path / f"rank{r}.log", "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except BaseException:  # a hang (mismatched collectives) or pytest's own timeout: leave no rank behind
        for p in procs:
            p.kill()
        raise
    finally:
        for log in logs:
            log.close()
    for r, p in enumerate(procs):
        # the log says how far the rank got: its last lines are the error, or the epilogue's two markers
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n" + (tmp_path / f"rank{r}.log").read_text()[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
