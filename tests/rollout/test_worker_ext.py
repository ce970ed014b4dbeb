"""Which reload the vLLM worker uses for a sync (GPU_AUDIT F16): the model's own one-copy `load_weights` only where
post-load processing leaves the storages alone (CUDA, unquantized); the layerwise reload elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sposd.rollout.worker_ext import loads_in_place, retie, shared_param_holders


@pytest.mark.parametrize(
    "device, quantization, rocm, direct",
    [
        ("cuda", None, False, True),  # bf16 / fp16 on an NVIDIA GPU: loaders copy into the existing storages
        ("cpu", None, False, False),  # the CPU backend repacks linear weights after loading
        ("cuda", "fp8", False, False),  # quantized: post-load processing rewrites the weights
        ("cuda", None, True, False),  # ROCm (device type "cuda") repacks too (vLLM's UnquantizedLinearMethod)
        ("xpu", None, False, False),
    ],
)
def test_one_copy_load_only_on_unquantized_nvidia_gpus(device, quantization, rocm, direct):
    assert loads_in_place(device, quantization, rocm=rocm) is direct


def test_retie_points_every_holder_at_the_reloaded_parameter():
    # vLLM ties lm_head to embed_tokens by sharing one Parameter; a layerwise reload replaces the embedding's
    emb, head = nn.Embedding(4, 2), nn.Linear(2, 4, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"embed": emb, "head": head})
    groups = shared_param_holders(model)
    assert groups == [[(emb, "weight"), (head, "weight")]]
    emb.weight = nn.Parameter(torch.ones(4, 2))  # what the reload leaves behind
    assert head.weight is not emb.weight
    retie(groups)
    assert head.weight is emb.weight
