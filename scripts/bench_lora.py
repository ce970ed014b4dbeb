#!/usr/bin/env python
"""LoRA vs full fine-tuning of the learner: trainable parameters, checkpoint size, step time, memory, sync time.

Two models, built from a config (nothing is downloaded), fp32 on the CPU, DeepSpeed ZeRO-3 on one gloo rank:
- toy:   the embedded tiny Qwen3 (hidden 64, 4 layers, V 192, tied embeddings), as `sposd train` uses it;
- qwen3: Qwen3-0.6B's shape cut to 4 layers: hidden 1024, 16 heads of 128 (8 KV), MLP 3072, V = 151,936,
         tied embeddings as in Qwen3-0.6B (~0.22 B parameters, 0.87 GB in fp32; full fine-tuning with Adam, its
         fp32 master and the teacher's copy needs ~5 GB, about what a shared 24 GB CPU machine can spare).
The algorithm is OPSD with its fixed teacher (`teacher: initial`): full fine-tuning builds a frozen copy of the
starting weights for it; LoRA (on q, k, v, o, gate, up, down; r 64, alpha 128 on qwen3: the OPSD recipe's; r 8,
alpha 16 on the 64-wide toy, where r 64 would out-size the model) runs the same module with the adapter off.
Each (model, mode) runs in a fresh process; reported per case:
- trainable_params: what the optimizer holds;
- ckpt_mb: the size of `learner.save_state` (DeepSpeed's policy/ shards: parameters, Adam's moments, fp32 master);
- rss_after_build_gb: the process's resident memory once the learner (and its teacher) exist;
- step_s: the median wall time of `train_step` over --steps steps after one warm-up step (4 completions of --T
  tokens, each with a teacher context); step_peak_gb: the largest `mem/learn_peak_gb` of those steps (the
  step's new resident memory on top of what was resident);
- sync_s: one full weight stream as the trainer sends it to vLLM (`iter_gathered_params`: ZeRO-3 gathers, and for
  LoRA the per-layer merge W + s B A) into a sink that drops each tensor; vLLM's own reload is the same for both
  modes (it receives a plain model either way) and is not included. sync_gb: the bytes streamed.

    python scripts/bench_lora.py --json            # both models, T = 256, 3 measured steps
    python scripts/bench_lora.py --models toy --T 64 --steps 2

On a shared machine wall times move with the other jobs: compare the two modes of one model, run back to back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT, CONTEXT = 32, 96


def build_model(kind: str, out: Path) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if kind == "toy":
        from sposd.models.tiny import build_tiny_model

        return build_tiny_model(out, seed=0)
    cfg = Qwen3Config(vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    return out


def learner_width(model: str) -> int:
    return json.loads((Path(model) / "config.json").read_text())["hidden_size"]


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_case(model: str, mode: str, T: int, steps: int, tmp: str) -> dict:
    """Build the learner in this (fresh) process, train, checkpoint and stream; returns the numbers."""
    import torch

    from sposd.algos import get_algo
    from sposd.config import LoraCfg
    from sposd.learner.batching import LearnerSample
    from sposd.learner.learner import DeepSpeedLearner
    from sposd.plan import compose_train_cfg
    from sposd.sync.weights import iter_gathered_params

    cfg = compose_train_cfg(["hardware=cpu", "algo=opsd"]).algo
    assert cfg.distill.teacher == "initial"

    class Optim:
        lr, weight_decay, betas, eps = 1e-5, 0.0, [0.9, 0.999], 1e-8
        warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0

    rank = 8 if learner_width(model) <= 128 else 64  # the toy is 64 wide: r 64 would out-size the model itself
    lora = LoraCfg(rank=rank, alpha=2 * rank) if mode == "lora" else None
    torch.manual_seed(0)
    learner = DeepSpeedLearner(model, algo=get_algo("opsd")(cfg), optim=Optim, total_steps=steps + 1, device="cpu",
                               dtype="float32", zero_stage=3, micro_batch_tokens=1 << 16, pad_id=0, lora=lora,
                               share_prompts=False)  # every sample has its own prompt here: nothing to share
    rss_built = _rss_gb()
    V = learner.module.config.vocab_size
    g = torch.Generator().manual_seed(0)

    def sample() -> LearnerSample:
        ids = lambda n: torch.randint(3, V, (n,), generator=g).tolist()  # noqa: E731
        return LearnerSample(ids(PROMPT), ids(T), 0.0, teacher_prompt_ids=ids(CONTEXT), distill_weight=1.0,
                             distill_len=T, distill_units=float(T))

    learner.train_step([sample() for _ in range(4)], max_len=T)  # warm-up: optimizer state, lazy imports
    times, peaks = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        m = learner.train_step([sample() for _ in range(4)], max_len=T)
        times.append(time.perf_counter() - t0)
        peaks.append(m.get("mem/learn_peak_gb") or 0.0)
    ckpt = Path(tmp) / f"ckpt_{mode}"
    ckpt.mkdir()
    learner.save_state(ckpt)
    ckpt_mb = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20
    t0 = time.perf_counter()
    n_bytes = sum(t.numel() * t.element_size() for _, t in iter_gathered_params(learner.module))
    sync_s = time.perf_counter() - t0
    return {
        "trainable_params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                                for p in learner.module.parameters() if p.requires_grad),
        "total_params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in learner.module.parameters()),
        "ckpt_mb": round(ckpt_mb, 2),
        "rss_after_build_gb": round(rss_built, 3),
        "step_s": round(statistics.median(times), 3),
        "step_peak_gb": round(max(peaks), 3),
        "sync_s": round(sync_s, 3),
        "sync_gb": round(n_bytes / 1e9, 3),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        model, mode, T, steps, tmp = sys.argv[2:]
        print(json.dumps(run_case(model, mode, int(T), int(steps), tmp)), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["toy", "qwen3"], choices=["toy", "qwen3"])
    ap.add_argument("--T", type=int, default=256, help="completion tokens per sample (4 samples per step)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as d:
        for kind in args.models:
            model = build_model(kind, Path(d) / kind)
            results[kind] = {}
            for mode in ("full", "lora"):
                case_tmp = Path(d) / f"{kind}_{mode}"
                case_tmp.mkdir()
                cmd = [sys.executable, __file__, "--_child", str(model), mode, str(args.T), str(args.steps),
                       str(case_tmp)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"{kind} {mode} failed:\n{p.stderr[-3000:]}")
                results[kind][mode] = r = json.loads(p.stdout.strip().splitlines()[-1])
                print(f"{kind:6s} {mode:5s} " + " ".join(f"{k}={v}" for k, v in r.items()), flush=True)
            full, lora = results[kind]["full"], results[kind]["lora"]
            results[kind]["lora_over_full"] = {
                k: round(lora[k] / full[k], 4) if full[k] else None
                for k in ("trainable_params", "ckpt_mb", "rss_after_build_gb", "step_s", "step_peak_gb", "sync_s")
            }
    out = {"T": args.T, "steps": args.steps, "lora": {"toy": "r 8, alpha 16", "qwen3": "r 64, alpha 128"},
           "device": "cpu", "dtype": "float32",
           "results": results}
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
