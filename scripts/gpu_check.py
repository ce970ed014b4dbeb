#!/usr/bin/env python
"""The learner-side GPU checks of GPU_AUDIT's last section, in one prepared script (one H200, ~10 minutes).

A random Qwen3 with 8B widths and 4 layers (V = 151,936, d 4096, MLP 12288, 32 / 8 heads, head_dim 128, untied
output layer; ~2.0 B parameters) is built on the GPU in bf16 and saved; nothing is downloaded. Then, each check
recorded in `gpu_checks.json` as it finishes (a failing check records its error and the others still run):

    f6_16k        one SSOPD `train_step` at micro_batch_tokens 16,384, gradient checkpointing: 16 completions
                  (prompt 300, lengths lognormal around 4k, capped at 8,192), two distilled rows with 8k teacher
                  contexts -> peak memory, fwd+bwd time, finite grad norm, reserved - allocated after the step
    f6_38k        one 38,912-token completion and one distilled row with a 2k context -> the same
    grad_accum    the same small batch split in micro-batches with fp32 vs bf16 gradient accumulation -> the
                  relative L2 difference of the full gradient
    offload       a 2-layer variant with offload_optimizer (DeepSpeed's CPU Adam): two steps, their times
    push_weights  sposd.sync.weights.push_weights into a stand-in engine (a plain HF model on the same GPU,
                  param.data.copy_) at 256 MB and 1 GB buckets -> GB/s
and, when `scripts/gpu_check_launch.py` is present, its `run(results, tmp, device)` (launch and colocation).

    python scripts/gpu_check.py                    # on the GPU machine (deepspeed, hydra, omegaconf carried)
    python scripts/gpu_check.py --dry-run          # the same code on CPU at tiny sizes, fp32: does it run?

`--out DIR` is where gpu_checks.json goes ($OUT on the device machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL = dict(hidden=4096, mlp=12288, heads=32, kv=8, head_dim=128, layers=4, vocab=151_936)
TINY = dict(hidden=64, mlp=128, heads=2, kv=1, head_dim=32, layers=2, vocab=151_936)


class Optim:
    lr, weight_decay, betas, eps = 1e-6, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


def build_model(out: Path, shape: dict, *, layers: int, device: str, dtype: str) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        head_dim=shape["head_dim"],
        max_position_embeddings=40_960,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out)
    del model
    return out


def algo(name: str):
    from hydra import compose, initialize_config_dir

    from sposd.algos import get_algo
    from sposd.config import register_configs, register_resolvers, to_object

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_object(compose("train", overrides=["hardware=cpu", f"algo={name}"])).algo
    return get_algo(cfg.name)(cfg)


def learner(model: Path, a, args, **kw):
    from sposd.learner.learner import DeepSpeedLearner

    base = dict(
        total_steps=10,
        device=args.device,
        dtype=args.dtype,
        zero_stage=3,
        pad_id=0,
        micro_batch_tokens=args.s(16_384),
        gradient_checkpointing=True,
    )
    return DeepSpeedLearner(str(model), algo=a, optim=Optim, **{**base, **kw})


def samples(lengths: list[int], contexts: dict[int, int], *, prompt: int, vocab: int, seed: int = 0):
    """Completions of the given lengths; row i in `contexts` is distilled with a teacher context of that length."""
    import torch

    from sposd.learner.batching import LearnerSample

    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    out = []
    for i, T in enumerate(lengths):
        ctx = contexts.get(i)
        out.append(
            LearnerSample(
                ids(prompt),
                ids(T),
                1.0 if i % 2 else -1.0,
                teacher_prompt_ids=ids(ctx) if ctx else None,
                distill_weight=1.0 if ctx else 0.0,
                distill_len=T if ctx else 0,
                distill_units=1.0 if ctx else 0.0,
            )
        )
    return out


def step_report(lrn, batch, max_len: int) -> dict:
    import torch

    t0 = time.perf_counter()
    m = lrn.train_step(batch, max_len=max_len)
    out = {"wall_s": time.perf_counter() - t0, **{k: m[k] for k in m if k.startswith(("mem/", "time/", "actor/"))}}
    out["grad_norm_finite"] = math.isfinite(m.get("actor/grad_norm", float("nan")))
    if torch.cuda.is_available():
        out["reserved_minus_allocated_gb"] = (torch.cuda.memory_reserved() - torch.cuda.memory_allocated()) / 2**30
        out["max_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def check_f6_16k(args, model):
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = [int(min(args.s(8192), max(16, x))) for x in rng.lognormal(math.log(args.s(4096)), 0.7, 16)]
    lrn = learner(model, algo("ssopd"), args)
    batch = samples(lengths, {0: args.s(8192), 1: args.s(8192)}, prompt=args.s(300), vocab=args.vocab)
    return {"lengths": lengths, **step_report(lrn, batch, max(lengths))}


def check_f6_38k(args, model):
    lrn = learner(model, algo("ssopd"), args)
    T = args.s(38_912)
    batch = samples([T, args.s(2048)], {1: args.s(2048)}, prompt=args.s(300), vocab=args.vocab)
    return step_report(lrn, batch, T)


def full_grads(lrn, batch, max_len):
    from deepspeed.utils import safe_get_full_grad

    grads, step = {}, lrn.engine.step

    def capture_then_step():
        if lrn.engine.is_gradient_accumulation_boundary():
            grads.update({n: safe_get_full_grad(p).float().cpu() for n, p in lrn.module.named_parameters()})
        step()

    lrn.engine.step = capture_then_step
    lrn.train_step(batch, max_len=max_len)
    lrn.engine.step = step
    return grads


def check_grad_accum(args, model):
    import torch

    batch = samples([args.s(2048)] * 16, {}, prompt=args.s(300), vocab=args.vocab)
    res = {}
    for fp32 in (True, False):
        lrn = learner(model, algo("grpo"), args, micro_batch_tokens=args.s(4096), fp32_grad_accum=fp32)
        res[fp32] = full_grads(lrn, batch, args.s(2048))
        del lrn
        gc.collect()
    num = sum(float((res[True][n] - res[False][n]).pow(2).sum()) for n in res[True])
    den = sum(float(res[True][n].pow(2).sum()) for n in res[True])
    return {
        "micro_batches": 16 * (args.s(2048) + args.s(300)) // args.s(4096),
        "rel_l2_bf16_vs_fp32": math.sqrt(num / max(den, 1e-30)),
        "torch": torch.__version__,
    }


def check_offload(args, model2):
    batch = samples([args.s(1024)] * 4, {}, prompt=args.s(300), vocab=args.vocab)
    t0 = time.perf_counter()
    lrn = learner(model2, algo("grpo"), args, offload_optimizer=True)
    out = {"init_s": time.perf_counter() - t0}
    out["steps"] = [step_report(lrn, batch, args.s(1024)) for _ in range(2)]
    return out


def check_push_weights(args, model):
    import torch
    from transformers import AutoModelForCausalLM

    from sposd.sync.weights import push_weights

    lrn = learner(model, algo("grpo"), args)
    dtype = getattr(torch, args.dtype)
    plain = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(args.device)
    params = dict(plain.named_parameters())

    class Stub:
        def load_weights(self, named):
            for n, t in named:
                assert t.device.type == args.device and t.dtype == dtype, (n, t.device, t.dtype)
                params[n].data.copy_(t)

    out = {}
    for mb in (256, 1024):
        push_weights(lrn.module, Stub(), bucket_bytes=mb << 20)  # warm
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out[f"{mb}MB"] = push_weights(lrn.module, Stub(), bucket_bytes=mb << 20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, fp32, tiny widths and lengths")
    ap.add_argument("--out", default=".", help="folder for gpu_checks.json")
    ap.add_argument("--only", nargs="*", help="run only these checks")
    args = ap.parse_args()
    args.device = "cpu" if args.dry_run else "cuda"
    args.dtype = "float32" if args.dry_run else "bfloat16"
    shape = TINY if args.dry_run else FULL
    args.vocab = shape["vocab"]
    args.s = (lambda n: max(8, n // 256)) if args.dry_run else (lambda n: n)

    from sposd import dist as sdist

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"dry_run": args.dry_run, "shape": shape}

    def save():
        (out / "gpu_checks.json").write_text(json.dumps(results, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as d:
        tmp = Path(d)
        sdist.init_distributed(args.device)
        t0 = time.perf_counter()
        model = build_model(tmp / "q8b4l", shape, layers=shape["layers"], device=args.device, dtype=args.dtype)
        model2 = build_model(tmp / "q8b2l", shape, layers=2, device=args.device, dtype=args.dtype)
        results["build_s"] = time.perf_counter() - t0
        checks = {
            "f6_16k": lambda: check_f6_16k(args, model),
            "f6_38k": lambda: check_f6_38k(args, model),
            "grad_accum": lambda: check_grad_accum(args, model),
            "offload": lambda: check_offload(args, model2),
            "push_weights": lambda: check_push_weights(args, model),
        }
        for name, fn in checks.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            try:
                results[name] = fn()
            except Exception as e:  # a check that fails is a finding: record it, run the rest
                results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            results[name]["check_s"] = time.perf_counter() - t0
            print(f"[gpu_check] {name}: {json.dumps(results[name], default=str)[:400]}", flush=True)
            gc.collect()
            save()
        if (REPO / "scripts" / "gpu_check_launch.py").exists() and not args.only:
            sys.path.insert(0, str(REPO / "scripts"))
            import gpu_check_launch

            try:
                gpu_check_launch.run(results, tmp, args.device)
            except Exception as e:
                results["launch"] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            save()
    save()
    print(json.dumps({k: ("error" not in v) if isinstance(v, dict) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
