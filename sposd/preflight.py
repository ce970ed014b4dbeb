"""Checks that need no model: run by the CLI after the config is validated and before Hydra writes the run
directory, vLLM or DeepSpeed load, or ranks are launched. Each raises `UserError` with one line naming the
problem and what would be valid.

The rule they enforce for folders: `sposd` never deletes or overwrites anything it did not create or mark as its
own. A training run goes into a new or empty folder, or continues the run already there (`train.resume=auto`);
an evaluation goes into a new or empty folder, or resumes the evaluation already there; neither writes into a
folder holding something else.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path

from sposd.errors import UserError

# What marks a folder as a training run, an evaluation, or Hydra's own files of an earlier sposd invocation.
TRAIN_MARKERS = ("metrics.jsonl", "checkpoints", "summary.json", "final")
EVAL_MARKERS = ("results.json", "samples.jsonl")
HYDRA_OWN = (".hydra",)  # plus `<job>.log`
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


# ---- folders ---------------------------------------------------------------------------------------------------
def folder_kind(path: Path) -> str:
    """"missing", "empty", "train" (a training run), "eval" (an evaluation), "sposd" (only Hydra's files of an
    earlier invocation), or "foreign" (anything else: not ours to write into)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "foreign"
    names = {p.name for p in path.iterdir()}
    if not names:
        return "empty"
    if names & set(TRAIN_MARKERS) or ("config.yaml" in names and ".hydra" in names and "results.json" not in names):
        return "train"
    if names & set(EVAL_MARKERS):
        return "eval"
    if all(n in HYDRA_OWN or n.endswith(".log") for n in names):
        return "sposd"
    return "foreign"


def _describe_run(path: Path) -> str:
    from sposd.checkpoint import checkpoint_root, list_checkpoints

    ckpts = list_checkpoints(checkpoint_root(path))
    return f"checkpoints up to step {ckpts[-1].name.removeprefix('step_')}" if ckpts else "no checkpoint"


def free_sibling(path: Path, tag: str) -> Path:
    """`<path><tag><N>` for the smallest N >= 2 that does not exist."""
    n = 2
    while (candidate := path.with_name(f"{path.name}{tag}{n}")).exists():
        n += 1
    return candidate


def check_train_run_dir(run_dir: Path, *, resume: str, existing_run: str) -> Path | None:
    """A training run's folder: new, empty, or this same run continued. Returns where an old run was moved, if any.

    Args:
        resume: train.resume; only "auto" (or a checkpoint inside run_dir) continues the run already there.
        existing_run: train.existing_run: "refuse" or "move_aside".
    """
    kind = folder_kind(run_dir)
    if kind in ("missing", "empty", "sposd"):
        return None
    if kind == "eval":
        raise UserError(
            f"{run_dir} holds an evaluation (results.json / samples.jsonl): train into another folder "
            f"(drop hydra.run.dir, or hydra.run.dir={free_sibling(run_dir, '-train')})"
        )
    if kind == "foreign":
        raise UserError(
            f"{run_dir} is not empty and holds no sposd run: choose a new or empty folder "
            f"(drop hydra.run.dir for a fresh timestamped one)"
        )
    continues = resume == "auto" or _is_inside(Path(resume).expanduser(), run_dir)
    if continues:
        return None
    if existing_run == "move_aside":
        moved = free_sibling(run_dir, ".old-")
        os.replace(run_dir, moved)
        return moved
    raise UserError(
        f"{run_dir} already holds a run ({_describe_run(run_dir)}) and train.resume={resume} would mix two runs in "
        f"one folder: start the new run elsewhere (drop hydra.run.dir, or hydra.run.dir={free_sibling(run_dir, '-')}), "
        "continue this one with train.resume=auto, or add train.existing_run=move_aside to rename it first"
    )


def check_eval_run_dir(run_dir: Path) -> None:
    """An evaluation's folder: new, empty, or an earlier evaluation (resumed); never a training run."""
    kind = folder_kind(run_dir)
    if kind == "train":
        final = Path(run_dir) / "final"
        hint = f"evaluate its model with model.path={final} " if final.is_dir() else ""
        raise UserError(
            f"{run_dir} is a training run and sposd eval would overwrite its .hydra/ and log: {hint}"
            "into another folder (drop hydra.run.dir for a fresh timestamped one)"
        )
    if kind == "foreign":
        raise UserError(
            f"{run_dir} is not empty and holds no sposd evaluation: choose a new or empty folder "
            "(drop hydra.run.dir for a fresh timestamped one)"
        )


def check_writable(path: Path, what: str) -> None:
    """`path` (a folder, possibly not created yet) can be created and written: its nearest existing ancestor is a
    writable folder."""
    path = Path(path).expanduser()
    probe = path if path.is_absolute() else Path.cwd() / path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what}={path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what}={path} cannot be written: {probe} is not writable by this user")


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


# ---- environment -----------------------------------------------------------------------------------------------
def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_launch(hw) -> None:
    """More than one node needs a launcher that starts every rank (this process cannot start the others)."""
    from sposd.dist import launched_as_ranks

    if hw.nodes > 1 and not launched_as_ranks():
        raise UserError(
            f"hardware.nodes={hw.nodes} needs one process per rank on every node: launch it through SLURM "
            "(-m hydra/launcher=slurm, or srun with one task per GPU) or torchrun --nnodes"
        )


def check_hardware(hw, *, gpus: int | None = None, ranks: bool = True) -> None:
    """GPU presets need GPUs here; vLLM tensor parallelism needs as many GPUs (the CPU build runs tp=1).

    Args:
        hw: the HardwareCfg. gpus: CUDA devices on this machine (detected when None).
        ranks: check hardware.nproc against the GPUs (training; `sposd eval` runs one process).
    """
    gpus = cuda_device_count() if gpus is None else gpus
    if hw.device == "cuda":
        if gpus == 0:
            raise UserError(
                f"hardware={hw.name} runs on CUDA GPUs and this machine has none; use hardware=auto (or cpu) here, "
                "or run this command on a GPU machine"
            )
        if ranks and hw.nodes == 1 and hw.nproc > gpus:
            raise UserError(f"hardware.nproc={hw.nproc} needs {hw.nproc} GPUs and this machine has {gpus}")
        if hw.vllm_tp > gpus:
            raise UserError(f"hardware.vllm_tp={hw.vllm_tp} needs {hw.vllm_tp} GPUs and this machine has {gpus}")
    elif hw.vllm_tp != 1:
        raise UserError(f"hardware.vllm_tp={hw.vllm_tp} splits vLLM over GPUs; on the CPU it must be 1")


def check_wandb(logger, environ: dict | None = None, *, home: Path | None = None) -> None:
    """logger=wandb needs the package, and online mode an API key (WANDB_API_KEY or `wandb login`'s netrc)."""
    env = os.environ if environ is None else environ
    if not logger.wandb or logger.mode == "disabled":
        return
    if importlib.util.find_spec("wandb") is None:
        raise UserError("logger=wandb needs the wandb package: pip install 'sposd[wandb]' (or logger=console)")
    if logger.mode != "online" or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    if env.get("WANDB_API_KEY"):
        return
    host = (env.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("://", 1)[-1].split("/")[0].split(":")[0]
    rc = Path(env.get("NETRC") or (home or Path.home()) / ".netrc")
    try:
        if rc.is_file() and netrc.netrc(rc).authenticators(host):
            return
    except (netrc.NetrcParseError, OSError):
        pass
    raise UserError(
        "logger=wandb with logger.mode=online needs a W&B API key (WANDB_API_KEY, or `wandb login`); "
        "without a network use logger.mode=offline"
    )


def check_model_folder(model) -> None:
    """A local model.path is a Hugging Face folder: config.json and weights (the config alone loads nothing)."""
    if model.path == "builtin":
        return
    p = Path(model.path).expanduser()
    if not p.exists():
        if model.path.startswith((".", "/", "~")) or model.path.count("/") != 1:
            raise UserError(
                f"model.path={model.path!r} does not exist (give a local HF-format dir or a hub id owner/name)"
            )
        return  # a hub id: resolved by the loaders
    if not p.is_dir():
        raise UserError(f"model.path={model.path!r} is a file; give a Hugging Face model folder or a hub id")
    if not (p / "config.json").is_file():
        raise UserError(f"model.path={model.path!r} is a directory without config.json (not a Hugging Face model)")
    if not any(next(p.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise UserError(
            f"model.path={model.path!r} has config.json but no weights (*.safetensors or pytorch_model*.bin)"
        )


# ---- data and checkpoints ----------------------------------------------------------------------------------------
def check_local_data(data, *, seed: int) -> None:
    """A local training file is read in full now (a bad row is named before anything loads); remote sets later."""
    if data.kind != "local":
        return
    from sposd.data.sources import load_records

    try:
        records = load_records(kind="local", path=data.path, fields=dict(data.fields), limit=data.limit, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if not records:
        raise UserError(f"data.path={data.path!r} holds no records")


def check_local_benchmarks(benchmarks: dict, ev, *, data, seed: int) -> None:
    """Benchmarks read from local files (or generated) load now: a missing file, row or column is named first."""
    from sposd.evals.benchmarks import load_benchmark

    for name, bcfg in benchmarks.items():
        if bcfg.kind == "hf" and not bcfg.path:
            continue  # the Hub (or its cache): loaded with the model
        try:
            load_benchmark(name, bcfg, ev, data=data, seed=seed)
        except (FileNotFoundError, ValueError) as e:
            msg = str(e)
            raise UserError(msg if msg.startswith(f"benchmarks.{name}") else f"benchmarks.{name}: {msg}") from None


def check_resume_point(resume: str, run_dir: Path, *, world: int, num_steps: int) -> None:
    """train.resume names a complete checkpoint written by as many ranks, not past num_steps."""
    from sposd import checkpoint as ck

    try:
        path = ck.resolve_resume(resume, run_dir)
    except FileNotFoundError as e:
        raise UserError(f"train.resume: {e}; use auto, never, or such a path") from None
    if path is None:
        return
    try:
        meta = ck.read_meta(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}/meta.json cannot be read ({e}); resume from another checkpoint") from None
    if meta.get("world") != world:
        raise UserError(
            f"{path} was written by {meta.get('world')} ranks and this run has {world}: resume with the same "
            "hardware (ZeRO-3 shards are per rank), or export it (sposd export) and start from the model"
        )
    if int(meta.get("step", 0)) > num_steps:
        raise UserError(f"{path} is at step {meta['step']}, past num_steps={num_steps}")


# ---- per command -------------------------------------------------------------------------------------------------
def preflight_train(cfg, run_dir: Path | None) -> Path | None:
    """Everything `sposd train` can check before loading a model. run_dir None: a rank that did not create the
    folder (its checks ran in the launching process). Returns where an old run was moved aside, if it was."""
    moved = None
    if run_dir is not None:
        check_writable(run_dir, "hydra.run.dir")
        if cfg.train.resume not in ("auto", "never"):  # a path: it must exist before the folder question
            check_resume_point(cfg.train.resume, run_dir, world=cfg.hardware.nproc * cfg.hardware.nodes,
                               num_steps=cfg.num_steps)  # fmt: skip
        moved = check_train_run_dir(run_dir, resume=cfg.train.resume, existing_run=cfg.train.existing_run)
        check_resume_point(
            cfg.train.resume, run_dir, world=cfg.hardware.nproc * cfg.hardware.nodes, num_steps=cfg.num_steps
        )
    check_launch(cfg.hardware)
    check_hardware(cfg.hardware)
    check_wandb(cfg.logger)
    check_model_folder(cfg.model)
    if cfg.model.path == "builtin":
        check_writable(Path(cfg.cache_dir), "cache_dir")
    check_local_data(cfg.data, seed=cfg.seed)
    if cfg.train.eval.every:
        check_local_benchmarks(cfg.benchmarks, cfg.eval, data=cfg.data, seed=cfg.seed)
    return moved


def _check_eval_model(model) -> None:
    """model.path (or, for an adapter, the adapter folder and its base) can be evaluated."""
    from sposd.models.lora import adapter_base_path, eval_adapter

    try:
        adapter = eval_adapter(model)
        if adapter is not None and model.adapter is None:  # the base its adapter_config.json names
            adapter_base_path(adapter[0])
    except ValueError as e:
        raise UserError(str(e)) from e
    if adapter is None or model.adapter is not None:
        check_model_folder(model)


def preflight_eval(cfg, run_dir: Path) -> None:
    """Everything `sposd eval` can check before loading a model."""
    check_writable(run_dir, "hydra.run.dir")
    check_eval_run_dir(run_dir)
    check_hardware(cfg.hardware, ranks=False)
    _check_eval_model(cfg.model)
    if cfg.model.path == "builtin":
        check_writable(Path(cfg.cache_dir), "cache_dir")
    check_local_benchmarks(cfg.benchmarks, cfg.eval, data=cfg.data, seed=cfg.seed)
