#!/usr/bin/env python
"""Seconds per GRPO step of sposd and of TRL's GRPOTrainer on the same job, run interleaved; prints the ratio.

The job (the embedded default's): the warm-started toy model, the toy task's prompts in the order sposd's sampler
draws them (seed 0), 16 prompts x 8 completions per step, 48 new tokens, temperature 1, one optimiser step per
batch, clip 0.2 / 0.28, token-mean loss, AdamW lr 1e-4 with sposd's warm-up, fp32, no gradient checkpointing.
TRL (the optional `bench` extra: `pip install -e .[bench]`) runs its default HF `generate` path.

    python scripts/bench_vs_trl.py --reps 3 --steps 12 --json

Each repetition runs every arm, each in a fresh process, in alternating order (sposd ... TRL, then TRL ... sposd) so
a drift of the host's speed spreads over both; the first 2 steps of every run are warm-up. The ratio is sposd / TRL of
the median step times (< 1: sposd is faster). Each arm's CPU time per step (all threads of its process; sposd's
verifier workers are separate processes and not counted, about 0.05 s/step) is printed beside it: on a busy machine
the wall-time ratio is inflated by whichever arm a neighbour overlaps, the CPU-time ratio much less. Each arm's wall
time outside its steps (start-up, vLLM's compilation, teardown) is in the JSON (`<arm>_outside_s`).
`--sposd` adds overrides to the sposd arm; `--variant LABEL:override,...` adds another sposd arm to every repetition
(e.g. `--variant unshared:hardware.share_prompts=false --variant compiled:hardware.vllm_enforce_eager=false`).
`--threads N` gives every arm N torch / OpenMP threads (default 2, the machine's cores). With other jobs on the
machine use `--threads 1` and read the CPU-time ratio: with more threads than free cores, idle OpenMP threads spin
while a neighbour holds a core, which inflates CPU time as well as wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 2
GROUP, PROMPTS, NEW_TOKENS, LR, SEED = 8, 16, 48, 1e-4, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default=None, help="HF model dir (default: the embedded default's warm-started model)")
    ap.add_argument("--sposd", nargs="*", default=[], help="extra Hydra overrides for the sposd arm")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="another sposd arm, LABEL:override[,override...] (e.g. unshared:hardware.share_prompts=false)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each arm")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)  # internal: run the TRL arm into this dir
    args = ap.parse_args()
    if args.steps <= WARMUP:
        sys.exit(f"--steps must be > {WARMUP} (the first {WARMUP} steps are warm-up)")
    if args.trl_worker:
        return trl_worker(Path(args.trl_worker), model=args.model, steps=args.steps, threads=args.threads)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed: pip install -e '.[bench]' (the optional `bench` extra)")
    model = args.model or toy_model()
    work = Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    write_prompts(model, work / "prompts.jsonl", steps=args.steps)
    arms = {"sposd": args.sposd} | {label: [*args.sposd, *ov] for label, ov in map(_variant, args.variant)}
    reps = []
    for rep in range(args.reps):
        names = [*arms, "trl"]
        order = names if rep % 2 == 0 else names[::-1]
        got = {
            name: run_trl(model, work / f"trl_{rep}", steps=args.steps, threads=args.threads)
            if name == "trl"
            else run_sposd(model, work / f"{name}_{rep}", steps=args.steps, extra=arms[name], threads=args.threads)
            for name in order
        }
        trl_s, trl_cpu, trl_outside = got["trl"]
        r = {"rep": rep + 1, "order": order, "trl_s": trl_s, "trl_cpu_s": trl_cpu, "trl_outside_s": trl_outside}
        line = []
        for name in arms:
            wall, cpu, outside = got[name]
            r |= {
                f"{name}_s": wall,
                f"{name}_cpu_s": cpu,
                f"{name}_outside_s": outside,
                f"{name}_ratio": wall / trl_s,
                f"{name}_cpu_ratio": cpu / trl_cpu,
            }
            line.append(f"{name} {wall:.3f} s/step ({cpu:.2f} CPU-s; /TRL {wall / trl_s:.2f}, CPU {cpu / trl_cpu:.2f})")
        reps.append(r)
        print(f"rep {rep + 1} ({' > '.join(order)}): TRL {trl_s:.3f} s/step ({trl_cpu:.2f} CPU-s); " + "; ".join(line))
    med = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k not in ("rep", "order")}
    out = {
        "sposd_s_median": med["sposd_s"],
        "trl_s_median": med["trl_s"],
        "ratio_median": med["sposd_ratio"],
        "cpu_ratio_median": med["sposd_cpu_ratio"],
        "medians": med,
        "arms": arms,
        "threads": args.threads,
        "reps": reps,
        "steps": args.steps,
        "warmup_steps": WARMUP,
        "job": {"prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": NEW_TOKENS, "model": model},
    }
    for name in arms:
        print(
            f"median over {len(reps)} reps: {name}/TRL = {med[name + '_ratio']:.2f} "
            f"(CPU: {med[name + '_cpu_ratio']:.2f})  {' '.join(arms[name])}"
        )
    if args.json:
        print(json.dumps(out))


def _variant(spec: str) -> tuple[str, list[str]]:
    """`label:override,override` -> (label, overrides)."""
    label, _, overrides = spec.partition(":")
    if not label or not overrides or label in ("sposd", "trl"):
        sys.exit(f"--variant takes LABEL:override[,override...] with a new label, got {spec!r}")
    return label, overrides.split(",")


def toy_model() -> str:
    """The embedded default's warm-started tiny model (built once, cached)."""
    from sposd.models.paths import resolve_model_path
    from sposd.plan import compose_train_cfg

    cfg = compose_train_cfg([])
    return str(resolve_model_path(cfg.model, data=cfg.data, cache_dir=cfg.cache_dir))


def write_prompts(model: str, path: Path, *, steps: int) -> None:
    """The chat-rendered prompts of sposd's steps 1..steps, in order, with their answers (TRL reads them in order)."""
    from transformers import AutoTokenizer

    from sposd.data.sources import load_records
    from sposd.data.templates import TOY_INSTRUCTION, build_user_message
    from sposd.loop.rollouts import PromptSampler

    tok = AutoTokenizer.from_pretrained(model)
    sampler = PromptSampler(load_records(kind="toy", seed=SEED), seed=SEED, rank=0, world=1)
    rows = []
    for _ in range(steps):
        for rec in sampler.next(PROMPTS):
            msg = [{"role": "user", "content": build_user_message(rec["problem"], instruction=TOY_INSTRUCTION)}]
            text = tok.apply_chat_template(msg, tokenize=False, add_generation_prompt=True, enable_thinking=False)
            rows.append({"prompt": text, "answer": str(rec["answer"])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[WARMUP:])


def run_sposd(model: str, run_dir: Path, *, steps: int, extra: list[str], threads: int) -> tuple[float, float, float]:
    """Median (wall, CPU) seconds per step after warm-up, and the run's wall seconds outside its steps (start-up,
    compilation, teardown)."""
    cmd = [
        sys.executable,
        "-m",
        "sposd",
        "train",
        "algo=grpo",
        "algo.clip_high=0.28",
        "algo.loss_agg=token-mean",
        f"model.path={model}",
        f"num_steps={steps}",
        f"prompts_per_step={PROMPTS}",
        f"algo.group_size={GROUP}",
        f"seed={SEED}",
        "heldout_eval=false",
        "save_final=false",
        "save_samples_every=0",
        "logger=jsonl",
        "train.checkpoint.every=0",
        "train.checkpoint.on_exit=false",
        f"hydra.run.dir={run_dir}",
        f"hardware.num_threads={threads}",
        *extra,
    ]
    total = _run(cmd, "sposd", threads=threads)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    wall = [r["time/step_s"] for r in rows]
    return _median_after_warmup(wall), _median_after_warmup([r["time/step_cpu_s"] for r in rows]), total - sum(wall)


def run_trl(model: str, out: Path, *, steps: int, threads: int) -> tuple[float, float, float]:
    """As `run_sposd`."""
    cmd = [sys.executable, __file__, "--trl-worker", str(out), "--model", model, "--steps", str(steps)]
    total = _run([*cmd, "--threads", str(threads)], "TRL", threads=threads)
    times = json.loads((out / "step_times.json").read_text())
    return _median_after_warmup(times["wall"]), _median_after_warmup(times["cpu"]), total - sum(times["wall"])


def _run(cmd: list[str], name: str, *, threads: int) -> float:
    """Run one arm's process; returns its wall seconds."""
    t0 = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if r.returncode:
        sys.exit(f"the {name} run failed ({r.returncode}) after {time.perf_counter() - t0:.0f} s:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


# ---- the TRL arm (a process of its own) ------------------------------------------------------------------------
def trl_worker(out: Path, *, model: str, steps: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sposd.learner.deepspeed import lr_lambda
    from sposd.rewards.extract import extract_answer

    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in (out.parent / "prompts.jsonl").read_text().splitlines()]

    def reward(completions, answer, **kwargs) -> list[float]:  # the toy task's integer answers, as sposd grades them
        return [float(extract_answer(c) == str(a)) for c, a in zip(completions, answer, strict=True)]

    times: dict[str, list[float]] = {"wall": [], "cpu": []}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times["wall"].append(time.perf_counter() - self.t0)
            times["cpu"].append(time.process_time() - self.cpu0)

    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, warmup=2, total=steps, schedule="constant", min_ratio=0.0)
    )
    config = GRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP,
        gradient_accumulation_steps=1,
        num_iterations=1,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="dapo",
        scale_rewards="group",
        bf16=False,
        gradient_checkpointing=False,
        max_grad_norm=1.0,
        shuffle_dataset=False,
        seed=SEED,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model, padding_side="left"),
        optimizers=(opt, sched),
        callbacks=[StepTimer()],
    )
    trainer.train()
    (out / "step_times.json").write_text(json.dumps(times))


if __name__ == "__main__":
    main()
