#!/usr/bin/env python
"""TIP's peak learner memory at several retention ratios, on one batch, with the real DeepSpeed learner.

A synthetic Qwen3-architecture model with a real-size vocabulary (default V = 151,936, Qwen3's; 2 small layers, so
the output layer's [T, V] work dominates) and one batch of D rows (a T-token completion each, a teacher context
longer than the student's prompt) go through `DeepSpeedLearner.train_step` with `algo=tip` (no RL term, the
teacher = the policy under no_grad) at each --ratios value, and with `algo=opsd` (the same reverse KL on every
position through dense logits) as the reference. Each configuration runs in a fresh subprocess: one warm-up step,
then the measured step, on the same batch.

Peak learner memory = the peak resident set during the measured `train_step` minus the resident set just before it
(CPU: the kernel's VmHWM, reset through /proc/self/clear_refs, with MALLOC_MMAP_THRESHOLD_ so freed blocks return to
the OS; CUDA: the allocator's peak). It covers the token pre-pass (statistics on hidden states, [chunk, V] blocks),
the forwards, the divergence at the kept positions and the backward.

    python scripts/bench_tip.py                               # D = 2, T = 512, V = 151,936, ratios 1 .5 .1
    python scripts/bench_tip.py --rows 2 --T 256 --V 32768 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_model(out: Path, *, V: int, hidden: int, layers: int) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    return out


def batch(*, rows: int, T: int, V: int):
    import torch

    from sposd.learner.batching import LearnerSample

    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(rows):
        prompt = torch.randint(3, V, (16,), generator=g).tolist()
        teacher = prompt + torch.randint(3, V, (48,), generator=g).tolist()
        completion = torch.randint(3, V, (T,), generator=g).tolist()
        out.append(
            LearnerSample(
                prompt,
                completion,
                0.0,
                teacher_prompt_ids=teacher,
                distill_weight=1.0,
                distill_len=T,
                distill_units=float(T),
            )
        )
    return out


def measure(args) -> dict:
    """In this process: build the learner, one warm-up step, then the measured step."""
    import torch

    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg, DistillCfg, TipCfg
    from sposd.learner.learner import DeepSpeedLearner

    if args.threads:
        torch.set_num_threads(args.threads)
    d = dict(
        coef=1.0,
        context="reference_solution",
        teacher="current",
        divergence="rkl",
        normalize="token_mean",
        chunk_tokens=args.chunk_tokens,
    )
    if args._ratio == "dense":
        cfg = AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, dual_clip_c=None, distill=DistillCfg(**d))
    else:
        cfg = AlgoCfg(
            name="tip",
            group_size=1,
            rl_coef=0.0,
            dual_clip_c=None,
            distill=DistillCfg(**d, select="tip", tip=TipCfg(ratio=float(args._ratio))),
        )
    optim = type(
        "Optim",
        (),
        dict(
            lr=1e-4,
            weight_decay=0.0,
            betas=[0.9, 0.999],
            eps=1e-8,
            warmup_steps=0,
            schedule="constant",
            min_lr_ratio=0.0,
            grad_clip=1.0,
        ),
    )
    learner = DeepSpeedLearner(
        args._model,
        algo=get_algo(cfg.name)(cfg),
        optim=optim,
        total_steps=4,
        device=args.device,
        dtype=args.dtype,
        zero_stage=3,
        micro_batch_tokens=1 << 30,
        pad_id=0,
    )
    samples = batch(rows=args.rows, T=args.T, V=args.V)
    learner.train_step(samples, max_len=args.T)  # warm-up: allocator pools, DeepSpeed buffers
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM <- current RSS
        base = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    m = learner.train_step(samples, max_len=args.T)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_kb("VmHWM") * 1024 - base
    return {
        "peak_gb": peak / 2**30,
        "step_s": time.perf_counter() - t0,
        "kept_tokens": m["distill/tokens"],
        "positions": m.get("distill/positions", m["distill/tokens"]),
        "loss_distill": m["loss/distill"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2, help="D distilled rows in the batch")
    ap.add_argument("--T", type=int, default=512, help="completion tokens per row")
    ap.add_argument("--V", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.1])
    ap.add_argument(
        "--chunk-tokens",
        type=int,
        default=64,
        help="algo.distill.chunk_tokens: positions per [chunk, V] block (the fixed working memory)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense-logits reference run")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--_child", dest="_ratio", help=argparse.SUPPRESS)
    ap.add_argument("--_model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._ratio is not None:
        print(json.dumps(measure(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench_tip_") as tmp:
        model = build_model(Path(tmp) / "model", V=args.V, hidden=args.hidden, layers=args.layers)
        runs = [str(r) for r in args.ratios] + ([] if args.no_dense else ["dense"])
        res = {}
        for r in runs:
            cmd = [sys.executable, __file__, "--_child", r, "--_model", str(model)]
            for flag in ("rows", "T", "V", "dtype", "device", "threads", "chunk_tokens"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            env = {
                **os.environ,
                "MALLOC_MMAP_THRESHOLD_": "65536",
                "PYTHONPATH": str(REPO),
                "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if args.device == "cpu" else "cuda"),
            }
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode:
                raise SystemExit(f"ratio {r} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
            res[r] = json.loads(p.stdout.strip().splitlines()[-1])
            name = "dense logits (OPSD, rkl, every position)" if r == "dense" else f"TIP retention {float(r):.2f}"
            x = res[r]
            print(
                f"{name:42s} peak {x['peak_gb']:6.3f} GiB  step {x['step_s']:6.2f} s  "
                f"kept {x['kept_tokens']:.0f}/{x['positions']:.0f} positions",
                flush=True,
            )
    unit = args.rows * args.T * args.V * 4 / 2**30
    print(
        f"(one fp32 [D, T, V] tensor = {unit:.3f} GiB; D = {args.rows}, T = {args.T}, V = {args.V}, "
        f"chunk {args.chunk_tokens} positions, {args.device})"
    )
    if args.json:
        keys = ("rows", "T", "V", "device", "dtype", "chunk_tokens")
        print(json.dumps({**{k: getattr(args, k) for k in keys}, "fp32_DTV_gb": unit, "runs": res}))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
