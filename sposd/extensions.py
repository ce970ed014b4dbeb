"""DeepSpeed's JIT-built C++ ops: built once per installation, never at a run's start.

DeepSpeed compiles `deepspeed_shm_comm` (its shared-memory collectives on the CPU accelerator) with torch's
`cpp_extension.load` the first time a process initialises its communication backend (30-70 s, ~3 GB of compiler
processes). torch keeps the result in TORCH_EXTENSIONS_DIR and lets ninja decide whether to rebuild: ninja rebuilds
whenever `build.ninja` changed, and that file holds the absolute paths of the sources and includes, which live
inside the virtualenv. One cache shared by several virtualenvs (clones of a checkout, a second install) is therefore
rebuilt by every run whose virtualenv differs from the last builder's. Keying the cache on the installation (its
prefix, Python, torch and DeepSpeed versions) makes each build happen once, and `make install` does it up front
(`python -m sposd.extensions`). Runs of the same installation started together share torch's lock: one builds, the
others wait for it.

A build killed half-way leaves torch's `lock` file behind, and every later process would wait on it forever; a lock
older than any build takes is removed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

STALE_LOCK_S = 900.0  # builds take 30-70 s; a lock this old belongs to a process that died


def install_key() -> str:
    """A short name for this installation: Python, torch and DeepSpeed versions and the environment's prefix."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    digest = hashlib.sha1(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"{py}-torch{ver('torch')}-ds{ver('deepspeed')}-{digest}"


def extensions_dir(cache_root: str | os.PathLike = "~/.cache/sposd/torch_extensions") -> Path:
    """This installation's directory for torch's JIT-built extensions."""
    return Path(cache_root).expanduser() / install_key()


def clear_stale_locks(root: Path, *, max_age_s: float = STALE_LOCK_S, now: float | None = None) -> list[Path]:
    """Remove `<root>/<op>/lock` files older than max_age_s (a dead build's); returns those removed."""
    now = time.time() if now is None else now
    removed = []
    for lock in root.glob("*/lock"):
        try:
            if now - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:  # its build just finished
            pass
    return removed


def use_installation_cache() -> Path:
    """Point TORCH_EXTENSIONS_DIR at this installation's cache (unless the user set one) and clear dead locks."""
    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir())))
    clear_stale_locks(root)
    return root


def prebuild() -> Path:
    """Build (or find built) the ops a run loads at start-up: DeepSpeed's CPU shared-memory collectives."""
    root = use_installation_cache()
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    builder = ShareMemCommBuilder()
    if builder.is_compatible():
        builder.load(verbose=False)
    return root


if __name__ == "__main__":
    t0 = time.perf_counter()
    where = prebuild()
    print(f"DeepSpeed ops ready in {where} ({time.perf_counter() - t0:.1f} s)")
