"""Schemas of the `model` config group: what to train (`ModelCfg`), its LoRA adapter (`LoraCfg`), the embedded
tiny model (`BuiltinModelCfg`) and a published architecture for `sposd plan` (`ModelShapeCfg`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from sposd.config_checks import _check_choice, _check_positive, _check_range


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
    # the share of student-prompt warm-start demonstrations with one arithmetic slip (sposd.data.toy.slipped_solution):
    # noisy demonstrations leave a habit that RL can remove; with clean ones (0) no method improved held-out accuracy
    # (README "Does SSOPD beat GRPO?")
    slip_frac: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        for key in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "warmstart_batch_size",
        ):
            _check_positive(f"model.builtin.{key}", getattr(self, key))
        _check_positive("model.builtin.warmstart_steps", self.warmstart_steps, allow_zero=True)
        _check_positive("model.builtin.warmstart_lr", self.warmstart_lr)
        _check_range("model.builtin.privileged_frac", self.privileged_frac, 0, 1)
        _check_range("model.builtin.slip_frac", self.slip_frac, 0, 1)
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
