"""Training checkpoints: complete-or-absent `step_N/` directories, a `latest` pointer, keep-last-N, resume lookup.

Layout of a run directory's checkpoints (every rank writes into the same, shared, directory):

    checkpoints/
        step_20/                  a complete checkpoint (it has meta.json: written last, before the rename)
            meta.json             step, world size, metrics offset, data-sampler state (rank 0)
            rank_00000.pt ...     per-rank RNG states and anything else a rank alone owns
            policy/               DeepSpeed's own checkpoint: ZeRO-3 shards, optimizer, LR scheduler
            teacher_rank_00000.pt the EMA / periodic teacher's shard of each rank (when the algorithm has one)
            model/                config.json + tokenizer: what `sposd export` needs to rebuild a HF model
                                  (+ adapter_config.json for a LoRA run, whose policy/ holds the adapter only)
        step_30.tmp/              being written; never read, removed by the next save or start
        latest                    "step_20": the newest complete checkpoint

A checkpoint becomes visible only by the atomic rename `step_N.tmp` -> `step_N` after every rank has written
its part and rank 0 has written meta.json, so a kill at any moment leaves either the previous state or the
new one, never a half-written directory under a real name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sposd import dist as sdist
from sposd.logging import write_atomic

CKPT_DIRNAME = "checkpoints"
META = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CKPT_DIRNAME


def is_complete(path: Path) -> bool:
    """A checkpoint directory counts only once its meta.json exists (written last, just before the rename)."""
    return _STEP_DIR.match(path.name) is not None and (path / META).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the highest complete step (the pointer may lag)."""
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        newest = list_checkpoints(root)
        if is_complete(named) and (not newest or newest[-1] == named):
            return named
    done = list_checkpoints(root)
    return done[-1] if done else None


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """Which checkpoint to start from: "auto" (the newest in this run, or none), "never", or a path.

    Raises:
        FileNotFoundError: a path that is not a complete checkpoint (names what would be valid).
    """
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(checkpoint_root(run_dir))
    path = Path(resume).expanduser()
    if path.is_dir() and not is_complete(path):  # a run directory, or its checkpoints/ folder
        inner = latest_checkpoint(path if path.name == CKPT_DIRNAME else checkpoint_root(path))
        if inner is not None:
            return inner
    if not is_complete(path):
        raise FileNotFoundError(
            f"{resume!r} is not a complete checkpoint (a checkpoints/step_N directory with {META}), "
            "nor a run directory that has one"
        )
    return path


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


def begin(root: Path, step: int) -> Path:
    """Start writing checkpoint `step` (all ranks): a fresh `step_N.tmp/` directory, returned to every rank."""
    tmp = root / f"step_{step}.tmp"
    if sdist.rank() == 0:
        remove_partial(root)
        tmp.mkdir(parents=True)
    sdist.barrier()
    return tmp


def commit(root: Path, tmp: Path, step: int, meta: dict, *, keep: int) -> Path:
    """Finish checkpoint `step` (all ranks, after each wrote its part): meta.json, rename, `latest`, prune."""
    final = root / f"step_{step}"
    sdist.barrier()  # every rank's files are on disk
    if sdist.rank() == 0:
        write_atomic(tmp / META, json.dumps({"step": step, **meta}, indent=1) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of this step from an earlier attempt: the new one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_atomic(root / "latest", final.name + "\n")
        for old in prunable(root, step, keep=keep):
            shutil.rmtree(old, ignore_errors=True)
    sdist.barrier()
    return final


def prunable(root: Path, step: int, *, keep: int) -> list[Path]:
    """The checkpoints keep-last-N deletes after saving `step`: only those of earlier steps (this run's past, since
    a run folder never holds two runs), so the one just written and `latest` always survive; keep 0 deletes none."""
    if keep <= 0:
        return []
    older = [p for p in list_checkpoints(root) if int(_STEP_DIR.match(p.name).group(1)) < step]
    return older[: max(len(older) - (keep - 1), 0)]


def remove_partial(root: Path) -> None:
    """Delete leftovers of interrupted saves (`step_N.tmp/`); rank 0 only."""
    if root.is_dir():
        for p in root.glob("step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model_files(ckpt_dir: Path, config, *, tokenizer=None) -> None:
    """Rank 0: the model's HF config (and tokenizer) under model/, so a checkpoint can be exported alone."""
    if sdist.rank() == 0:
        config.save_pretrained(Path(ckpt_dir) / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(Path(ckpt_dir) / "model")


EXPORT_MARKER = ".sposd_export"  # written into every export: what `--overwrite` may replace


def check_export_target(ckpt: Path, out_dir: Path, *, overwrite: bool) -> None:
    """`out_dir` may receive an export: new, empty, or (with overwrite) a previous export; never the checkpoint's
    run or anything inside it, never a folder holding anything else.

    Raises:
        ValueError: one line naming the folder and what to do instead.
    """
    ckpt, out = Path(ckpt).resolve(), Path(out_dir).resolve()
    if out == ckpt or ckpt.is_relative_to(out) or out.is_relative_to(ckpt):
        raise ValueError(
            f"{out_dir} contains or is inside the checkpoint {ckpt}: export to a folder outside its run"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out_dir} is a file; export into a new or empty folder")
    if not any(out.iterdir()):
        return
    if not (out / EXPORT_MARKER).is_file():
        raise ValueError(
            f"{out_dir} is not empty and is not an earlier `sposd export`; export into a new or empty folder"
        )
    if not overwrite:
        raise ValueError(f"{out_dir} holds an earlier export; add --overwrite to replace it, or choose a new folder")


def export_hf(ckpt: Path, out_dir: Path, *, overwrite: bool = False, adapter: bool = False,
              base: str | None = None) -> Path:
    """Write the policy of a checkpoint as a Hugging Face model (config, safetensors, tokenizer), atomically.

    A LoRA checkpoint (model/adapter_config.json) exports the base with the adapter merged, or with `adapter` the
    PEFT adapter folder (adapter_config.json + adapter_model.safetensors); the base is adapter_config's
    base_model_name_or_path (the run's model.path) unless `base` names it.

    The ZeRO-3 shards are merged on the CPU by DeepSpeed's zero_to_fp32 (no process group, no GPU), then cast to
    the model's saved dtype. The model is written into a fresh temporary folder beside `out_dir` and renamed into
    place; only an earlier export (it holds EXPORT_MARKER) is ever replaced, and only with overwrite.

    Raises:
        FileNotFoundError: `ckpt` is not a complete checkpoint, or lacks its model/ or policy/ part.
        ValueError: `out_dir` may not receive the export (check_export_target).
    """
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if not is_complete(ckpt):
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (a checkpoints/step_N directory with {META})")
    for part in ("model", "policy"):
        if not (ckpt / part).is_dir():
            raise FileNotFoundError(f"{ckpt} has no {part}/ directory: it was not written by `sposd train`")
    check_export_target(ckpt, out_dir, overwrite=overwrite)
    if is_lora_checkpoint(ckpt):
        return _export_lora(ckpt, out_dir, adapter=adapter, base=base)
    if adapter:
        raise ValueError(f"{ckpt} is a full fine-tuning checkpoint (no model/adapter_config.json): export it "
                         "without --adapter")
    config = AutoConfig.from_pretrained(ckpt / "model")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="policy")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{ckpt}: parameters do not match the model: missing {missing}, unexpected {unexpected}")
    dtype = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or torch.float32
    model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return _write_export(ckpt, out_dir, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def _write_export(ckpt: Path, out_dir: Path, write) -> Path:
    """`write(tmp)` into a fresh folder beside `out_dir`, then the checkpoint's tokenizer and the export marker,
    then the rename into place."""
    import tempfile

    from transformers import AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))  # ours alone
    try:
        write(tmp)
        try:
            AutoTokenizer.from_pretrained(ckpt / "model").save_pretrained(tmp)
        except (OSError, ValueError):  # a checkpoint of a model saved without a tokenizer: weights only
            pass
        write_atomic(tmp / EXPORT_MARKER, json.dumps({"checkpoint": str(ckpt.resolve())}) + "\n")
        _replace_with(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_lora_checkpoint(ckpt: Path) -> bool:
    """A LoRA run's checkpoint: its policy/ holds the adapter only, model/ its adapter_config.json."""
    from sposd.models.lora import ADAPTER_CONFIG

    return (Path(ckpt) / "model" / ADAPTER_CONFIG).is_file()


def _export_lora(ckpt: Path, out_dir: Path, *, adapter: bool, base: str | None) -> Path:
    """A LoRA checkpoint as the merged Hugging Face model (the base's dtype), or as a PEFT adapter folder."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig

    from sposd.models.lora import adapter_base_path, adapter_model, save_merged

    base_path = adapter_base_path(ckpt / "model", base)
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="policy", exclude_frozen_parameters=True)
    peft_model = adapter_model(ckpt / "model", base=base_path, adapter_weights=dict(state))
    if adapter:
        return _write_export(ckpt, out_dir, lambda tmp: peft_model.save_pretrained(tmp, safe_serialization=True))
    dtype = getattr(AutoConfig.from_pretrained(ckpt / "model"), "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return _write_export(ckpt, out_dir, lambda tmp: save_merged(peft_model, tmp, dtype=dtype))


def _replace_with(new: Path, out_dir: Path) -> None:
    """Rename `new` to `out_dir`; an existing out_dir (empty, or an earlier export: checked before) goes first."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(new, out_dir)
        return
    assert (out_dir / EXPORT_MARKER).is_file(), f"{out_dir} is not an export"
    old = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(new, out_dir)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class TrainState:
    """Everything the training loop owns across steps, saved into and restored from one checkpoint.

    The learner writes its own part (DeepSpeed shards, optimizer, LR schedule, teacher); this adds, per rank, the
    RNG states, the prompt sampler and the algorithm's controllers, and on rank 0 the run's facts in meta.json.

    Attributes:
        step: the last finished step (0 before the first).
        first_len: the mean response length at step 1 (`response/len_reduction` is relative to it).
        base_accuracy: the held-out accuracy before training (None: not measured).
        eval_history: every `train.eval.every` evaluation so far (for the last / best report).
    """

    step: int = 0
    first_len: float | None = None
    base_accuracy: float | None = None
    eval_history: list[dict] = field(default_factory=list)

    def save(self, run_dir: Path, *, learner, sampler, algo, tokenizer, run_meta: dict, keep: int) -> Path:
        """Write checkpoint `self.step` (every rank: it is collective); returns its directory.

        Args:
            learner: has `save_state(dir)` and `module.config`; sampler, algo: have `state_dict()`.
            run_meta: facts of the run checked on resume (world, num_steps, algo, seed).
        """
        import torch

        root = checkpoint_root(run_dir)
        tmp = begin(root, self.step)
        learner.save_state(tmp)
        rank_state = {
            "rng": rng_state(),
            "sampler": sampler.state_dict(),
            "algo": algo.state_dict(),
            "loop": {"first_len": self.first_len},
        }
        torch.save(rank_state, tmp / f"rank_{sdist.rank():05d}.pt")
        save_model_files(tmp, learner.module.config, tokenizer=tokenizer)
        fault_pause()
        meta = {**run_meta, "eval_history": self.eval_history}
        if self.base_accuracy is not None:
            meta["base_accuracy"] = self.base_accuracy
        return commit(root, tmp, self.step, meta, keep=keep)

    @classmethod
    def restore(cls, path: Path, *, learner, sampler, algo, rank: int) -> TrainState:
        """Load checkpoint `path` into this rank's learner, sampler, algorithm and RNGs; returns the loop's state."""
        import torch

        meta = read_meta(path)
        learner.load_state(path)
        state = torch.load(path / f"rank_{rank:05d}.pt", map_location="cpu", weights_only=False)
        sampler.load_state_dict(state["sampler"])
        algo.load_state_dict(state.get("algo", {}))
        set_rng_state(state["rng"])
        return cls(
            step=int(meta["step"]),
            first_len=state.get("loop", {}).get("first_len"),
            base_accuracy=meta.get("base_accuracy"),
            eval_history=list(meta.get("eval_history", [])),
        )


def rng_state() -> dict:
    """This process's Python, numpy, torch (and CUDA) RNG states."""
    import numpy as np
    import torch

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignals:
    """Turns stop signals (SLURM preemption, time limit, Ctrl-C) into a request to stop at the next step boundary.

    The loop polls `requested()` after each step (an all-reduce, so every rank stops at the same step), saves a
    checkpoint and exits. A second SIGINT interrupts at once (the default handler is restored after the first).
    Handlers can only be installed from the main thread; elsewhere this is inert.

    Args:
        names: signal names, e.g. ["SIGTERM", "SIGUSR1"].
    """

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.received: str | None = None
        self._old: dict[int, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def requested(self) -> str | None:
        """The first signal any rank received (collective: every rank must call it at the same point)."""
        hit = sdist.all_reduce([float(self.received is not None)], op="max")[0] > 0
        return (self.received or "signal on another rank") if hit else None

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def requeue_slurm_job() -> str | None:
    """Rank 0 under SLURM: `scontrol requeue` this job so it restarts (and resumes); returns what was done."""
    job_id = os.environ.get("SLURM_JOB_ID")  # an array task has its own job id too
    if not job_id or sdist.rank() != 0:
        return None
    try:
        r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol requeue {job_id} failed: {e}"
    return f"requeued SLURM job {job_id}" if r.returncode == 0 else f"scontrol requeue {job_id}: {r.stderr.strip()}"


def fault_pause() -> None:
    """Testing aid: SPOSD_FAULT_CKPT_PAUSE_S=<s> sleeps inside every checkpoint write (after the shards, before
    the commit), so a test can kill a run mid-write. Unset in normal use."""
    pause = float(os.environ.get("SPOSD_FAULT_CKPT_PAUSE_S", "0") or 0)
    if pause > 0:
        time.sleep(pause)
