"""Config schemas: one dataclass per Hydra group, the single source of defaults (YAML holds overrides only).

Every dataclass validates itself in ``__post_init__`` (run by ``OmegaConf.to_object``), raising ``ValueError``
with a message that names the bad key and the valid values. ``register_configs`` stores the schemas in Hydra's
ConfigStore so YAML files start with ``defaults: [base_<group>, _self_]`` and a misspelled key fails at compose time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from sposd.algos.config import AlgoCfg


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose from {list(choices)}")


def _check_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(kw_only=True)
class BuiltinModelCfg:
    """The embedded tiny model: architecture and supervised warm start (only used when model.path == 'builtin')."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 2
    num_kv_heads: int = 2
    intermediate_size: int = 256
    warmstart_steps: int = 1000
    warmstart_lr: float = 3e-3
    warmstart_batch_size: int = 32
    privileged_frac: float = 0.2
    seed: int = 0


@dataclass(kw_only=True)
class ModelCfg:
    """What to train: a Hugging Face id or local directory, or 'builtin' for the embedded tiny model.

    max_teacher_prompt_len caps a teacher's context (privileged message) in tokens; null = max_prompt_len +
    max_new_tokens (room for a witness as long as a completion). Longer contexts are skipped and counted.
    """

    name: str = MISSING
    path: str = MISSING
    dtype: str = "float32"
    trust_remote_code: bool = False
    enable_thinking: bool = False
    max_prompt_len: int = 512
    max_new_tokens: int = 64
    max_teacher_prompt_len: int | None = None
    gradient_checkpointing: bool = False
    builtin: BuiltinModelCfg = field(default_factory=BuiltinModelCfg)

    def __post_init__(self) -> None:
        _check_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_positive("model.max_prompt_len", self.max_prompt_len)
        _check_positive("model.max_new_tokens", self.max_new_tokens)
        if self.max_teacher_prompt_len is not None:
            _check_positive("model.max_teacher_prompt_len", self.max_teacher_prompt_len)


@dataclass(kw_only=True)
class DataCfg:
    """Where training prompts come from: the toy task, a local JSONL/parquet file, or a Hugging Face dataset."""

    name: str = MISSING
    kind: str = MISSING
    path: str | None = None
    hf_id: str | None = None
    split: str = "train"
    fields: dict[str, str] = field(default_factory=dict)
    instruction: str = "Please reason step by step, and put your final answer within \\boxed{}."
    limit: int | None = None
    num_heldout: int = 200
    max_operand: int = 19
    min_terms: int = 2
    max_terms: int = 3

    def __post_init__(self) -> None:
        _check_choice("data.kind", self.kind, ("toy", "local", "hf"))
        if self.kind == "local" and not self.path:
            raise ValueError("data.kind=local needs data.path=<file.jsonl|file.parquet>")
        if self.kind == "hf" and not self.hf_id:
            raise ValueError("data.kind=hf needs data.hf_id=<owner/name>")
        bad = set(self.fields) - {"id", "problem", "answer", "solution"}
        if bad:
            raise ValueError(
                f"data.fields has unknown keys {sorted(bad)}; valid: ['answer', 'id', 'problem', 'solution']"
            )


@dataclass(kw_only=True)
class HardwareCfg:
    """Where the job runs: device, ranks, DeepSpeed and vLLM memory knobs."""

    name: str = MISSING
    device: str = "cpu"
    nproc: int = 1
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_tokens: int = 8192
    vllm_gpu_memory_utilization: float = 0.5
    vllm_kv_cache_gb: float = 1.0
    vllm_tp: int = 1
    vllm_enforce_eager: bool = True
    vllm_sleep: bool = False
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check_choice("hardware.device", self.device, ("cpu", "cuda"))
        _check_choice("hardware.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _check_positive("hardware.nproc", self.nproc)
        _check_positive("hardware.micro_batch_tokens", self.micro_batch_tokens)
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"hardware.vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )


@dataclass(kw_only=True)
class LoggerCfg:
    """Where metrics go besides the run directory's metrics.jsonl (always written)."""

    name: str = MISSING
    console: bool = True
    wandb: bool = False
    project: str = "sposd"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "online"

    def __post_init__(self) -> None:
        _check_choice("logger.mode", self.mode, ("online", "offline", "disabled"))


@dataclass(kw_only=True)
class RolloutCfg:
    """Sampling settings for training rollouts."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1

    def __post_init__(self) -> None:
        _check_positive("rollout.temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {self.top_p}")


@dataclass(kw_only=True)
class OptimCfg:
    """AdamW with linear warm-up then a constant, linear or cosine schedule; global grad-norm clip."""

    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("optim.lr", self.lr)
        _check_choice("optim.schedule", self.schedule, ("constant", "linear", "cosine"))
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas needs two values, got {self.betas}")


@dataclass(kw_only=True)
class TrainCfg:
    """The whole `sposd train` config; groups are composed by conf/train.yaml."""

    model: ModelCfg = MISSING
    algo: AlgoCfg = MISSING
    data: DataCfg = MISSING
    hardware: HardwareCfg = MISSING
    logger: LoggerCfg = MISSING
    rollout: RolloutCfg = field(default_factory=RolloutCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    seed: int = 0
    num_steps: int = 100
    prompts_per_step: int = 16
    heldout_eval: bool = True
    heldout_samples: int = 4
    heldout_every: int = 0
    save_samples_every: int = 10
    save_final: bool = True
    cache_dir: str = "~/.cache/sposd"
    run_dir: str = "."

    def __post_init__(self) -> None:
        _check_positive("num_steps", self.num_steps, allow_zero=True)
        _check_positive("prompts_per_step", self.prompts_per_step)
        _check_positive("heldout_every", self.heldout_every, allow_zero=True)
        if self.prompts_per_step % self.hardware.nproc:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} must be divisible by hardware.nproc={self.hardware.nproc}"
            )


def register_configs() -> None:
    """Store every group's schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainCfg)
    for group, node in (
        ("model", ModelCfg),
        ("algo", AlgoCfg),
        ("data", DataCfg),
        ("hardware", HardwareCfg),
        ("logger", LoggerCfg),
    ):
        cs.store(group=group, name=f"base_{group}", node=node)


def register_resolvers() -> None:
    """`${sposd.device:}`, `${sposd.nproc:}`, `${sposd.is_cuda:}`: what hardware=auto resolves to on this machine."""
    from omegaconf import OmegaConf

    def gpus() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    OmegaConf.register_new_resolver("sposd.device", lambda: "cuda" if gpus() else "cpu", replace=True)
    OmegaConf.register_new_resolver("sposd.nproc", lambda: max(gpus(), 1), replace=True)
    OmegaConf.register_new_resolver("sposd.is_cuda", lambda: gpus() > 0, replace=True)


def to_object(cfg) -> TrainCfg:
    """DictConfig -> validated TrainCfg; any schema or value error becomes one ValueError naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ValueError(f"{key}: {msg}" if key else msg) from None
    except ValueError as e:
        raise ValueError(str(e)) from None
