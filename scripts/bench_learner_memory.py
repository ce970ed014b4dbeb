#!/usr/bin/env python
"""Peak learner memory and time of one `train_step` on hidden states vs the dense logits path, V = 151,936.

A 2-layer Qwen3-shaped model (Qwen3's vocabulary, untied output layer, a small width so the logits dominate, as
they do at 8B with long completions), DeepSpeed ZeRO-3 on one gloo rank, fp32. For each algorithm (GRPO: the
clipped surrogate on the token log-probs; SSOPD: that plus the full-vocabulary JSD to the current policy under a
teacher context) and each completion length T, one completion of T tokens is trained on by
- the new path (the product: logits only in [chunk, V] blocks from final hidden states), and
- the dense reference kept here (and in the tests) only: the logits h W^T + b materialised as [rows, T, V] with
  grad, log-probs and divergences by the ops' dense code, the output layer differentiated by autograd,
each in a fresh process, after a 16-token warm-up step (the optimizer state and lazily imported code are not the
passes' cost). The peak is the growth of the process's peak resident set during the measured `train_step`
(`PeakMemory`): the [chunk, V] blocks and [rows, T, V] tensors are far above glibc's mmap threshold, so they
come from fresh pages and count fully, which a long-running process would not guarantee. Reported per case:
that peak, the step's wall time, and, between the two paths on the same batch, the largest |loss difference|
and |gradient difference| (the full gradient of every parameter read before the optimiser step).

    python scripts/bench_learner_memory.py                 # T = 1k, 2k, 4k, 8k; GRPO and SSOPD
    python scripts/bench_learner_memory.py --quick --json  # the largest T only

The dense path at 8k tokens needs ~14 GB (GRPO) to ~28 GB (SSOPD) of fp32 logits and gradients: a dense case
whose estimate (`dense_need_gb`) exceeds 80% of the memory available is skipped and said so; `peak_ratio` is then
taken at the largest T where both paths ran (`peak_ratio_T`). Wall times grow when other jobs share the
cores: compare ratios, measured back to back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
V = 151_936
PROMPT, CONTEXT = 32, 96  # student prompt and teacher context tokens


def build_model(out: Path, hidden: int) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 64),
        head_dim=32,
        max_position_embeddings=16_384,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    return out


def dense_reference() -> None:
    """Replace the passes' hidden-state logits by materialised [rows, T, V] logits (the old path)."""
    import torch

    from sposd.learner import passes
    from sposd.ops.logprobs import token_logprobs

    def logits_of(hidden, weight, bias):
        return torch.nn.functional.linear(hidden, weight, bias)

    def completion_logprobs(S, tokens_BT, lengths_B, *, temperature, chunk):
        valid_BT = torch.arange(tokens_BT.shape[1], device=tokens_BT.device)[None] < lengths_B[:, None]
        return token_logprobs(S, tokens_BT, temperature=temperature, chunk_tokens=chunk) * valid_BT

    passes.logits_of = logits_of
    passes.completion_logprobs = completion_logprobs


def run_case(model: str, algo_name: str, T: int, mode: str, out: str) -> dict:
    """One train_step in this (fresh) process; writes the gradients to `out`, returns the numbers."""
    import torch
    from deepspeed.utils import safe_get_full_grad
    from hydra import compose, initialize_config_dir

    from sposd.algos import get_algo
    from sposd.config import register_configs, register_resolvers, to_object
    from sposd.learner.batching import LearnerSample
    from sposd.learner.learner import DeepSpeedLearner

    if mode == "dense":
        dense_reference()
    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_object(compose("train", overrides=["hardware=cpu", f"algo={algo_name}"])).algo
    algo = get_algo(cfg.name)(cfg)

    class Optim:
        lr, weight_decay, betas, eps = 0.0, 0.0, [0.9, 0.999], 1e-8
        warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0

    learner = DeepSpeedLearner(
        model,
        algo=algo,
        optim=Optim,
        total_steps=1,
        device="cpu",
        dtype="float32",
        zero_stage=3,
        micro_batch_tokens=1 << 20,
        pad_id=0,
    )

    def sample_of(T: int) -> LearnerSample:
        g = torch.Generator().manual_seed(T)
        comp = torch.randint(1, V, (T,), generator=g).tolist()
        prompt = torch.randint(1, V, (PROMPT,), generator=g).tolist()
        distil = cfg.distill.enabled
        return LearnerSample(
            prompt,
            comp,
            1.0,
            teacher_prompt_ids=torch.randint(1, V, (CONTEXT,), generator=g).tolist() if distil else None,
            distill_weight=1.0 if distil else 0.0,
            distill_len=T if distil else 0,
            distill_units=1.0 if distil else 0.0,
        )

    # a short warm-up step first: the optimizer's state and lazily imported code are not the passes' cost
    learner.train_step([sample_of(16)], max_len=16)
    sample = sample_of(T)
    grads: dict = {}
    step = learner.engine.step

    def capture_then_step():
        if learner.engine.is_gradient_accumulation_boundary():
            grads.update({n: safe_get_full_grad(p).clone() for n, p in learner.module.named_parameters()})
        step()

    learner.engine.step = capture_then_step
    t0 = time.perf_counter()
    m = learner.train_step([sample], max_len=T)
    wall = time.perf_counter() - t0
    torch.save(grads, out)
    return {"peak_gb": m.get("mem/learn_peak_gb"), "time_s": wall, "loss": m["loss/total"]}


def child(argv: list[str]) -> None:
    model, algo, T, mode, out = argv
    print(json.dumps(run_case(model, algo, int(T), mode, out)), flush=True)


def dense_need_gb(algo: str, T: int, last: tuple[int, float] | None) -> float:
    """The dense case's expected peak: scaled from the last measured T, else 3 (GRPO: logits, their gradient, a
    copy) or 6 (with a teacher: its logits and the divergence's gradient too) fp32 [T, V] tensors."""
    if last:
        return last[1] * T / last[0]
    return (6 if algo != "grpo" else 3) * T * V * 4 / 2**30


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def spawn(model: Path, algo: str, T: int, mode: str, tmp: Path) -> dict:
    out = tmp / f"{algo}_{T}_{mode}.pt"
    cmd = [sys.executable, __file__, "--_child", str(model), algo, str(T), mode, str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{algo} T={T} {mode} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["grads"] = out
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="completion lengths")
    ap.add_argument("--algos", nargs="+", default=["grpo", "ssopd"])
    ap.add_argument("--hidden", type=int, default=64, help="model width (2 layers, V = 151,936)")
    ap.add_argument("--quick", action="store_true", help="the largest T only")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    Ts = [max(args.T)] if args.quick else sorted(args.T)

    import torch

    rows: dict[int, dict[str, dict]] = {}
    worst_grad = worst_loss = 0.0
    with tempfile.TemporaryDirectory(prefix="bench_learner_mem_") as d:
        tmp = Path(d)
        model = build_model(tmp / "model", args.hidden)
        last_dense: dict[str, tuple[int, float]] = {}
        for T in Ts:
            rows[T] = {}
            for algo in args.algos:
                new = spawn(model, algo, T, "new", tmp)
                r = {"new_gb": new["peak_gb"], "new_s": round(new["time_s"], 2)}
                need = dense_need_gb(algo, T, last_dense.get(algo))
                if need > 0.8 * mem_available_gb():
                    r["dense"] = f"skipped: needs ~{need:.0f} GB, {mem_available_gb():.0f} GB available"
                else:
                    dense = spawn(model, algo, T, "dense", tmp)
                    last_dense[algo] = (T, dense["peak_gb"] or 0.0)
                    g_new, g_dense = torch.load(new["grads"]), torch.load(dense["grads"])
                    diff = max((g_new[n] - g_dense[n]).abs().max().item() for n in g_new)
                    worst_grad = max(worst_grad, diff)
                    worst_loss = max(worst_loss, abs(new["loss"] - dense["loss"]))
                    r.update(
                        dense_gb=dense["peak_gb"],
                        dense_s=round(dense["time_s"], 2),
                        peak_ratio=round(new["peak_gb"] / dense["peak_gb"], 4),
                        time_ratio=round(new["time_s"] / dense["time_s"], 3),
                        max_abs_diff_grad=diff,
                        abs_diff_loss=abs(new["loss"] - dense["loss"]),
                    )
                rows[T][algo] = r
                print(f"[bench] T={T} {algo}: {r}", flush=True)
    both = [T for T in Ts if all("peak_ratio" in rows[T][a] for a in args.algos)]
    at = max(both) if both else None
    summary = {
        "V": V,
        "hidden": args.hidden,
        "peak_ratio": max(rows[at][a]["peak_ratio"] for a in args.algos) if at else None,
        "peak_ratio_T": at,
        "time_ratio": max(rows[at][a]["time_ratio"] for a in args.algos) if at else None,
        "max_abs_diff_grad": worst_grad,
        "max_abs_diff_loss": worst_loss,
        "peak_gb": {
            T: {a: {"new": rows[T][a]["new_gb"], "dense": rows[T][a].get("dense_gb")} for a in rows[T]} for T in rows
        },
        "cases": rows,
    }
    print(
        f"[bench] peak_ratio {summary['peak_ratio']} at T={at}, time_ratio {summary['time_ratio']}, "
        f"max |grad diff| {worst_grad:.2e}, max |loss diff| {worst_loss:.2e}"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
