"""Learner -> rollout engine weight sync, bucketed so the full model is never materialised at once.

Under ZeRO-3 every rank holds 1/world of each parameter. All ranks walk the parameters in the same order,
all-gather one bucket (`bucket_bytes` of full tensors) at a time and hand copies to their own engine, which
consumes the stream lazily inside a single in-place reload. Peak extra memory is one bucket (+ one copy).

A LoRA policy (`sposd.models.lora`) streams merged weights: a wrapped layer's base weight, A and B are gathered in
the same bucket and leave as one tensor W + s B A under the base model's name, so vLLM (and a Hugging Face
export) sees a plain model and samples at full speed; the merge costs one [out, r] x [r, in] product per layer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn

Named = list[tuple[str, nn.Parameter]]


def _buckets(units: list[Named], bucket_bytes: int) -> Iterator[Named]:
    """Consecutive units (parameters that must travel together) packed into buckets of about `bucket_bytes`."""
    bucket, size = [], 0
    for unit in units:
        nbytes = sum((p.ds_numel if hasattr(p, "ds_numel") else p.numel()) * p.element_size() for _, p in unit)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.extend(unit)
        size += nbytes
    if bucket:
        yield bucket


def iter_gathered_params(
    model: nn.Module, *, bucket_bytes: int = 256 << 20, stats: dict | None = None, copy: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) for every parameter, gathering ZeRO-3 shards bucket by bucket.

    Every rank must exhaust this iterator (the gathers are collectives). Tied parameters appear once, under
    the name HF checkpoints use, which is what vLLM's `load_weights` expects. LoRA layers leave merged.

    Args:
        copy: yield copies, valid after the next bucket is gathered. False yields the gathered tensors themselves
            while their gather is open: only for a consumer that copies each tensor before asking for the next
            (vLLM's one-copy `load_weights` on CUDA: `sposd.rollout.worker_ext.loads_in_place`), one copy fewer.
    """
    import deepspeed

    from sposd.models.lora import lora_layouts, merge_lora_tensors, sync_units

    named = list(model.named_parameters())
    layouts = lora_layouts(model)
    n_bytes, n_buckets = 0, 0
    for bucket in _buckets(sync_units(named, layouts), bucket_bytes):
        params = [p for _, p in bucket]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if not copy:  # the consumer copies each tensor now, while the gather holds it
                views = [(name, p.data.detach()) for name, p in bucket]
                n_buckets += 1
                for name, t in merge_lora_tensors(views, layouts) if layouts else views:
                    n_bytes += t.numel() * t.element_size()
                    yield name, t
                continue
            # Copy inside the context: gathered params may be views into a buffer reused by the next gather.
            copies = [(name, p.data.detach().clone()) for name, p in bucket]
        if layouts:
            copies = merge_lora_tensors(copies, layouts)
        n_buckets += 1
        for name, t in copies:
            n_bytes += t.numel() * t.element_size()
            yield name, t
        del copies
    if stats is not None:
        stats.update(bytes=n_bytes, buckets=n_buckets)


def push_weights(model: nn.Module, engine, *, bucket_bytes: int = 256 << 20) -> dict[str, float]:
    """Stream the learner's current weights into `engine.load_weights`; returns timing/size metrics. An engine whose
    `loads_in_place` is true gets the gathered tensors without a copy (`iter_gathered_params(copy=False)`)."""
    t0 = time.perf_counter()
    stats: dict = {}
    copy = not getattr(engine, "loads_in_place", False)
    engine.load_weights(iter_gathered_params(model, bucket_bytes=bucket_bytes, stats=stats, copy=copy))
    dt = time.perf_counter() - t0
    return {
        "sync/gb": stats.get("bytes", 0) / 1e9,
        "sync/buckets": stats.get("buckets", 0),
        "sync/gb_per_s": stats.get("bytes", 0) / 1e9 / max(dt, 1e-9),
    }
