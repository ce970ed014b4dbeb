"""Run-directory outputs and metric sinks: metrics.jsonl (always, rank 0), progress bar, optional wandb."""

from __future__ import annotations

import json
import os
import re
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


def write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file and rename (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class MetricsLogger:
    """Appends one JSON object per step to metrics.jsonl; mirrors to wandb when enabled. Rank 0 only."""

    def __init__(self, run_dir: Path, *, enabled: bool, wandb_cfg: dict | None = None, config: dict | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._wandb = None
        if enabled and wandb_cfg is not None:
            import wandb

            self._wandb = wandb.init(
                project=wandb_cfg["project"],
                entity=wandb_cfg.get("entity"),
                group=wandb_cfg.get("group"),
                tags=list(wandb_cfg.get("tags") or []),
                mode=wandb_cfg.get("mode", "online"),
                dir=str(run_dir),
                config=redact_secrets(config or {}),
            )

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
