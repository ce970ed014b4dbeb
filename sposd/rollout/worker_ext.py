"""vLLM worker extension: in-place weight reload driven through `LLM.collective_rpc`.

On CUDA (unquantized models) the model's own `load_weights` copies each tensor into place once. It fails on
vLLM's CPU backend (linear weights are repacked after loading and the originals emptied), so there we go through
the model runner's layerwise `reload_weights`, which re-runs the post-load processing (`loads_in_place`). The
iterator is consumed lazily, so the caller can gather and stream one bucket of parameters at a time: the whole
model never has to exist twice in memory.

Tied parameters: vLLM ties `lm_head` to `embed_tokens` by sharing one Parameter object (Qwen3-1.7B/4B). Only
the embedding's name arrives in a checkpoint, so the reload never revisits `lm_head`: it may keep the old
Parameter, and on CPU it keeps a packed-GEMM closure (`cpu_linear`) built from the old weight at load time, so
logits silently come from stale weights (measured: 0.36 nats off after one step). We record every shared
Parameter's holders before the reload, point them at the reloaded Parameter afterwards, and re-run the
post-load processing of the modules that were not reloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import Tensor, nn

# The layerwise reloader warns, on every reload, about modules that legitimately receive no checkpoint tensor
# (rotary embeddings, the tied lm_head, which `retie` handles): noise in a loop that reloads every step.
logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)


def shared_param_holders(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Groups of (module, attribute) that hold the same Parameter object; the first holder is the canonical one."""
    by_id: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, p in module.named_parameters(recurse=False):
            by_id.setdefault(id(p), []).append((module, attr))
    return [holders for holders in by_id.values() if len(holders) > 1]


def retie(groups: list[list[tuple[nn.Module, str]]]) -> None:
    """Point every holder of a group at the canonical holder's current Parameter and redo derived state."""
    for (mod0, attr0), *others in groups:
        p = getattr(mod0, attr0)
        for mod, attr in others:
            setattr(mod, attr, p)
            quant_method = getattr(mod, "quant_method", None)
            if quant_method is not None and hasattr(quant_method, "process_weights_after_loading"):
                quant_method.process_weights_after_loading(mod)


class SposdWorkerExtension:
    """Mixed into vLLM's worker class by `LLM(worker_extension_cls=...)`."""

    def sposd_reload_weights(self, weights: Iterable[tuple[str, Tensor]]) -> int:
        """Reload the model from a (name, tensor) stream in checkpoint (HF) format; returns tensors loaded."""
        count = 0
        on_cpu = self.device.type == "cpu"

        def counted():
            nonlocal count
            for name, tensor in weights:
                count += 1
                yield name, tensor if on_cpu else tensor.to(self.device, non_blocking=True)

        model = self.model_runner.get_model()
        if loads_in_place(self.device.type, self.model_runner.model_config.quantization):
            # one copy: each loader writes its tensor into the (possibly fused) parameter's storage, which CUDA
            # never repacks, so tied parameters stay tied and CUDA graphs stay valid (verl's and TRL's sync)
            model.load_weights(weights=counted())
            return count
        tied = shared_param_holders(model)
        # the worker's reload_weights wraps the runner's in set_current_vllm_config (online quantisation reads it)
        self.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
        retie(tied)
        return count


def loads_in_place(device_type: str, quantization: str | None, *, rocm: bool | None = None) -> bool:
    """Whether the worker loads synced weights with the model's own `load_weights` (one copy into the existing
    storages) rather than the layerwise reload (materialise a fresh layer, run its post-load processing, copy
    back: three copies). The layerwise reload is needed where post-load processing changes the storages: on CPU,
    XPU and ROCm (whose device type is also "cuda"; linear weights are repacked for their GEMM kernels) and for
    quantized models (GPU_AUDIT F16). `rocm` defaults to this torch build's."""
    if rocm is None:
        import torch

        rocm = torch.version.hip is not None
    return device_type == "cuda" and not rocm and quantization is None
