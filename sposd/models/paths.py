"""Where a model comes from: `builtin` (the embedded tiny model, built and cached), a local HF dir, or a hub id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sposd.config import DataCfg, ModelCfg
from sposd.errors import UserError


def resolve_model_path(model: ModelCfg, *, data: DataCfg, cache_dir: str, rank: int = 0) -> str:
    """'builtin' -> build + warm-start (cached) the embedded tiny model; a local dir must exist; a hub id is
    downloaded once (`fetch_hub_model`) and its local snapshot returned.

    The builtin model is keyed on its architecture and warm-start knobs (`model.builtin.*`) and the toy task's
    knobs (`data.max_operand`, `data.min_terms`, `data.max_terms`). In a multi-rank job rank 0 builds it first.
    """
    if model.path == "builtin":
        from sposd import dist as sdist
        from sposd.models.warmstart import ensure_toy_model

        cache = Path(cache_dir).expanduser() / "toy_models"
        b = model.builtin
        knobs = dict(
            hidden_size=b.hidden_size,
            num_layers=b.num_layers,
            num_heads=b.num_heads,
            num_kv_heads=b.num_kv_heads,
            intermediate_size=b.intermediate_size,
            steps=b.warmstart_steps,
            lr=b.warmstart_lr,
            batch_size=b.warmstart_batch_size,
            privileged_frac=b.privileged_frac,
            slip_frac=b.slip_frac,
            seed=b.seed,
            max_operand=data.max_operand,
            min_terms=data.min_terms,
            max_terms=data.max_terms,
        )
        if rank == 0:
            path = ensure_toy_model(cache, **knobs)
        sdist.barrier()
        if rank != 0:
            path = ensure_toy_model(cache, **knobs)  # cache hit: rank 0 just built it
        return str(path)
    p = Path(model.path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise UserError(f"model.path={model.path!r} is a directory without config.json (not a Hugging Face model)")
        return str(p)
    if model.path.startswith((".", "/", "~")) or model.path.count("/") != 1:
        raise UserError(f"model.path={model.path!r} does not exist (give a local HF-format dir or a hub id owner/name)")
    return fetch_hub_model(model.path, rank=rank)


def _snapshot(model_id: str, *, local_files_only: bool) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(model_id, local_files_only=local_files_only, ignore_patterns=["original/*"])


def fetch_hub_model(
    model_id: str,
    *,
    rank: int,
    download: Callable[..., str] = _snapshot,
    gather: Callable[[object], list] | None = None,
) -> str:
    """The local directory of a hub model, downloaded by rank 0 only; every rank returns the same snapshot.

    Rank 0 downloads (or finds it in the Hugging Face cache) while the others wait at a gather that carries its
    outcome; they then resolve the snapshot from the cache without the network. A failed download is one
    UserError on every rank, not a rank 0 error with its peers waiting at a barrier.

    Args:
        download: `download(model_id, local_files_only=...) -> local dir` (huggingface_hub's snapshot_download).
        gather: all-gather of one object per rank (`sposd.dist.all_gather_objects`).
    """
    if gather is None:
        from sposd.dist import all_gather_objects as gather
    path, error = None, None
    if rank == 0:
        try:
            path = download(model_id, local_files_only=False)
        except Exception as e:  # any failure (network, auth, no such repo) is reported to every rank
            error = f"model.path={model_id!r}: cannot fetch it from the Hugging Face hub ({str(e).splitlines()[0]})"
    error = gather(error)[0]  # every rank waits here for rank 0's download
    if error is not None:
        raise UserError(error)
    return path if path is not None else download(model_id, local_files_only=True)


def load_tokenizer(path: str, model: ModelCfg):
    """The model's tokenizer; a UserError naming model.path when it cannot be loaded (e.g. an unknown hub id)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model.path={model.path!r}: cannot load a tokenizer ({str(e).splitlines()[0]})") from e


def context_length(path: str, *, trust_remote_code: bool = False) -> int | None:
    """The model's maximum context (max_position_embeddings of its text config), or None when unknown."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None
