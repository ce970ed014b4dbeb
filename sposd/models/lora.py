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
from pathlib import Path

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
    """The last name component of every nn.Linear in `model` but the output layer (what LoRA `targets` may name).

    The output layer is left out: the learner computes log-probs from its weight directly, in [chunk, V] blocks
    (sposd/learner/passes.py), so an adapter there would be trained by nothing and merged as a no-op.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name and m is not head
    }


def check_targets(model: nn.Module, targets: Iterable[str]) -> None:
    """Every target names a linear layer of `model`.

    Raises:
        UserError: one line naming the unknown targets and the valid ones.
    """
    from sposd.errors import UserError

    valid = linear_leaf_names(model)
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise UserError(
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


# ---- adapters on disk: checkpoints, export, evaluation -------------------------------------------------------
def read_adapter_config(adapter_dir: str | Path, *, what: str = "the adapter directory") -> dict:
    """adapter_config.json of a PEFT adapter directory (or a LoRA checkpoint's model/ folder).

    Raises:
        ValueError: one line when the file is missing or is not JSON.
    """
    import json

    f = Path(adapter_dir) / ADAPTER_CONFIG
    if not f.is_file():
        raise ValueError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}: {what} must be a PEFT adapter folder (`sposd export --adapter` "
            "writes one)"
        )
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f} is not valid JSON ({e})") from e


def adapter_base_path(adapter_dir: str | Path, base: str | None = None) -> str:
    """The base model an adapter applies to: `base` when given, else adapter_config's base_model_name_or_path.

    Raises:
        ValueError: neither names a local model folder or a hub id (owner/name).
    """
    name = base or read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base_model_name_or_path: give the base model")
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"the adapter's base model {name} is a folder without config.json")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ValueError(
            f"the adapter's base model {name!r} (from {ADAPTER_CONFIG}) does not exist: give the base model's path"
        )
    return name


def adapter_model(config_dir: str | Path, *, base: str, adapter_weights: dict[str, torch.Tensor] | None = None):
    """A PeftModel in fp32 on the CPU: `base` with the LoRA adapter described in `config_dir`.

    adapter_weights: the adapter's tensors under the inner model's names (`model.layers.0...lora_A.default.weight`,
        as a LoRA checkpoint holds them); None loads `config_dir`'s adapter_model.safetensors (a PEFT folder).

    Raises:
        ValueError: the weights do not fit the base (another model, other targets or rank).
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter_weights is None:
        try:
            return PeftModel.from_pretrained(base_model, str(config_dir))
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"the adapter in {config_dir} does not fit the base model {base}: {e}") from e
    cfg = LoraConfig.from_pretrained(str(config_dir))
    peft_model = get_peft_model(base_model, cfg)
    inner = peft_model.base_model.model
    wanted = {n for n, _ in inner.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    missing, unexpected = wanted - set(adapter_weights), set(adapter_weights) - wanted
    if missing or unexpected:
        raise ValueError(
            f"the adapter does not fit the base model {base}: missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}"
        )
    try:
        inner.load_state_dict(adapter_weights, strict=False)
    except RuntimeError as e:  # shapes: another rank or another model width
        raise ValueError(f"the adapter does not fit the base model {base}: {str(e).splitlines()[-1]}") from e
    return peft_model


def save_merged(peft_model, out_dir: str | Path, *, dtype) -> None:
    """The base model with the adapter merged in (W + s B A), as a plain Hugging Face model in `dtype`."""
    merged = peft_model.merge_and_unload()
    merged.to(dtype).save_pretrained(out_dir, safe_serialization=True)


def eval_adapter(model) -> tuple[str, str | None] | None:
    """(adapter folder, explicit base or None) when `sposd eval` is given an adapter, else None.

    `model.adapter=<folder>` evaluates that adapter on model.path; `model.path=<folder>` holding adapter_config.json
    evaluates it on the base its config names.

    Raises:
        ValueError: model.adapter is not a PEFT adapter folder (one line).
    """
    if model.adapter is not None:
        read_adapter_config(Path(model.adapter).expanduser(), what=f"model.adapter={model.adapter!r}")
        return str(Path(model.adapter).expanduser()), model.path
    p = Path(model.path).expanduser()
    if p.is_dir() and (p / ADAPTER_CONFIG).is_file():
        return str(p), None
    return None


def merge_adapter_folder(adapter_dir: str, *, base: str | None, out_dir: Path) -> str:
    """The adapter merged into its base, written to `out_dir` (atomically) with a tokenizer; returns its path.

    The tokenizer is the adapter folder's when it has one (`sposd export --adapter` writes it), else the base's.
    """
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    base_path = adapter_base_path(adapter_dir, base)
    peft_model = adapter_model(adapter_dir, base=base_path)
    dtype = getattr(AutoConfig.from_pretrained(base_path), "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_merged(peft_model, tmp, dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    except (OSError, ValueError):
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return str(out_dir)
