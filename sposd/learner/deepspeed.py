"""DeepSpeed plumbing of the learner: config, model loading, optimizer, engines, shards, export.

Everything here that imports `deepspeed` does so inside a function, so `import sposd.learner.deepspeed` needs
torch only. Precision defaults are the ones a real (bf16) model needs:
- gradients accumulate in fp32 across micro-batches (`data_types.grad_accum_dtype`), not in the model dtype:
  25-50 bf16 additions of a micro-batch's gradient lose its low bits (GPU_AUDIT F12);
- with `offload_optimizer` the optimizer is DeepSpeed's CPU Adam in AdamW mode: ZeRO-Offload refuses a client
  torch optimizer (`ZeRORuntimeException`, GPU_AUDIT F3), and torch's AdamW on CPU would be slow anyway.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at optimiser step `step`: linear warm-up, then constant / linear / cosine decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1 - frac if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return min_ratio + (1 - min_ratio) * decay


def ds_config(
    *,
    dtype: str,
    zero_stage: int,
    grad_clip: float,
    offload_optimizer: bool,
    offload_params: bool,
    fp32_grad_accum: bool = True,
) -> dict:
    """The DeepSpeed config of the policy (a frozen copy drops `gradient_clipping`).

    fp32_grad_accum: accumulate gradient partitions in fp32 whatever the model dtype (+2 B/param/world for bf16
        models); False keeps DeepSpeed's default, the model dtype.
    """
    zero: dict = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # boundaries are set by hand: micro-batch counts vary per step
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # Without offload a client torch AdamW, which avoids a ~40 s JIT build of DeepSpeed's fused Adam.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if fp32_grad_accum:
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    return cfg


def load_model(path: str, *, dtype: str, trust_remote_code: bool, ds_cfg: dict | None):
    """Load a causal LM; under ZeRO-3 parameters are partitioned while loading (HfDeepSpeedConfig)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_cfg) if ds_cfg and ds_cfg["zero_optimization"]["stage"] == 3 else None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, attn_implementation="sdpa"
        )
    finally:
        # While that object lives every from_pretrained is a collective (a rank-0-only load would hang).
        del keep
        unset_hf_deepspeed_config()
    return model


def use_cached_torch_extensions() -> None:
    """DeepSpeed JIT-builds C++ ops on first use (~30 s each on a CPU): one cache per installation, built once
    (`sposd.extensions`; `make install` builds them)."""
    from sposd.extensions import use_installation_cache

    use_installation_cache()


def forget_stale_deepspeed_groups() -> None:
    """Drop DeepSpeed's cached process groups that belong to a destroyed world.

    DeepSpeed caches its data-parallel / world groups in module globals. When something tears the default
    group down in-process (vLLM's engine shutdown does) and a new world is created, a second learner in the
    same process would otherwise be handed a group torch no longer knows ("Group ... is not registered").
    """
    import torch.distributed as tdist
    from deepspeed.utils import groups

    live = set(tdist.distributed_c10d._world.pg_map) if tdist.is_initialized() else set()
    for name, value in list(vars(groups).items()):
        if not name.startswith("_") or not name.endswith("GROUP"):
            continue
        if isinstance(value, tdist.ProcessGroup) and value not in live:
            setattr(groups, name, None)
        elif isinstance(value, dict) and any(
            isinstance(v, tdist.ProcessGroup) and v not in live for v in value.values()
        ):
            setattr(groups, name, {})


def cpu_adam_threads(*, cores: int, local_ranks: int) -> int:
    """OpenMP threads for one rank's CPU Adam: this machine's cores shared by the ranks on it (at least 1)."""
    return max(1, cores // max(1, local_ranks))


def cpu_adam_buildable() -> bool:
    """Whether DeepSpeed's CPU Adam is built already (TORCH_EXTENSIONS_DIR) or a C++ compiler can build it."""
    use_cached_torch_extensions()
    ext = Path(os.environ["TORCH_EXTENSIONS_DIR"]).expanduser()
    if any(ext.glob("cpu_adam*/cpu_adam*.so")):
        return True
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++") if c)


def build_optimizer(params: Iterable[torch.nn.Parameter], optim, *, offload: bool, device: str):
    """AdamW over `params`: torch's (on the accelerator), or DeepSpeed's CPU Adam when the optimizer is offloaded.

    torchrun sets OMP_NUM_THREADS=1, which would leave CPU Adam's OpenMP loop on one core: on a GPU run the rank
    takes its share of the node's cores (torch.set_num_threads sets OpenMP's default team size). On a CPU run
    the configured `hardware.num_threads` stays in charge.
    """
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    if not offload:
        return torch.optim.AdamW(params, **kwargs)
    use_cached_torch_extensions()
    if not cpu_adam_buildable():
        from sposd.errors import UserError

        raise UserError(
            "hardware.offload_optimizer=true needs a C++ compiler to build DeepSpeed's CPU Adam once "
            "(none found as $CXX, c++ or g++): install one (apt-get install g++) or set offload_optimizer=false"
        )
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if device == "cuda":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count() or 1))
        torch.set_num_threads(cpu_adam_threads(cores=cores, local_ranks=local))
    return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)


def initialize_policy(model, *, optim, total_steps: int, cfg: dict, device: str):
    """The trainable engine: (engine, optimizer, LR scheduler) for `model` under `cfg`."""
    import deepspeed

    offload = "offload_optimizer" in cfg["zero_optimization"]
    # only what trains: every parameter for full fine-tuning, the adapters for LoRA (the base is frozen)
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], optim, offload=offload, device=device)

    def schedule(o):
        return torch.optim.lr_scheduler.LambdaLR(
            o,
            lambda s: lr_lambda(
                s, warmup=optim.warmup_steps, total=total_steps, schedule=optim.schedule, min_ratio=optim.min_lr_ratio
            ),
        )

    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=schedule,
                                                           config=cfg)
    return engine, optimizer, scheduler


def frozen_copy(model_path: str, *, dtype: str, trust_remote_code: bool, cfg: dict):
    """A no-grad engine on the starting weights (KL reference, frozen / EMA / periodic teacher), partitioned as
    the policy is; it has no optimizer, so nothing of `cfg`'s offload_optimizer applies."""
    import deepspeed

    frozen_cfg = {k: v for k, v in cfg.items() if k not in ("gradient_clipping", "data_types")}
    zero = dict(frozen_cfg["zero_optimization"])
    zero.pop("offload_optimizer", None)
    frozen_cfg["zero_optimization"] = zero
    m = load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code, ds_cfg=frozen_cfg)
    eng, *_ = deepspeed.initialize(model=m, config=frozen_cfg)
    eng.eval()
    return eng


def shard(p: torch.nn.Parameter) -> torch.Tensor:
    """This rank's part of a parameter: its ZeRO-3 partition, or the whole tensor without ZeRO-3."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def host_state_dict(named: Iterator[tuple[str, torch.Tensor]], *, keep: bool) -> dict[str, torch.Tensor]:
    """Consume `named` (a collective gather: every rank must walk all of it) and keep host copies only if `keep`."""
    state: dict[str, torch.Tensor] = {}
    for n, t in named:
        if keep:
            state[n] = t.cpu()
    return state


def save_hf(module: torch.nn.Module, out_dir: str | Path, *, rank: int, tokenizer=None) -> Path | None:
    """Write `module` (gathered from its ZeRO-3 partitions) in Hugging Face format, atomically, from rank 0.

    Every rank must call it: each full parameter is gathered collectively, but only rank 0 keeps a host copy
    (the others would hold the whole model in host RAM for nothing: 16 GB/rank for an 8B model)."""
    from sposd.sync.weights import iter_gathered_params

    out_dir = Path(out_dir)
    state = host_state_dict(iter_gathered_params(module), keep=rank == 0)
    if rank != 0:
        return None
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def save_policy_state(engine, ckpt_dir: Path, *, optimizer_steps: int, trainable_only: bool = False) -> None:
    """DeepSpeed's own checkpoint under `ckpt_dir/policy` (parameter and optimizer shards, the LR schedule).

    trainable_only: leave frozen parameters out (a LoRA run: the adapter and its optimizer state; the base is
        the starting model, read again on resume and export).
    """
    engine.save_checkpoint(str(ckpt_dir), tag="policy", client_state={"optimizer_steps": optimizer_steps},
                           save_latest=False, exclude_frozen_parameters=trainable_only)


def load_policy_state(engine, ckpt_dir: Path, *, trainable_only: bool = False) -> int:
    """Restore what `save_policy_state` wrote (the same world size); returns the optimizer steps taken."""
    path, client = engine.load_checkpoint(
        str(ckpt_dir), tag="policy", load_optimizer_states=True, load_lr_scheduler_states=True,
        load_module_strict=not trainable_only,
    )
    if path is None:
        raise FileNotFoundError(f"{ckpt_dir}/policy holds no DeepSpeed checkpoint for this world size")
    return int(client["optimizer_steps"])
