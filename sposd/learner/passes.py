"""The learner's passes: final hidden states from a model, its output layer, and the logits as `HiddenLogits`.

No pass computes logits of shape [rows, T, V]. The model's body runs once per pass and gives the final hidden
states at the positions that predict each completion token; the ops compute logits from them in [chunk, V]
blocks (`sposd.ops.fused`), recomputed in backward.

Under ZeRO-3 the output layer is gathered once per micro-batch and pass:
- student (with grad): `policy_head` calls the output-layer module once, with a forward that hands back the
  gathered weight (and the hidden states) through an identity autograd function. DeepSpeed's module hooks gather
  it for that call, gather it again when backward reaches the call, and the summed dW of every op that used the
  weight arrives as the parameter's gradient there: it flows into DeepSpeed's reduce-scatter like any module's.
- teacher, scoring, pre-pass (no grad): `gathered_head` gathers the weight once (GatheredParameters) and keeps a
  reference for the blocks computed later in the pass (and recomputed in the student's backward).
Both references outlive the gather: DeepSpeed frees a gathered parameter by dropping its reference (`free_param`),
so the storage lives exactly as long as the ops that hold it.

The body runs through the DeepSpeed engine (`engine(...)`) with the model's forward swapped for the body's for the
call, so the engine's forward bookkeeping and ZeRO-3's per-forward trace reset happen as for a full forward, and
the output layer is not applied to every position (`output_hidden_states` is not used: it would keep every
layer's states alive in no-grad passes).

Legend: B rows, L prompt + completion columns, T completion positions, H hidden, V vocabulary.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from sposd.ops.fused import HiddenLogits


def logits_of(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> HiddenLogits:
    """The logits the ops receive: hidden states and the output layer, never materialised whole."""
    return HiddenLogits(hidden, weight, bias)


@contextmanager
def _forward_as(module: torch.nn.Module, fn):
    """Call `module` (its hooks included) with `fn` as its forward."""
    module.forward = fn
    try:
        yield
    finally:
        del module.forward


def hidden_states(engine, mb: dict[str, Tensor]) -> Tensor:
    """Final hidden states at the positions predicting each completion token: [B, T, H] (grad when enabled).

    Args:
        engine: a DeepSpeed engine (or a plain module) wrapping a causal LM.
        mb: a micro-batch from `collate` ([left-padded context | right-padded completion] rows). With
            `collate(share_prompts=True)`'s index the body runs twice: once on each distinct prompt, then on every
            row's completion attending to its prompt's cached keys and values (`_shared_prompt_hidden`).
    """
    model = _model(engine)
    device = next(iter(engine.parameters())).device if not hasattr(engine, "device") else engine.device
    T = mb["completion_ids_BT"].shape[1]
    if "prompt_of_B" in mb:
        return _shared_prompt_hidden(engine, model, {k: v.to(device) for k, v in mb.items()}, T)

    def body(**kw):
        return model.base_model(**kw).last_hidden_state

    with _forward_as(model, body):
        h_BLH = engine(
            input_ids=mb["input_ids_BL"].to(device),
            attention_mask=mb["attention_mask_BL"].to(device),
            position_ids=mb["position_ids_BL"].to(device),
            use_cache=False,
        )
    return h_BLH[:, -(T + 1) : -1]


def _shared_prompt_hidden(engine, model: torch.nn.Module, mb: dict[str, Tensor], T: int) -> Tensor:
    """`hidden_states` with each distinct prompt run once (GRPO's group shares one prompt: G x fewer prompt
    tokens; the shared-prefix forward of Prefix Grouper, arXiv 2506.05433).

    Two engine calls on every rank whatever the data (ZeRO-3 gathers are collective): the distinct prompts
    [U, P] with a fresh key/value cache, then the completions [B, T] on that cache, its rows selected per
    completion (an index, so backward sums each completion's gradient into its prompt's keys and values). The
    result equals the one-call path's up to floating-point rounding (tests/learner/test_shared_prompts.py). Not
    with gradient checkpointing: transformers then drops the cache (the learner does not share then).
    """
    from transformers import DynamicCache

    P = mb["input_ids_BL"].shape[1] - T
    rows_U, of_B = mb["prompt_rows_U"], mb["prompt_of_B"]

    def prompt_body(**kw):
        out = model.base_model(**kw, past_key_values=DynamicCache(config=model.config), use_cache=True)
        return out.last_hidden_state, out.past_key_values

    def completion_body(**kw):
        return model.base_model(**kw, use_cache=True).last_hidden_state

    with _forward_as(model, prompt_body):
        h_UPH, cache = engine(
            input_ids=mb["input_ids_BL"][rows_U, :P],
            attention_mask=mb["attention_mask_BL"][rows_U, :P],
            position_ids=mb["position_ids_BL"][rows_U, :P],
        )
    cache.batch_select_indices(of_B)
    with _forward_as(model, completion_body):
        h_BTH = engine(
            input_ids=mb["input_ids_BL"][:, P:],
            attention_mask=mb["attention_mask_BL"],
            position_ids=mb["position_ids_BL"][:, P:],
            past_key_values=cache,
        )
    # position P-1 (the prompt's last) predicts completion token 0; completion position t predicts token t+1
    return torch.cat([h_UPH[of_B, P - 1 :], h_BTH[:, : T - 1]], dim=1)


def dummy_hidden(engine, pad_id: int, *, share_prompts: bool = False) -> Tensor:
    """The body on two pad tokens: [1, 1, H]. Mirrors a pass another rank runs (ZeRO-3 gathers are collective),
    with as many engine calls (two when prompts are shared)."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long)
    mb = {
        "input_ids_BL": ids,
        "attention_mask_BL": torch.ones_like(ids),
        "position_ids_BL": torch.arange(2)[None],
        "completion_ids_BT": ids[:, :1],
    }
    if share_prompts:
        mb |= {"prompt_rows_U": torch.tensor([0]), "prompt_of_B": torch.tensor([0])}
    return hidden_states(engine, mb)


def gathered_head(engine) -> tuple[Tensor, Tensor | None]:
    """The output layer's full (weight, bias), no grad: one ZeRO-3 gather (collective on every rank)."""
    import deepspeed

    out = _model(engine).get_output_embeddings()
    params = [p for p in (out.weight, getattr(out, "bias", None)) if p is not None]
    with torch.no_grad(), deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        bias = getattr(out, "bias", None)
        return out.weight.detach(), None if bias is None else bias.detach()


class _HeadAlias(torch.autograd.Function):
    """Identity on (hidden, weight[, bias]) inside the output layer's module call: the weight it returns is the
    gathered one, and the gradient every op gives it goes back to the parameter when backward reaches the call."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        return (h.view_as(h), weight.view_as(weight)) + (() if bias is None else (bias.view_as(bias),))

    @staticmethod
    def backward(ctx, gh, gw, gb=None):
        return gh, gw, gb


def policy_head(engine, h_BTH: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(hidden, weight, bias) of the trainable policy, connected to the output layer's parameters: one module call
    (one ZeRO-3 gather in forward, one in backward)."""
    head = _model(engine).get_output_embeddings()

    def forward(h):
        return _HeadAlias.apply(h, head.weight, getattr(head, "bias", None))

    with _forward_as(head, forward):
        out = head(h_BTH)
    return out[0], out[1], out[2] if len(out) > 2 else None


def _model(engine) -> torch.nn.Module:
    return getattr(engine, "module", engine)


def completion_logprobs(S: HiddenLogits, tokens_BT: Tensor, lengths_B: Tensor, *, temperature: float, chunk: int):
    """log softmax(z / tau)[y] at each row's first lengths_B[b] positions (0 beyond): [B, T] fp32, grad if S has."""
    from sposd.ops.logprobs import token_logprobs

    B, T = tokens_BT.shape
    valid_BT = torch.arange(T, device=tokens_BT.device)[None] < lengths_B.to(tokens_BT.device)[:, None]
    r, c = valid_BT.nonzero(as_tuple=True)
    lp_N = token_logprobs(S[r, c][None], tokens_BT[r, c][None], temperature=temperature, chunk_tokens=chunk)[0]
    return torch.zeros(B, T, dtype=lp_N.dtype, device=lp_N.device).index_put((r, c), lp_N)


def completion_lengths(mb: dict[str, Tensor]) -> Tensor:
    """Tokens in each row's completion: [B] (the attended columns of the right-padded completion block)."""
    T = mb["completion_ids_BT"].shape[1]
    return mb["attention_mask_BL"][:, -T:].sum(-1)


def in_graph(loss: Tensor, *tensors: Tensor | None) -> Tensor:
    """loss + 0 x one entry of each tensor: backward then reaches whatever produced them, on every rank."""
    for t in tensors:
        if t is not None:
            loss = loss + t.reshape(-1)[:1].sum() * 0.0
    return loss


def teacher_mb(rows, contexts: list[list[int]], *, pad_id: int, share_prompts: bool = False) -> dict[str, Tensor]:
    """[teacher context | the student's completion] rows, contexts left-padded: no padding between them."""
    from sposd.learner.batching import LearnerSample, collate

    samples = [LearnerSample(c, s.completion_ids, 0.0) for s, c in zip(rows, contexts, strict=True)]
    return collate(samples, pad_id=pad_id, share_prompts=share_prompts)


@torch.no_grad()
def head_logits(engine, mb: dict[str, Tensor]):
    """`engine`'s logits predicting each completion token (no grad): its body's hidden states and its gathered
    output layer. Ops: ("hidden", model), ("gather_head", model)."""
    h_BTH = hidden_states(engine, mb)
    return logits_of(h_BTH, *gathered_head(engine))


@torch.no_grad()
def logprobs(engine, mb: dict[str, Tensor], *, temperature: float, chunk: int) -> Tensor:
    """Log-prob of each completion token under `engine`'s model: [B, T] fp32 (0 beyond each completion)."""
    device = getattr(engine, "device", None) or next(iter(engine.parameters())).device
    return completion_logprobs(
        head_logits(engine, mb),
        mb["completion_ids_BT"].to(device),
        completion_lengths(mb).to(device),
        temperature=temperature,
        chunk=chunk,
    )


def run_empty(ops, engines: dict, pad_id: int, *, share_prompts: bool = False) -> None:
    """Run a pass's ops (`plan.Pass.ops`) on two pad tokens with a zero loss: the forwards, gathers, backward and
    step a rank with rows issues, for a rank with none (ZeRO-3 gathers are collective)."""
    h = W = b = loss = None
    for action, model in ops:
        eng = engines[model]
        if action == "hidden":
            with torch.no_grad():
                dummy_hidden(eng, pad_id, share_prompts=share_prompts)
        elif action == "gather_head":
            gathered_head(eng)
        elif action == "hidden_grad":
            h = dummy_hidden(eng, pad_id, share_prompts=share_prompts)
        elif action == "head_call":
            h, W, b = policy_head(eng, h)
            loss = in_graph(h.sum() * 0.0, h, W, b)
        elif action == "backward":
            eng.backward(loss, scale_wrt_gas=False)
        elif action == "step":
            eng.step()
        else:
            raise ValueError(f"unknown op {action!r} in {ops}")
