#!/usr/bin/env python
"""Throughput of `sposd eval`: its generation path vs a bare `vllm.LLM.generate`, and the verifier pool's rate.

Generation: one `VLLMEngine` (the engine `sposd eval` builds), the same chat-templated prompts and sampling
settings (eval.* defaults of the opsd_repo preset except the budget: T 1.0, top_p 0.95, top_k off, n = k), timed as

- bare:   `llm.generate(prompts, SamplingParams(n=k, ...))` on the engine's own `vllm.LLM` (what a script would do);
- stream: `VLLMEngine.generate_stream` (all prompts queued, finished problems yielded as they finish, converted to
          RolloutGroups), which is what `sposd eval` consumes;
- eval:   `sposd.evaluate.sample_and_grade` plus the samples.jsonl append (fsync): the whole loop of `sposd eval`.

Each round runs the variants in a rotating order on the same warm engine; throughput is generated tokens per second
(a random model's lengths vary, so tokens, not problems, are compared). The headline ratios are the median over
rounds of the per-round ratio (variant / bare in the same round, run back to back, so a slow drift of the machine's
load cancels); the ratio of each variant's best round is reported too. The ratio targets are >= 0.95.

Grading: `VerifierPool.grade` on --grade-n synthetic completions whose last box holds an answer in one of the forms
the benchmarks use (integers, fractions, roots, powers, pairs, intervals, text), half right; answers per second.

    python scripts/bench_eval.py                              # a tiny random model, 64 prompts x k=4, 256 tokens
    python scripts/bench_eval.py --model runs/.../final --prompts 128 --k 8 --max-new-tokens 1024 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (right answer, a wrong one) pairs in the shapes of the four benchmarks' gold answers
ANSWER_FORMS = [
    ("204", "240"),
    (r"\frac{7}{12}", r"\frac{5}{12}"),
    (r"3\sqrt{2}", r"2\sqrt{3}"),
    (r"2^{25} \cdot 26!", r"2^{24} \cdot 26!"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \pi \right)"),
    (r"[-2, 7)", r"(-2, 7]"),
    (r"\text{(C)}", r"\text{(D)}"),
    (r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}", r"\frac{-1+\sqrt{17}}{2}"),
    ("0.75", "0.7"),
    (r"x^2 + 7x + 10", r"x^2 + 7x + 12"),
]


def _prompts(tokenizer, n: int, seed: int):
    """n chat-templated prompts of varied length (synthetic problems; nothing is read from outside the repo)."""
    from sposd.config import EVAL_PROMPT
    from sposd.data.templates import render_prompt_ids
    from sposd.evals.benchmarks import user_message
    from sposd.types import Prompt

    rng = random.Random(seed)
    out = []
    for i in range(n):
        terms = [str(rng.randint(1, 999)) for _ in range(rng.randint(2, 40))]
        problem = f"Problem {i}: compute {' + '.join(terms)}, then reduce it modulo 1000."
        ids = render_prompt_ids(tokenizer, user_message(EVAL_PROMPT, problem), enable_thinking=True)
        out.append(Prompt(id=f"b{i}", problem=problem, prompt_ids=ids, answer="0", meta={"benchmark": "bench"}))
    return out


def _bench_generation(args, model_path: str) -> dict:
    from transformers import AutoTokenizer

    from sposd.config import EvalCfg
    from sposd.evals.samples import SampleStore
    from sposd.evaluate import eval_sampling, sample_and_grade
    from sposd.rewards import VerifierPool
    from sposd.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = _prompts(tok, args.prompts, args.seed)
    ev = EvalCfg(name="bench", k=args.k, max_new_tokens=args.max_new_tokens)
    sampling = eval_sampling(ev)
    longest = max(len(p.prompt_ids) for p in prompts)
    engine = VLLMEngine(model_path, max_model_len=longest + args.max_new_tokens, seed=args.seed,
                        device=args.device, kv_cache_gb=args.kv_cache_gb)  # fmt: skip
    llm = engine._llm
    from vllm import SamplingParams

    params = engine._params(sampling, n=args.k)
    assert isinstance(params, SamplingParams)
    inputs = [{"prompt_token_ids": p.prompt_ids} for p in prompts]
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    pool = VerifierPool(answer_line_fallback=True)

    def bare() -> int:
        outs = llm.generate(inputs, params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    def stream() -> int:
        return sum(len(c.token_ids) for groups in engine.generate_stream(prompts, n=args.k, sampling=sampling)
                   for g in groups for c in g.completions)  # fmt: skip

    def eval_loop() -> int:
        store = SampleStore(tmp / f"samples_{time.monotonic_ns()}.jsonl")
        n = 0
        for rows in sample_and_grade(engine, pool, prompts, k=args.k, sampling=sampling,
                                     fingerprints={"bench": "x"}):  # fmt: skip
            store.append(rows)
            n += sum(r["num_tokens"] for r in rows)
        return n

    variants = {"bare": bare, "stream": stream, "eval": eval_loop}
    try:
        bare()  # warm-up: kernels, allocator, prefix cache state
        rates: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:  # rotate the order every round
                t0 = time.perf_counter()
                tokens = variants[name]()
                rates[name].append(tokens / (time.perf_counter() - t0))
    finally:
        pool.close()
        engine.close()
    best = {k: max(v) for k, v in rates.items()}
    paired = {k: [x / b for x, b in zip(rates[k], rates["bare"], strict=True)] for k in ("stream", "eval")}
    return {
        "prompts": args.prompts,
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "bare_tok_per_s": statistics.median(rates["bare"]),
        "stream_tok_per_s": statistics.median(rates["stream"]),
        "eval_loop_tok_per_s": statistics.median(rates["eval"]),
        "gen_throughput_ratio": statistics.median(paired["stream"]),
        "eval_loop_throughput_ratio": statistics.median(paired["eval"]),
        "gen_throughput_ratio_best_round": best["stream"] / best["bare"],
        "eval_loop_throughput_ratio_best_round": best["eval"] / best["bare"],
        "paired_ratios": paired,
        "all_rounds_tok_per_s": rates,
    }


def _bench_grading(args) -> dict:
    from sposd.rewards import VerifierPool

    rng = random.Random(args.seed)
    pairs = []
    for i in range(args.grade_n):
        right, wrong = ANSWER_FORMS[i % len(ANSWER_FORMS)]
        answer = right if rng.random() < 0.5 else wrong
        pairs.append((f"Some reasoning, step {i} ... so the answer is $\\boxed{{{answer}}}$.", right))
    with VerifierPool(args.grade_workers) as pool:
        pool.grade(pairs[: len(ANSWER_FORMS)])  # warm-up: sympy caches in every worker
        t0 = time.perf_counter()
        verdicts = pool.grade(pairs)
        dt = time.perf_counter() - t0
        workers = len(pool.worker_pids)
    return {"grade_n": len(pairs), "grade_workers": workers, "grade_s": dt, "grade_per_s": len(pairs) / dt,
            "grade_right_frac": sum(verdicts) / len(verdicts)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF-format model dir (default: a tiny random model, 4k context)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--grade-n", type=int, default=2000)
    ap.add_argument("--grade-workers", type=int, default=None, help="default min(4, cpus), as sposd eval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()

    out: dict = {}
    if not args.skip_generation:
        model = args.model
        if model is None:
            from sposd.models.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench_eval_model_")) / "tiny",
                                         max_position_embeddings=4096))  # fmt: skip
        out.update(_bench_generation(args, model))
        print(
            f"generation (medians)  bare LLM.generate {out['bare_tok_per_s']:.0f} tok/s   sposd eval stream "
            f"{out['stream_tok_per_s']:.0f} tok/s (ratio {out['gen_throughput_ratio']:.3f})   + grading and "
            f"samples.jsonl {out['eval_loop_tok_per_s']:.0f} tok/s (ratio {out['eval_loop_throughput_ratio']:.3f}); "
            "ratios: medians of per-round ratios"
        )
    out.update(_bench_grading(args))
    print(
        f"grading     {out['grade_n']} answers in {out['grade_s']:.2f} s with {out['grade_workers']} workers: "
        f"{out['grade_per_s']:.0f} answers/s"
    )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
