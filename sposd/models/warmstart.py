"""Supervised warm start of the tiny model on the toy task, a cache for it, and a sampled-accuracy probe.

The embedded default needs a policy whose sampled accuracy is mixed (some groups right, some wrong) before
RL starts, and self-distillation methods need a model that already reads their teacher messages. So the warm
start trains on worked solutions rendered through the chat template (loss on the assistant reply only), and a
fraction `privileged_frac` of examples shows the problem inside one of the family's teacher messages instead of
the student's: OPSD's (a reference in the own or the foreign style, whole or cut as PAINT cuts it), SDPO's two
reprompts, SD-Zero's reviser prompt and OPSDC's concise instruction, built by the same functions the teacher
contexts use (sposd.data.teacher_formats documents the shares). The reply is always the own-style solution.

Plain PyTorch, one process, stopped by a fixed number of optimizer steps, so a (seed, knobs) pair always
gives the same weights on the same machine and thread count.

Calibration (defaults: 1000 steps, batch 32, lr 3e-3, privileged_frac 0.35; 4 x 64 model; measured with
`python -m sposd.models.calibrate --seeds 0 --privileged-frac F --num-threads 1 --num-heldout 100` on a 2-core
machine shared with ~4 other jobs, so the wall times are not idle times): sampled accuracy at T = 1 on 100
held-out problems x 4 samples, seed 0:

    privileged_frac  student  opsd own  opsd foreign  opsd cut  sdpo  sdpo_exact  reviser right/wrong  concise
    0.20             0.287    0.228     0.215         0.207     0.217 0.228       0.212 / 0.225        0.200
    0.35             0.237    0.807     0.738         0.375     0.432 0.767       0.482 / 0.168        0.190

At 0.20 (each teacher format a few % of the examples) the model does not learn to read a reference at all; at 0.35
it copies an own-style reference (81%) and translates a foreign one (74%) while its own sampled accuracy stays mixed
(24%). The earlier recipe (OPSD's message only, privileged_frac 0.2) reached 19-31% student and 97-98% with the
reference, about 150 s on 2 idle cores; this one shows ~1.7x more privileged (long) prompts per step.

Noisy demonstrations (`slip_frac`, model.builtin.slip_frac, default 0.3 since 2026-12-02): that share of the
student-prompt examples answers with one arithmetic slip (a step off by 1-2, the later steps consistent with it;
`sposd.data.toy.slipped_solution`), as demonstrations from a weaker model would; teacher-message replies stay correct.
With clean demonstrations no RL or distillation method raised held-out accuracy in 150-450 steps (README "Does
SSOPD beat GRPO?", pilots); with slips GRPO and SSOPD gain +3.4 and +3.3 points in 150 steps over 5 seeds (study
v2; a build of the same key on 2026-12-02 gave GRPO +10 / +5 on seeds 0 / 1, and seed 0's base 0.164 against 0.1875
for the 2026-12-03 build the study used: the cause was not found). `python -m
sposd.models.calibrate --model <the cached model> --num-threads 1 --num-heldout 200` on the default (slip 0.3, seed
0; 200 held-out problems x 4 samples; three jobs on 2 cores): student 0.186 sampled, 0.200 greedy; OPSD message with
an own / foreign reference 0.675 / 0.731, cut reference 0.405; SDPO 0.460, SDPO exact 0.698; reviser right / wrong
0.407 / 0.135; concise 0.130. Built in 626 s at 1 thread beside another job.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sposd.data.teacher_formats import FOREIGN_FRAC, TEACHER_FORMATS, pick_format, teacher_message
from sposd.data.templates import (
    TOY_INSTRUCTION,
    build_privileged_message,
    build_user_message,
    render_prompt_ids,
)
from sposd.data.toy import check_knobs, parse_problem, sample_problem, slipped_solution, split_of
from sposd.models.tiny import atomic_dir, build_tiny_model

# Bump when the recipe changes in a way the knobs do not capture: cached models are keyed on it (with the
# teacher-format mix, sposd.data.teacher_formats).
RECIPE_VERSION = 2
IGNORE = -100


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def toy_example_ids(
    tokenizer,
    record: dict,
    *,
    privileged: bool,
    instruction: str = TOY_INSTRUCTION,
    enable_thinking: bool = False,
) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of one warm-start example; the reply is the worked solution plus eos."""
    if privileged:
        msg = build_privileged_message(record["problem"], record["solution"], instruction=instruction)
    else:
        msg = build_user_message(record["problem"], instruction=instruction)
    prompt = render_prompt_ids(tokenizer, msg, enable_thinking=enable_thinking)
    reply = tokenizer.encode(record["solution"], add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt, reply


def format_example_ids(
    tokenizer, record: dict, fmt: str, rng: random.Random, *, instruction: str = TOY_INSTRUCTION,
    enable_thinking: bool = False,
) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of one warm-start example in format `fmt` (sposd.data.teacher_formats); the reply is
    the record's own-style worked solution plus eos whatever the format."""
    msg = teacher_message(record, fmt, rng, instruction=instruction, tokenizer=tokenizer)
    prompt = render_prompt_ids(tokenizer, msg, enable_thinking=enable_thinking)
    reply = tokenizer.encode(record["solution"], add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt, reply


def _collate(pairs: list[tuple[list[int], list[int]]], pad_id: int, *, multiple: int = 32):
    """Right-padded input_ids, attention_mask and labels (IGNORE on prompt and pad) for one micro-batch.

    The length is rounded up to `multiple`: a handful of distinct shapes lets the CPU kernels reuse their
    plans instead of re-planning every step (about 1.5x faster on 2 cores).
    """
    import torch

    T = -(-max(len(p) + len(r) for p, r in pairs) // multiple) * multiple
    ids_BT = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(pairs), T), dtype=torch.long)
    labels_BT = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for b, (p, r) in enumerate(pairs):
        n = len(p) + len(r)
        ids_BT[b, :n] = torch.tensor(p + r)
        mask_BT[b, :n] = 1
        labels_BT[b, len(p) : n] = torch.tensor(r)
    return ids_BT, mask_BT, labels_BT


def warm_start(
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    steps: int = 1000,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    privileged_frac: float = 0.35,
    max_operand: int = 19,
    min_terms: int = 2,
    max_terms: int = 3,
    warmup_steps: int = 20,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    slip_frac: float = 0.0,
    instruction: str = TOY_INSTRUCTION,
    enable_thinking: bool = False,
    num_threads: int | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 100,
) -> Path:
    """Fine-tune the model in `base_dir` on toy worked solutions for `steps` AdamW steps; save to `out_dir`.

    Examples are fresh train-split problems each step (held-out problems never appear). Each step draws
    `batch_size` problems; about `privileged_frac` of them show the problem in one of the family's teacher
    messages (`sposd.data.teacher_formats`). The two kinds are padded separately (teacher messages are ~4x
    longer) and the loss is the mean token cross-entropy over all reply tokens of the step. LR: linear warm-up,
    then cosine decay to `min_lr_ratio * lr`.

    Writes the model + tokenizer in HF format atomically, plus `warmstart.json` (knobs, loss curve, wall time).

    Returns:
        out_dir as a Path.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_knobs(max_operand=max_operand, min_terms=min_terms, max_terms=max_terms)
    if steps < 0 or batch_size < 1 or not 0 <= privileged_frac <= 1 or lr <= 0 or not 0 <= slip_frac <= 1:
        raise ValueError(f"warm_start: need steps >= 0, batch_size >= 1, lr > 0, 0 <= privileged_frac <= 1, "
                         f"0 <= slip_frac <= 1; got steps={steps}, batch_size={batch_size}, lr={lr}, "
                         f"privileged_frac={privileged_frac}, slip_frac={slip_frac}")
    knobs = dict(steps=steps, lr=lr, batch_size=batch_size, seed=seed, privileged_frac=privileged_frac,
                 max_operand=max_operand, min_terms=min_terms, max_terms=max_terms, warmup_steps=warmup_steps,
                 min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, grad_clip=grad_clip, slip_frac=slip_frac,
                 instruction=instruction, enable_thinking=enable_thinking)
    t_start = time.perf_counter()
    with _threads(num_threads):
        torch.manual_seed(seed)
        rng = random.Random(f"warmstart-{seed}")
        tok = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)

        def lr_at(step: int) -> float:
            if step < warmup_steps:
                return lr * (step + 1) / warmup_steps
            frac = (step - warmup_steps) / max(steps - warmup_steps, 1)
            return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

        problem_knobs = dict(max_operand=max_operand, min_terms=min_terms, max_terms=max_terms)
        prompt_knobs = dict(instruction=instruction, enable_thinking=enable_thinking)
        losses: list[float] = []
        for step in range(steps):
            plain, priv = _draw_examples(tok, rng, batch_size, privileged_frac, problem_knobs, slip_frac=slip_frac,
                                         **prompt_knobs)
            n_targets = sum(len(r) for _, r in plain + priv)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            total = _backward_reply_loss(model, (plain, priv), tok.pad_token_id, n_targets)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            losses.append(total / n_targets)
            if log and (step % log_every == 0 or step == steps - 1):
                log(f"warm start step {step + 1}/{steps} loss {losses[-1]:.4f} lr {lr_at(step):.2e} "
                    f"({time.perf_counter() - t_start:.1f}s)")
        model.eval()
        wall = time.perf_counter() - t_start
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            for name in os.listdir(base_dir):  # tokenizer files, unchanged
                if name.startswith(("tokenizer", "chat_template", "special_tokens")):
                    (tmp / name).write_bytes((Path(base_dir) / name).read_bytes())
            _copy_legacy_config_keys(Path(base_dir) / "config.json", tmp / "config.json")
            info = dict(knobs=knobs, losses=losses, wall_s=wall, num_threads=torch.get_num_threads())
            (tmp / "warmstart.json").write_text(json.dumps(info, indent=1) + "\n")
    return Path(out_dir)


def _backward_reply_loss(model, batches: tuple[list, list], pad_id: int, n_targets: int) -> float:
    """Backpropagate the summed reply-token cross-entropy of each non-empty batch of (prompt ids, reply ids) pairs,
    divided by `n_targets` (all reply tokens of the step); return the summed loss (before the division)."""
    import torch

    total = 0.0
    for pairs in batches:
        if not pairs:
            continue
        ids_BT, mask_BT, labels_BT = _collate(pairs, pad_id)
        logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits
        loss_sum = torch.nn.functional.cross_entropy(
            logits_BTV[:, :-1].flatten(0, 1), labels_BT[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")
        (loss_sum / n_targets).backward()
        total += loss_sum.item()
    return total


def _draw_examples(
    tok, rng: random.Random, n: int, privileged_frac: float, problem_knobs: dict, *, slip_frac: float = 0.0,
    **prompt_knobs
) -> tuple[list, list]:
    """One step's `n` fresh train-split examples as (prompt ids, reply ids), split into student-prompt examples and
    teacher-message ones (`pick_format`), which are padded separately (teacher messages are ~4x longer).

    A fraction `slip_frac` of the student-prompt examples answers with a `slipped_solution` (one step off by 1-2):
    the demonstrations are noisy, as a weaker model's would be. Teacher-message replies are always correct, so the
    model learns to follow a reference faithfully.
    """
    plain: list = []
    priv: list = []
    while len(plain) + len(priv) < n:
        rec = sample_problem(rng, **problem_knobs)
        if split_of(rec["problem"]) != "train":
            continue
        fmt = pick_format(rng, privileged_frac)
        if fmt == "student" and slip_frac > 0 and rng.random() < slip_frac:
            rec = dict(rec, solution=slipped_solution(*parse_problem(rec["problem"]), rng))
        (plain if fmt == "student" else priv).append(format_example_ids(tok, rec, fmt, rng, **prompt_knobs))
    return plain, priv


def _copy_legacy_config_keys(src: Path, dst: Path) -> None:
    """Keep the base config's `torch_dtype` / `rope_theta` spellings (see tiny._add_legacy_config_keys)."""
    base, new = json.loads(src.read_text()), json.loads(dst.read_text())
    for key in ("torch_dtype", "rope_theta"):
        if key in base:
            new.setdefault(key, base[key])
    dst.write_text(json.dumps(new, indent=2) + "\n")


_WARM_START_PARAMS = inspect.signature(warm_start).parameters

# ---- cache -------------------------------------------------------------------------------------------------
ARCH_DEFAULTS = dict(hidden_size=64, num_layers=4, num_heads=2, num_kv_heads=2, intermediate_size=256,
                     max_position_embeddings=512, tie_word_embeddings=True)
DONE_MARKER = "warmstart.json"


def toy_model_key(**knobs) -> str:
    """Short hash of every knob (architecture + warm start, defaults filled in) and the recipe version."""
    keyed = dict(knobs, recipe=RECIPE_VERSION, teacher_formats=TEACHER_FORMATS, foreign_frac=FOREIGN_FRAC)
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def _resolve_toy_knobs(knobs: dict) -> tuple[dict, dict, dict]:
    """Split ensure_toy_model's knobs into (architecture, warm-start knobs as passed, everything for the key)."""
    arch = {k: knobs.get(k, v) for k, v in ARCH_DEFAULTS.items()}
    warm = {k: v for k, v in knobs.items() if k not in ARCH_DEFAULTS and k != "log"}
    params = _WARM_START_PARAMS
    unknown = sorted(set(warm) - {p for p in params if p not in ("base_dir", "out_dir", "log", "log_every")})
    if unknown:
        raise ValueError(f"ensure_toy_model: unknown knobs {unknown}; valid: {sorted(ARCH_DEFAULTS)} and "
                         f"warm_start's keyword arguments")
    # num_threads and logging do not change what is trained, so they are not part of the key
    keyed = {p.name: warm.get(p.name, p.default) for p in params.values()
             if p.kind is p.KEYWORD_ONLY and p.name not in ("log", "log_every", "num_threads")}
    if not keyed["slip_frac"]:  # clean demonstrations: the key (and the cached model) of before the knob existed
        del keyed["slip_frac"]
    return arch, warm, dict(arch, **keyed)


def toy_model_path(cache_dir: str | os.PathLike, **knobs) -> Path:
    """Where ensure_toy_model(cache_dir, **knobs) keeps its model (whether or not it is built yet)."""
    return Path(cache_dir).expanduser() / toy_model_key(**_resolve_toy_knobs(knobs)[2])


def ensure_toy_model(cache_dir: str | os.PathLike, *, log: Callable[[str], None] | None = print, **knobs) -> Path:
    """Return `cache_dir/<key>/`: the tiny model built and warm-started with these knobs (cached).

    Knobs: the architecture (ARCH_DEFAULTS: hidden_size, num_layers, num_heads, num_kv_heads,
    intermediate_size, max_position_embeddings, tie_word_embeddings) and `warm_start`'s keyword arguments
    (steps, lr, batch_size, seed, privileged_frac, max_operand, min_terms, max_terms, ...); `seed` also
    seeds the model's init. `<key>` hashes all of them with defaults filled in. The first call builds (about
    a minute on 2 cores); later calls return at once. Safe to interrupt: the directory appears by an atomic
    rename only when complete (its `warmstart.json` marks completion), and concurrent callers serialize on a
    lock file.
    """
    import fcntl
    import shutil

    arch, warm, keyed = _resolve_toy_knobs(knobs)
    key = toy_model_key(**keyed)
    cache = Path(cache_dir).expanduser()
    out = cache / key
    if (out / DONE_MARKER).exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / DONE_MARKER).exists():  # another process built it while we waited
            return out
        if log:
            log(f"building the toy model {key} in {out} (cached for later runs)")
        base = cache / f".base-{key}"
        try:
            build_tiny_model(base, seed=keyed["seed"], **arch)
            warm_start(base, out, log=log, **warm)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        (out.parent / f"{key}.json").write_text(json.dumps(keyed, indent=1) + "\n")
    return out


# ---- sampled accuracy (plain transformers; the training loop measures with vLLM) ---------------------------
def sample_accuracy(
    model_dir: str | os.PathLike,
    records: list[dict],
    *,
    n_samples: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    seed: int = 0,
    instruction: str = TOY_INSTRUCTION,
    enable_thinking: bool = False,
    batch_size: int = 128,
    num_threads: int | None = None,
    privileged: bool = False,
    fmt: str | None = None,
    style: str | None = None,
    verdict: bool | None = None,
) -> float:
    """Fraction of `n_samples` sampled completions per record whose last `\\boxed{}` equals the gold answer.

    temperature 0 means greedy decoding (then one sample per record is enough). With `privileged=True` the
    prompt is the OPSD teacher message (the record's own solution in context): how well the model reads it. A `fmt`
    (a sposd.data.teacher_formats format) with `style` / `verdict` picks any warm-start message instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sposd.rewards.extract import extract_last_boxed

    with _threads(num_threads):
        torch.manual_seed(seed)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        fmt_rng = random.Random(f"sample-accuracy-{seed}")

        def message(r: dict) -> str:
            if fmt is not None:
                return teacher_message(r, fmt, fmt_rng, instruction=instruction, tokenizer=tok, style=style,
                                       verdict=verdict)
            if privileged:
                return build_privileged_message(r["problem"], r["solution"], instruction=instruction)
            return build_user_message(r["problem"], instruction=instruction)

        prompts = [render_prompt_ids(tok, message(r), enable_thinking=enable_thinking) for r in records]
        jobs = [(p, str(r["answer"])) for p, r in zip(prompts, records, strict=True) for _ in range(n_samples)]
        correct = 0
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i : i + batch_size]
            T = max(len(p) for p, _ in chunk)
            ids_BT = torch.full((len(chunk), T), tok.pad_token_id, dtype=torch.long)
            mask_BT = torch.zeros_like(ids_BT)
            for b, (p, _) in enumerate(chunk):  # left padding for generation
                ids_BT[b, T - len(p) :] = torch.tensor(p)
                mask_BT[b, T - len(p) :] = 1
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids_BT, attention_mask=mask_BT, max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                    top_p=None, top_k=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            for b, (_, gold) in enumerate(chunk):
                text = tok.decode(out[b, T:], skip_special_tokens=True)
                correct += _same_answer(extract_last_boxed(text), gold)
    return correct / max(len(jobs), 1)


def _same_answer(pred: str | None, gold: str) -> bool:
    return pred is not None and pred.strip() == gold.strip()
