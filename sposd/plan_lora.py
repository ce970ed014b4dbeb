"""LoRA in `sposd plan`: the adapter's trainable parameters, from the model's shape alone (pure arithmetic).

A LoRA run (`model.lora.rank` > 0; sposd.models.lora) injects, into every decoder layer, A (rank, in) and
B (out, rank) beside each target linear of shape (out, in): rank x (in + out) trainable parameters per target per
layer. The base weights stay (frozen: no gradients, fp32 master or Adam state); the KL reference and the `initial`
teacher are the policy with the adapter off, so they cost no copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sposd.errors import UserError

if TYPE_CHECKING:
    from sposd.plan import ModelShape

# a decoder layer's linear layers (Llama / Qwen3 names), the ones the plan knows the shape of
LAYER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer, by name."""
    d, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    return {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, i),
        "up_proj": (d, i),
        "down_proj": (i, d),
    }


def check_targets(targets) -> list[str]:
    """The targets, each once (peft adapts a layer once however often it is named).

    Raises:
        UserError: one line naming the unknown targets and the valid ones (as sposd.models.lora.check_targets).
    """
    unknown = [t for t in targets if t not in LAYER_LINEARS]
    if unknown:
        raise UserError(
            f"model.lora.targets {unknown} name no linear layer of this model; choose from {sorted(LAYER_LINEARS)}"
        )
    return list(dict.fromkeys(targets))


def adapter_params(shape: ModelShape, *, rank: int, targets) -> int:
    """Trainable parameters of a rank-`rank` adapter on `targets`: rank x (in + out) per target per layer."""
    io = linear_shapes(shape)
    return shape.num_hidden_layers * sum(rank * (io[t][0] + io[t][1]) for t in check_targets(targets))


def lora_summary(lora, shape: ModelShape) -> dict | None:
    """What the plan shows of a `LoraCfg`: rank, alpha, targets, adapted linears per layer, and the adapter's
    parameter count; None for full fine-tuning (rank 0)."""
    if lora is None or not lora.enabled:
        return None
    targets = check_targets(lora.targets)
    return {
        "rank": lora.rank,
        "alpha": lora.scale_alpha,
        "targets": targets,
        "adapter_params": adapter_params(shape, rank=lora.rank, targets=targets),
    }


def lora_line(lora: dict) -> str:
    """`sposd plan`'s lines for a LoRA run: why its optimizer states are small."""
    return (
        f"  LoRA                rank {lora['rank']} (alpha {lora['alpha']:g}) on {', '.join(lora['targets'])}: "
        f"{lora['adapter_params'] / 1e6:,.1f} M trainable params\n"
        "                      the base is frozen (no grads, fp32 master or Adam); a KL reference or initial teacher "
        "is the base with the adapter off (no copy)"
    )
