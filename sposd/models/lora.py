"""LoRA adapters (peft) on the learner's policy: applied before DeepSpeed, the base model for free, merged on the fly.

- `apply_lora` injects peft's LoRA layers into a loaded causal LM in place and freezes everything else. The
  learner hands DeepSpeed the *inner* model (`PeftModel.base_model.model`), so parameter names stay the model's
  own (`model.layers.0.self_attn.q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight`) and the passes
  reach the body and the output layer as for a plain model.
- `AdapterDisabled` is the same engine with the adapter switched off for each call (peft's `disable_adapter()`):
  the initial-model teacher and the KL reference, with no second copy of the weights.
- `merge_lora_tensors` turns one gathered group (base weight, A, B) into the merged weight W + s B A under the
  base layer's HF name: what vLLM and a Hugging Face export receive, so neither knows an adapter exists.

`import sposd.models.lora` needs torch only; peft is imported where an adapter is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_ADAPTER = "default"  # peft's name of the one adapter sposd trains
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraLayout:
    """Where one LoRA-wrapped linear layer's tensors live in `named_parameters()` and how they merge.

    prefix: the wrapped module's name (`model.layers.0.self_attn.q_proj`); scaling: peft's alpha / r.
    """

    prefix: str
    scaling: float
    fan_in_fan_out: bool = False

    @property
    def base_weight(self) -> str:
        return f"{self.prefix}.base_layer.weight"

    @property
    def base_bias(self) -> str:
        return f"{self.prefix}.base_layer.bias"

    @property
    def lora_a(self) -> str:
        return f"{self.prefix}.lora_A.{DEFAULT_ADAPTER}.weight"

    @property
    def lora_b(self) -> str:
        return f"{self.prefix}.lora_B.{DEFAULT_ADAPTER}.weight"


def linear_leaf_names(model: nn.Module) -> set[str]:
    """The last name component of every nn.Linear in `model` (what LoRA `targets` may name)."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}


def check_targets(model: nn.Module, targets: Iterable[str]) -> None:
    """Every target names a linear layer of `model`.

    Raises:
        ValueError: one line naming the unknown targets and the valid ones.
    """
    valid = linear_leaf_names(model)
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise ValueError(
            f"model.lora.targets {unknown} name no linear layer of this model; choose from {sorted(valid)}"
        )


def apply_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str]):
    """Inject LoRA layers (rank, alpha, dropout) into `model`'s `targets` in place; only they stay trainable.

    Returns the `PeftModel` (for `disable_adapter()` and adapter export); `peft_model.base_model.model` is `model`
    itself, now holding the adapters. A/B are initialised by peft (A Kaiming-uniform, B zero: the adapted model
    starts as the base model); call after seeding torch identically on every rank.
    """
    from peft import LoraConfig, get_peft_model

    check_targets(model, targets)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def lora_layouts(model: nn.Module) -> dict[str, LoraLayout]:
    """Every LoRA-wrapped linear layer of `model` (the inner model DeepSpeed holds), by its module name."""
    out: dict[str, LoraLayout] = {}
    for name, m in model.named_modules():
        if hasattr(m, "base_layer") and hasattr(m, "lora_A") and DEFAULT_ADAPTER in getattr(m, "lora_A", {}):
            out[name] = LoraLayout(name, float(m.scaling[DEFAULT_ADAPTER]), bool(getattr(m, "fan_in_fan_out", False)))
    return out


Named = list[tuple[str, nn.Parameter]]


def sync_units(named: Named, layouts: dict[str, LoraLayout]) -> list[Named]:
    """`named` cut into units that must be gathered together: a LoRA layer's base weight, bias, A and B form one
    unit (merged as a whole); every other parameter is a unit of its own. Order is kept."""
    units: list[list[tuple[str, nn.Parameter]]] = []
    open_unit: dict[str, list] = {}
    for name, p in named:
        owner = _lora_owner(name, layouts)
        if owner is None:
            units.append([(name, p)])
        elif owner in open_unit:
            open_unit[owner].append((name, p))
        else:
            open_unit[owner] = [(name, p)]
            units.append(open_unit[owner])
    return units


def _lora_owner(name: str, layouts: dict[str, LoraLayout]) -> str | None:
    for marker in (".base_layer.", ".lora_A.", ".lora_B."):
        if marker in name:
            prefix = name.split(marker, 1)[0]
            if prefix in layouts:
                return prefix
    return None


@torch.no_grad()
def merge_lora_tensors(
    copies: list[tuple[str, torch.Tensor]], layouts: dict[str, LoraLayout]
) -> list[tuple[str, torch.Tensor]]:
    """(name, full tensor) of a gathered bucket -> the bucket in the base model's HF names, adapters merged.

    For each LoRA layer: `<prefix>.weight` = W + s (B @ A) (computed in fp32, stored in W's dtype) and
    `<prefix>.bias` = the base bias; A and B themselves are dropped. Everything else passes through.
    """
    by_name = dict(copies)
    out: list[tuple[str, torch.Tensor]] = []
    done: set[str] = set()
    for name, t in copies:
        owner = _lora_owner(name, layouts)
        if owner is None:
            out.append((name, t))
            continue
        if owner in done:
            continue
        done.add(owner)
        lay = layouts[owner]
        w, a, b = by_name[lay.base_weight], by_name[lay.lora_a], by_name[lay.lora_b]
        delta = b.float() @ a.float()
        if lay.fan_in_fan_out:
            delta = delta.T
        out.append((f"{owner}.weight", (w.float() + lay.scaling * delta).to(w.dtype)))
        if lay.base_bias in by_name:
            out.append((f"{owner}.bias", by_name[lay.base_bias]))
    return out


def adapter_state(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a (gathered) inner-model state, under the names peft's adapter files use
    (`base_model.model.<name>` without the adapter's name: what `PeftModel.from_pretrained` reads)."""
    out = {}
    for name, t in named:
        if ".lora_A." in name or ".lora_B." in name:
            out["base_model.model." + name.replace(f".{DEFAULT_ADAPTER}.", ".")] = t
    return out


class AdapterDisabled:
    """The policy's engine with its LoRA adapter off for every call: the base (initial) model, same weights.

    It stands where the learner expects a frozen engine (teacher, KL reference): `engine(...)` runs the forward
    under `peft_model.disable_adapter()`; `module`, `device` and `parameters()` are the policy's. Every ZeRO-3
    gather it triggers is the policy's own module's, so ranks stay in step as for any other pass.
    """

    def __init__(self, engine, peft_model) -> None:
        self.engine, self.peft_model = engine, peft_model

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    @property
    def device(self):
        return self.engine.device

    def parameters(self):
        return self.engine.parameters()

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.engine(*args, **kwargs)
