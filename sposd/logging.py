"""Run-directory outputs and metric sinks: metrics.jsonl (always, rank 0), progress bar, optional wandb."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def redact_secrets(obj: Any) -> Any:
    """Replace any string equal to (or containing) the value of a secret-looking environment variable."""
    secrets = [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8]
    if not secrets:
        return obj

    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, str) and any(s in o for s in secrets):
            return "<redacted>"
        return o

    return walk(obj)


# Library loggers whose INFO / WARNING start-up lines crowd the console before the progress bar.
LIBRARY_LOGGERS = ("vllm", "DeepSpeed", "torch", "torch.distributed", "transformers", "datasets", "accelerate",
                   "huggingface_hub", "httpx", "urllib3", "filelock", "numexpr")  # fmt: skip


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _OwnInfoOnly(logging.Filter):
    """On the console handler: below WARNING, only sposd's own records (a compiler's `gcc ...` lines logged on the
    root logger by a library's build step are not)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(("sposd", "__main__"))


def quiet_libraries(device: str, *, verbose: bool = False) -> None:
    """Keep the console for sposd's own lines and the progress bar; `verbose=true` leaves the libraries alone
    (but for the per-step deprecation warnings of torch.distributed and vLLM, which are always off).

    Quiet: vLLM logs errors only (its level is read at import, so call this first), other libraries' loggers
    pass errors only (a filter on the logger object survives the library setting its level at import), the
    console shows no library INFO lines (the run's log file keeps them), warnings raised from library code are
    hidden, and transformers shows no loader bars. Errors always show. torch's C++ warnings are silenced by the
    CLI before torch is imported (TORCH_CPP_LOG_LEVEL, `cli.main`).
    """
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it found no GPU
    # per-step deprecation chatter of torch.distributed (DeepSpeed's collectives) and vLLM: off even when verbose
    for msg in (".*reduce_scatter_tensor.*", ".*all_gather_into_tensor.*", ".*reduce_op.*", ".*_get_vllm_tracer.*"):
        warnings.filterwarnings("ignore", message=msg)
    if verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.setLevel(logging.ERROR)  # children (vllm.triton_utils...) inherit it, even before vLLM configures its own
        if not any(isinstance(f, _ErrorsOnly) for f in lib.filters):
            lib.addFilter(_ErrorsOnly())  # and a library that sets its own level at import is still filtered
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
                handler.addFilter(_OwnInfoOnly())
    # warnings attributed to library code (not to sposd's own modules) are hidden
    warnings.filterwarnings("ignore", module=r"^(?!sposd\b)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file and rename (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class MetricsLogger:
    """Appends one JSON object per step to metrics.jsonl; mirrors to wandb when enabled. Rank 0 only.

    Resuming at step N (`resume_from=N`) first drops the rows of steps after N (logged before an interruption,
    then redone), so every step appears exactly once; the wandb run with the id saved in the run directory is
    continued rather than a new one started.

    Args:
        run_dir: the run directory.
        enabled: False on every rank but 0.
        wandb_cfg: the logger config (project, entity, group, tags, mode) or None for no wandb. A null group
            becomes the sweep directory's name inside a multirun, so a sweep's points are grouped together.
        config: the resolved run config, logged to wandb (secret-looking values redacted).
        resume_from: the step of the checkpoint this run resumes (None for a fresh run).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        wandb_cfg: dict | None = None,
        config: dict | None = None,
        resume_from: int | None = None,
    ):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        if resume_from is not None:
            self._drop_after(resume_from)
        elif self.path.exists():  # a fresh start in a used directory (train.resume=never): start the log over
            self.path.unlink()
        if wandb_cfg is not None:
            import wandb

            id_file = run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if resume_from is not None and id_file.exists() else None
            self._wandb = wandb.init(
                project=wandb_cfg["project"],
                entity=wandb_cfg.get("entity"),
                group=wandb_cfg.get("group") or _sweep_group(run_dir),
                tags=list(wandb_cfg.get("tags") or []),
                mode=wandb_cfg.get("mode", "online"),
                dir=str(run_dir),
                config=redact_secrets(config or {}),
                id=run_id,
                resume="allow" if run_id else None,
            )
            write_atomic(id_file, self._wandb.id + "\n")

    def _drop_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the torn last line of a killed run
                continue
            if row.get("step", 0) <= step:
                kept.append(line + "\n")
        write_atomic(self.path, "".join(kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def _sweep_group(run_dir: Path) -> str | None:
    """Inside a Hydra multirun (run dir = <sweep dir>/<job subdir>) the sweep's directory name, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return None
    return Path(hc.sweep.dir).name
