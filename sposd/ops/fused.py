"""Logits that exist only as final hidden states and the output layer: every op works on [chunk, V] blocks.

`HiddenLogits(hidden_XH, weight_VH, bias_V)` stands for the logits hidden @ weight^T + bias of shape [..., V]
without ever holding them. The ops of `logprobs.py`, `divergence.py` and `token_selection.py` whose value at a
position depends only on the logits (and per-position inputs) at that position accept it in place of a logits
tensor (`per_position` below): they then run on blocks of at most `chunk_tokens` positions, each block's logits
computed from the hidden states there, and their backward recomputes each block and turns the block's logits
gradient into the hidden-state and output-layer gradients (the fused linear-cross-entropy pattern):

    forward   z_n = h_n W^T + b  ->  the op's own math on [n, V]  ->  outputs at the n positions (no graph kept)
    backward  z_n again, the op's autograd on [n, V] -> dz_n;  dh_n = dz_n W,  dW += dz_n^T h_n,  db += sum_n dz_n

Saved between forward and backward: the hidden states and the weight (references), never a [rows, T, V] tensor.
The block math is the op's own code (called on a [1, n, V] or [n, V] block), so the hidden-state path cannot
drift from the dense one. dW and db accumulate in fp32 (fp64 for fp64) and are returned in the weight's dtype.

Legend: X leading positions (e.g. B, T), N flattened positions, n positions of one block, H hidden, V vocabulary.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from torch import Tensor

from sposd.ops.divergence_blocks import lerp_logits


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class HiddenLogits:
    """The logits hidden_XH @ weight_VH^T + bias_V, computed only block by block by the ops that receive it.

    Indexing (`x[rows, cols]`, `x[:, :T]`, `x[None]`) applies to the leading dims and stays lazy; `detach()`
    detaches the hidden states and the output layer. A recorded interpolation (PAINT's, see
    `interpolate_teacher_logits_`) is applied to each block as it is computed.

    Args:
        hidden: final hidden states [..., H] at the positions whose logits these are.
        weight: the output layer [V, H] (full, not a ZeRO-3 partition).
        bias: its bias [V] or None.
    """

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None = None, *, interp=None) -> None:
        assert hidden.shape[-1] == weight.shape[1], f"hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)}"
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.interp = interp  # (partner HiddenLogits, mask_X bool, gamma) or None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def dim(self) -> int:
        return self.hidden.dim()

    ndim = property(dim)

    def __getitem__(self, idx) -> HiddenLogits:
        interp = None
        if self.interp is not None:
            partner, mask, gamma = self.interp
            interp = (partner[idx], mask[idx], gamma)
        return HiddenLogits(self.hidden[idx], self.weight, self.bias, interp=interp)

    def detach(self) -> HiddenLogits:
        bias = None if self.bias is None else self.bias.detach()
        return HiddenLogits(self.hidden.detach(), self.weight.detach(), bias, interp=self.interp)

    @property
    def requires_grad(self) -> bool:
        return any(t is not None and t.requires_grad for t in (self.hidden, self.weight, self.bias))

    def interpolate_(self, student: HiddenLogits, mask_X: Tensor, gamma: float) -> None:
        """Record z <- (1 - gamma) z + gamma sg(z_student) at mask_X (applied to every block computed later)."""
        assert self.interp is None, "one interpolation per teacher"
        assert mask_X.shape == self.shape[:-1], f"mask {tuple(mask_X.shape)} vs logits {tuple(self.shape)}"
        self.interp = (student.detach(), mask_X.bool(), gamma)

    def flat_hidden(self) -> Tensor:
        return self.hidden.reshape(-1, self.hidden.shape[-1])

    @torch.no_grad()
    def block(self, pos_n: Tensor, h_NH: Tensor | None = None) -> Tensor:
        """Logits [n, V] at the flattened positions pos_n (in the model dtype, as the output layer gives them)."""
        h_NH = self.flat_hidden() if h_NH is None else h_NH
        z_nV = torch.nn.functional.linear(h_NH[pos_n], self.weight, self.bias)
        if self.interp is not None:  # PAINT's interpolation, recorded by interpolate_teacher_logits_
            partner, mask, gamma = self.interp
            sel = mask.reshape(-1)[pos_n].nonzero().squeeze(-1)
            if sel.numel():
                z_nV[sel] = lerp_logits(z_nV[sel], partner.block(pos_n[sel]), gamma)
        return z_nV


def _block_view(x: Tensor, n_lead: int) -> Tensor:
    """A [n, ...] block as the op expects it: [1, n, ...] for ops over [B, T, ...], [n, ...] for ops over [N, ...]."""
    return x[None] if n_lead == 2 else x


class _Plan:
    """Which positions an op call computes and how each argument is cut into blocks."""

    def __init__(self, fn, bound: inspect.BoundArguments, logits: tuple[str, ...], per_pos, lengths, chunk) -> None:
        args = bound.arguments
        self.fn, self.args = fn, dict(args)
        self.logits = [n for n in logits if args.get(n) is not None]
        self.per_pos = [n for n in per_pos if args.get(n) is not None]
        first = args[self.logits[0]]
        self.lead = tuple(first.shape[:-1])
        self.V = first.shape[-1]
        for n in self.logits:
            assert tuple(args[n].shape[:-1]) == self.lead, f"{n}: {tuple(args[n].shape)} vs {self.lead}"
        N = math.prod(self.lead)
        device = first.device
        valid = torch.ones(self.lead, dtype=torch.bool, device=device)
        if lengths is not None and args.get(lengths) is not None:
            assert len(self.lead) == 2, "lengths apply to [B, T] positions"
            T = self.lead[1]
            n_B = args[lengths].to(device).clamp(min=0, max=T)
            valid = torch.arange(T, device=device)[None, :] < n_B[:, None]
            self.args[lengths] = None  # every position of a block is valid
        self.pos = valid.reshape(-1).nonzero().squeeze(-1) if N else torch.zeros(0, dtype=torch.long)
        self.N = N
        self.chunk = max(1, int(args.get(chunk) or 512))
        self.flat_h = {n: args[n].flat_hidden() for n in self.logits if isinstance(args[n], HiddenLogits)}

    def blocks(self):
        for s in range(0, self.pos.numel(), self.chunk):
            yield self.pos[s : s + self.chunk]

    def logits_block(self, name: str, pos_n: Tensor) -> Tensor:
        x = self.args[name]
        if isinstance(x, HiddenLogits):
            return x.block(pos_n, self.flat_h[name])
        return x.detach().reshape(-1, self.V)[pos_n]

    def call(self, pos_n: Tensor, logits_blocks: dict[str, Tensor]):
        kw = dict(self.args)
        n_lead = len(self.lead)
        for name, z in logits_blocks.items():
            kw[name] = _block_view(z, n_lead)
        for name in self.per_pos:
            t = kw[name]
            kw[name] = _block_view(t.reshape(self.N, *t.shape[n_lead:])[pos_n], n_lead)
        out = self.fn(**kw)
        return (out,) if isinstance(out, Tensor) else tuple(out)

    def scatter(self, outs: list[Tensor | None], pos_n: Tensor, got: tuple[Tensor, ...]) -> list[Tensor]:
        """Write one block's outputs into the [N, ...] outputs (allocated, zero, at the first block)."""
        n_lead = len(self.lead)
        for i, o in enumerate(got):
            o = o.detach().reshape(pos_n.numel(), *o.shape[n_lead:])
            if outs[i] is None:
                outs[i] = o.new_zeros(self.N, *o.shape[1:])
            outs[i][pos_n] = o
        return outs

    def shaped(self, outs: list[Tensor]) -> list[Tensor]:
        return [o.reshape(*self.lead, *o.shape[1:]) for o in outs]


def _forward(plan: _Plan) -> list[Tensor]:
    outs: list[Tensor | None] = []
    pos_any = plan.blocks()
    for pos_n in pos_any:
        got = plan.call(pos_n, {n: plan.logits_block(n, pos_n) for n in plan.logits})
        outs = outs or [None] * len(got)
        plan.scatter(outs, pos_n, got)
    if not outs:  # no position to compute: an empty block gives the output dtypes and trailing shapes
        pos0 = torch.zeros(0, dtype=torch.long, device=plan.pos.device)
        got = plan.call(pos0, {n: plan.logits_block(n, pos0) for n in plan.logits})
        outs = [g.detach().new_zeros(plan.N, *g.shape[len(plan.lead) :]) for g in got]
    return plan.shaped(outs)


class _HeadGrads:
    """dh, dW, db of the lazy logits arguments that need grad, accumulated block by block (dW, db in fp32)."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.names = [n for n in plan.logits if isinstance(plan.args[n], HiddenLogits) and plan.args[n].requires_grad]
        self.dh, self.dW, self.db = {}, {}, {}
        for n in self.names:
            x = plan.args[n]
            acc = _acc(x.weight.dtype)
            if x.hidden.requires_grad:
                self.dh[n] = torch.zeros_like(plan.flat_h[n])
            self.dW[n] = torch.zeros(x.weight.shape, dtype=acc, device=x.weight.device)
            self.db[n] = None if x.bias is None else torch.zeros_like(x.bias, dtype=acc)

    def add(self, name: str, pos_n: Tensor, gz_nV: Tensor) -> None:
        """Backpropagate one block's logits gradient gz = dL/dz through z = h W^T + b."""
        x = self.plan.args[name]
        h_nH = self.plan.flat_h[name][pos_n]
        if name in self.dh:
            self.dh[name][pos_n] = gz_nV.to(x.weight.dtype) @ x.weight.detach()
        dW = self.dW[name]
        if h_nH.dtype == dW.dtype:
            dW.addmm_(gz_nV.to(dW.dtype).T, h_nH)
        else:  # one GEMM in the model dtype per block, accumulated in fp32
            dW += (gz_nV.to(h_nH.dtype).T @ h_nH).to(dW.dtype)
        if self.db[name] is not None:
            self.db[name] += gz_nV.sum(0).to(self.db[name].dtype)

    def grads(self) -> tuple[Tensor | None, ...]:
        """One (hidden, weight, bias) gradient triple per lazy logits argument, in argument order."""
        out: list[Tensor | None] = []
        for n in self.plan.logits:
            x = self.plan.args[n]
            if not isinstance(x, HiddenLogits):
                continue
            if n not in self.names:
                out += [None, None, None]
                continue
            out.append(self.dh[n].view(x.hidden.shape) if n in self.dh else None)
            out.append(self.dW[n].to(x.weight.dtype) if x.weight.requires_grad else None)
            bias_grad = x.bias is not None and x.bias.requires_grad
            out.append(self.db[n].to(x.bias.dtype) if bias_grad else None)
        return tuple(out)


class _PerPositionFn(torch.autograd.Function):
    """Outputs of an op on HiddenLogits; backward recomputes each block and runs the op's autograd on it."""

    @staticmethod
    def forward(ctx, plan: _Plan, *tensors: Tensor | None):
        ctx.plan = plan
        return tuple(_forward(plan))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads_out: Tensor | None):
        plan: _Plan = ctx.plan
        acc = _HeadGrads(plan)
        n_lead = len(plan.lead)
        g_flat = [None if g is None else g.reshape(plan.N, *g.shape[n_lead:]) for g in grads_out]
        for pos_n in plan.blocks():
            blocks = {n: plan.logits_block(n, pos_n) for n in plan.logits}
            leaves = {n: blocks[n].requires_grad_(True) for n in acc.names}
            with torch.enable_grad():
                got = plan.call(pos_n, blocks)
            pairs = [
                (o, g[pos_n].reshape(o.shape))
                for o, g in zip(got, g_flat, strict=True)
                if g is not None and o.requires_grad
            ]
            if not pairs or not leaves:
                continue
            gz = torch.autograd.grad(
                [o for o, _ in pairs], list(leaves.values()), [g for _, g in pairs], allow_unused=True
            )
            for n, gz_nV in zip(leaves, gz, strict=True):
                if gz_nV is not None:
                    acc.add(n, pos_n, gz_nV)
        return (None, *acc.grads())


class BlockRule:
    """An op's own analytic block math, for its hot path on HiddenLogits: backward needs the recomputed logits
    and a few per-position statistics saved in forward, not a second run of the op's forward.

    forward(z, per_pos) -> (outputs [n] each, saved [n, k]);  backward(z, per_pos, saved, grads) -> {name: dL/dz}
    with z the [n, V] logits blocks by argument name and per_pos the [n, ...] per-position arguments.
    """

    def forward(self, z: dict[str, Tensor], per_pos: dict[str, Tensor]) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError

    def backward(self, z, per_pos, saved_nK: Tensor, grads: list[Tensor | None]) -> dict[str, Tensor]:
        raise NotImplementedError


class _BlockRuleFn(torch.autograd.Function):
    """Outputs of an op with a `BlockRule` on HiddenLogits: per-position statistics saved, logits recomputed."""

    @staticmethod
    def forward(ctx, plan: _Plan, rule: BlockRule, *tensors: Tensor | None):
        outs: list[Tensor | None] = []
        saved = None
        two_d = len(plan.lead) == 2
        for pos_n in plan.blocks():
            got, saved_nK = rule.forward({n: plan.logits_block(n, pos_n) for n in plan.logits}, _per_pos(plan, pos_n))
            outs = outs or [None] * len(got)
            plan.scatter(outs, pos_n, tuple(o[None] if two_d else o for o in got))
            if saved is None:
                saved = saved_nK.new_zeros(plan.N, saved_nK.shape[1])
            saved[pos_n] = saved_nK
        ctx.plan, ctx.rule, ctx.saved = plan, rule, saved
        if not outs:  # no position: the generic path gives the empty / zero outputs
            return tuple(_forward(plan))
        return tuple(plan.shaped(outs))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads_out: Tensor | None):
        plan: _Plan = ctx.plan
        acc = _HeadGrads(plan)
        if ctx.saved is None or not acc.names:
            return (None, None, *acc.grads())
        n_lead = len(plan.lead)
        g_flat = [None if g is None else g.reshape(plan.N, *g.shape[n_lead:]) for g in grads_out]
        for pos_n in plan.blocks():
            z = {n: plan.logits_block(n, pos_n) for n in plan.logits}
            g_n = [None if g is None else g[pos_n] for g in g_flat]
            gz = ctx.rule.backward(z, _per_pos(plan, pos_n), ctx.saved[pos_n], g_n)
            for n in acc.names:
                if n in gz:
                    acc.add(n, pos_n, gz[n])
        return (None, None, *acc.grads())


def _per_pos(plan: _Plan, pos_n: Tensor) -> dict[str, Tensor]:
    n_lead = len(plan.lead)
    return {n: plan.args[n].reshape(plan.N, *plan.args[n].shape[n_lead:])[pos_n] for n in plan.per_pos}


def per_position(
    *,
    logits: tuple[str, ...],
    per_pos: tuple[str, ...] = (),
    lengths: str | None = None,
    chunk: str = "chunk_tokens",
    rule=None,
):
    """Decorator: the op also accepts `HiddenLogits` for its logits arguments (see the module docstring).

    Args:
        logits: names of the [..., V] logits arguments.
        per_pos: names of arguments laid out like the leading dims of the logits ([B, T] tokens, masks).
        lengths: name of a [B] valid-length argument: positions t >= lengths[b] are not computed (outputs 0).
        chunk: name of the positions-per-block argument.
        rule: (the op's bound arguments) -> a `BlockRule` for its analytic backward, or None (the generic one).
    """

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            if not any(isinstance(bound.arguments.get(n), HiddenLogits) for n in logits):
                return fn(*args, **kwargs)
            bound.apply_defaults()
            plan = _Plan(fn, bound, logits, per_pos, lengths, chunk)
            lazy = [plan.args[n] for n in plan.logits if isinstance(plan.args[n], HiddenLogits)]
            if torch.is_grad_enabled() and any(x.requires_grad for x in lazy):
                tensors = [
                    t
                    for n in plan.logits
                    if isinstance(plan.args[n], HiddenLogits)
                    for t in (plan.args[n].hidden, plan.args[n].weight, plan.args[n].bias)
                ]
                fast = rule(plan.args) if rule is not None else None
                outs = _BlockRuleFn.apply(plan, fast, *tensors) if fast else _PerPositionFn.apply(plan, *tensors)
            else:
                with torch.no_grad():
                    outs = _forward(plan)
            return outs[0] if len(outs) == 1 and _returns_tensor(fn) else tuple(outs)

        return wrapper

    return deco


def _returns_tensor(fn) -> bool:
    ann = inspect.signature(fn).return_annotation
    return not (isinstance(ann, str) and ann.startswith("tuple")) and getattr(ann, "__origin__", None) is not tuple
