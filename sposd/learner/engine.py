"""DeepSpeed learner: ZeRO-3 (gloo on CPU, NCCL + bf16 on GPU), token-budget micro-batches, AdamW, schedules.

Loss normalisation is global: the algorithm divides by token/sequence counts summed over every micro-batch and
every rank (all-reduced before the first forward). DeepSpeed must then neither divide by its accumulation steps
(`scale_wrt_gas=False`) nor leave its data-parallel gradient *average* uncorrected, so each rank's loss is
multiplied by the world size: the averaged gradient is then exactly the gradient of the global loss.

Per optimiser step, in order, whatever the algorithm (it only answers the `Algorithm` hooks):
    token pre-pass      (`needs_token_prepass`) teacher + student forwards on hidden states, statistics in
                        [chunk, V] blocks, all-gathered -> per-token weights (TIP's selection, SRPO's weights)
    per micro-batch     distillation teacher pass ([teacher context | completion], no padding between);
                        K scoring passes (`num_score_contexts`); the student pass; loss; backward
Every pass gives final hidden states and the output layer, never [rows, T, V] logits: log-probs, entropies and
divergences are computed in [chunk, V] blocks and recomputed in backward (`passes.py`, `sposd.ops.fused`).
    after the step      EMA / periodic teacher update, shard by shard
Every ZeRO-3 collective (a module's parameter gather, an explicit GatheredParameters) happens in the same order
on every rank: a rank without work at some point runs a matching dummy pass.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import torch

from sposd import dist as sdist
from sposd.algos.base import DistillBatch, Normalizer, PolicyBatch
from sposd.learner.batching import LearnerSample, collate, plan_micro_batches
from sposd.learner import passes
from sposd.ops.fused import HiddenLogits


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at optimiser step `step`: linear warm-up, then constant / linear / cosine decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1 - frac if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return min_ratio + (1 - min_ratio) * decay


def ds_config(*, dtype: str, zero_stage: int, grad_clip: float, offload_optimizer: bool, offload_params: bool) -> dict:
    zero: dict = {"stage": zero_stage, "stage3_gather_16bit_weights_on_model_save": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # boundaries are set by hand: micro-batch counts vary per step
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "zero_allow_untested_optimizer": True,  # a client torch AdamW avoids a 40 s JIT build of DeepSpeed's own
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _load_model(path: str, *, dtype: str, trust_remote_code: bool, ds_cfg: dict | None):
    """Load a causal LM; under ZeRO-3 parameters are partitioned while loading (HfDeepSpeedConfig)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_cfg) if ds_cfg and ds_cfg["zero_optimization"]["stage"] == 3 else None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, attn_implementation="sdpa"
        )
    finally:
        # While that object lives every from_pretrained is a collective (a rank-0-only load would hang).
        del keep
        unset_hf_deepspeed_config()
    return model


def use_cached_torch_extensions() -> None:
    """DeepSpeed JIT-builds C++ ops on first use (~30 s each on a CPU): keep them in one cache across runs."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path("~/.cache/sposd/torch_extensions").expanduser()))


def _forget_stale_deepspeed_groups() -> None:
    """Drop DeepSpeed's cached process groups that belong to a destroyed world.

    DeepSpeed caches its data-parallel / world groups in module globals. When something tears the default
    group down in-process (vLLM's engine shutdown does) and a new world is created, a second learner in the
    same process would otherwise be handed a group torch no longer knows ("Group ... is not registered").
    """
    import torch.distributed as tdist
    from deepspeed.utils import groups

    live = set(tdist.distributed_c10d._world.pg_map) if tdist.is_initialized() else set()
    for name, value in list(vars(groups).items()):
        if not name.startswith("_") or not name.endswith("GROUP"):
            continue
        if isinstance(value, tdist.ProcessGroup) and value not in live:
            setattr(groups, name, None)
        elif isinstance(value, dict) and any(
            isinstance(v, tdist.ProcessGroup) and v not in live for v in value.values()
        ):
            setattr(groups, name, {})


class PeakMemory:
    """Peak memory of a block above what was in use when it started, in GB (None where it cannot be measured).

    CUDA: the caching allocator's peak counter. CPU (Linux): the process's peak resident set (VmHWM), reset to the
    current RSS through /proc/self/clear_refs, so the figure covers the new resident memory the block touched;
    memory the allocator hands out again from its already-resident free lists is not counted (a lower bound in a
    long-running process).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda" and torch.cuda.is_available()
        self.base: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.base = _status_bytes("VmRSS")
            except (OSError, ValueError):
                self.base = None
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def peak_gb(self) -> float | None:
        if self.base is None:
            return None
        peak = torch.cuda.max_memory_allocated() if self.cuda else _status_bytes("VmHWM")
        return max(peak - self.base, 0) / 2**30


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{field} is not in /proc/self/status")


class DeepSpeedLearner:
    """Owns the trainable policy (and, when the algorithm needs one, a frozen reference copy).

    Args:
        model_path: HF-format directory or hub id of the starting policy.
        algo: the `sposd.algos.Algorithm` supplying the loss (the learner never looks at its name).
        optim: `OptimCfg`-like object (lr, weight_decay, betas, eps, warmup_steps, schedule, min_lr_ratio, grad_clip).
        total_steps: optimiser steps the schedule spans.
        loss_temperature: logits are divided by this before log-softmax (= rollout temperature).
    """

    def __init__(
        self,
        model_path: str,
        *,
        algo,
        optim,
        total_steps: int,
        device: str,
        dtype: str,
        zero_stage: int,
        micro_batch_tokens: int,
        pad_id: int,
        loss_temperature: float = 1.0,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        offload_optimizer: bool = False,
        offload_params: bool = False,
    ) -> None:
        use_cached_torch_extensions()
        import deepspeed

        self.algo, self.device, self.pad_id = algo, device, pad_id
        self.micro_batch_tokens, self.loss_temperature = micro_batch_tokens, loss_temperature
        self.rank, self.world = sdist.init_distributed(device)
        _forget_stale_deepspeed_groups()
        cfg = ds_config(
            dtype=dtype,
            zero_stage=zero_stage,
            grad_clip=optim.grad_clip,
            offload_optimizer=offload_optimizer,
            offload_params=offload_params,
        )
        model = _load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code, ds_cfg=cfg)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        opt = torch.optim.AdamW(
            model.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
        )
        sched = lambda o: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
            o,
            lambda s: lr_lambda(
                s, warmup=optim.warmup_steps, total=total_steps, schedule=optim.schedule, min_ratio=optim.min_lr_ratio
            ),
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=cfg
        )
        frozen_cfg = {k: v for k, v in cfg.items() if k != "gradient_clipping"}

        def frozen_copy():
            m = _load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code, ds_cfg=frozen_cfg)
            eng, *_ = deepspeed.initialize(model=m, config=frozen_cfg)
            eng.eval()
            return eng

        self.ref = frozen_copy() if algo.needs_ref else None
        # The teacher: "current" is the policy itself under no_grad (no second replica); "initial" shares the
        # KL reference when there is one; "ema" / "periodic" own a partitioned copy updated shard by shard.
        self.teacher_kind = algo.teacher_weights
        self.teacher = None
        if self.teacher_kind == "current":
            self.teacher = self.engine
        elif self.teacher_kind == "initial" and self.ref is not None:
            self.teacher = self.ref
        elif self.teacher_kind is not None:
            self.teacher = frozen_copy()
        self.optimizer_steps = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.engine.device, non_blocking=True)

    @property
    def _chunk(self) -> int:
        return self.algo.cfg.distill.chunk_tokens

    @torch.no_grad()
    def _head_logits(self, engine, mb: dict) -> HiddenLogits:
        """`engine`'s logits predicting each completion token, as hidden states + its gathered output layer (no
        grad): one body forward and one gather of the output layer."""
        h_BTH = passes.hidden_states(engine, mb)
        return passes.logits_of(h_BTH, *passes.gathered_head(engine))

    @torch.no_grad()
    def _mirror_head_logits(self, engine) -> None:
        """The collectives of `_head_logits` on dummy input, for a rank without rows at this point."""
        passes.dummy_hidden(engine, self.pad_id)
        passes.gathered_head(engine)

    @torch.no_grad()
    def _logp(self, engine, mb: dict) -> torch.Tensor:
        """Log-prob of each completion token under `engine`'s model: [B, T] (float32; 0 beyond each completion)."""
        tokens_BT = self._dev(mb["completion_ids_BT"])
        return passes.completion_logprobs(
            self._head_logits(engine, mb),
            tokens_BT,
            self._dev(_completion_lengths(mb)),
            temperature=self.loss_temperature,
            chunk=self._chunk,
        )

    def _teacher_mb(self, rows: list[LearnerSample], contexts: list[list[int]]) -> dict:
        """[teacher context | the student's completion] rows, contexts left-padded: no padding between them."""
        return collate(
            [
                LearnerSample(prompt_ids=c, completion_ids=s.completion_ids, adv=0.0)
                for s, c in zip(rows, contexts, strict=True)
            ],
            pad_id=self.pad_id,
        )

    @torch.no_grad()
    def _teacher_logits(self, rows: list[LearnerSample]) -> HiddenLogits:
        """Teacher logits on [teacher context | the student's completion] for each row, [D, T, V] as hidden states
        and the teacher's output layer; aligned with the student on completion positions."""
        return self._head_logits(self.teacher, self._teacher_mb(rows, [s.teacher_prompt_ids for s in rows]))

    @torch.no_grad()
    def _score_logps(self, rows: list[LearnerSample] | None, T: int) -> torch.Tensor | None:
        """Teacher log-probs of every completion token under each row's K scoring contexts: [K, B, T] (fp32).

        rows None: this rank has no micro-batch here; it runs the same K passes on dummy input to keep ZeRO-3's
        collectives in step, and returns None.
        """
        K = self.algo.num_score_contexts
        out = None if rows is None else torch.zeros(K, len(rows), T, device=self.engine.device)
        for k in range(K):
            if rows is None:
                self._mirror_head_logits(self.teacher)
                continue
            tmb = self._teacher_mb(rows, [s.score_prompt_ids[k] if s.score_prompt_ids else s.prompt_ids for s in rows])
            lp = self._logp(self.teacher, tmb)
            out[k, :, : lp.shape[1]] = lp
        return out

    @torch.no_grad()
    def _update_teacher(self) -> None:
        """EMA / periodic teacher: blend or copy the policy into the teacher, each rank on its own ZeRO-3 shard."""
        if self.teacher_kind == "ema":
            rate = self.algo.teacher_ema_rate
        elif self.teacher_kind == "periodic" and self.optimizer_steps % self.algo.teacher_update_every == 0:
            rate = 1.0
        else:
            return
        for (ns, ps), (nt, pt) in zip(
            self.engine.module.named_parameters(), self.teacher.module.named_parameters(), strict=True
        ):
            assert ns == nt, f"teacher and policy parameters differ: {ns} vs {nt}"
            dst = _shard(pt)
            dst.lerp_(_shard(ps).to(dst.dtype), rate)

    def _dummy_backward(self) -> None:
        """Zero-loss student pass and backward on dummy input: the collectives of a real micro-batch's student pass
        (body forward, output-layer call, their backward) for a rank with fewer micro-batches."""
        h, W, b = passes.policy_head(self.engine, passes.dummy_hidden(self.engine, self.pad_id))
        self.engine.backward(_in_graph(h.sum() * 0.0, h, W, b), scale_wrt_gas=False)

    def train_step(self, samples: list[LearnerSample], *, max_len: int) -> dict[str, float]:
        """One rollout batch -> ppo_epochs x num_minibatches optimiser steps. Returns rank-summed metrics."""
        cfg = self.algo.cfg
        n_mini = max(1, min(cfg.num_minibatches, len(samples))) if samples else 1
        minibatches = [samples[i::n_mini] for i in range(n_mini)]
        # With one optimiser step per batch the policy that sampled is the one being differentiated, so the
        # detached current log-prob is exactly the behaviour log-prob; otherwise freeze it first.
        on_policy = cfg.ppo_epochs == 1 and n_mini == 1
        old = None if on_policy else [self._no_grad_logps(self.engine, mbs) for mbs in minibatches]
        ref = [self._no_grad_logps(self.ref, mbs) for mbs in minibatches] if self.ref is not None else None
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        n_steps = 0
        with PeakMemory(self.device) as mem:
            for _ in range(cfg.ppo_epochs):
                for k, mbs in enumerate(minibatches):
                    m = self._optimizer_step(mbs, old[k] if old else None, ref[k] if ref else None, max_len)
                    for key, v in m.items():
                        metrics[key] = metrics.get(key, 0.0) + v
                    n_steps += 1
        metrics = {k: v / n_steps for k, v in metrics.items()}
        metrics["time/learn_fwd_bwd_s"] = time.perf_counter() - t0
        if mem.peak_gb is not None:  # the largest rank's: what the step needs on top of what was resident
            metrics["mem/learn_peak_gb"] = sdist.all_reduce([mem.peak_gb], op="max")[0]
        return metrics

    @torch.no_grad()
    def _no_grad_logps(self, engine, samples: list[LearnerSample]) -> list[torch.Tensor]:
        """Per-sample log-probs (unpadded, on CPU), computed with the same micro-batching as training."""
        out: list[torch.Tensor | None] = [None] * len(samples)
        plan = plan_micro_batches([s.plan_length for s in samples], self.micro_batch_tokens)
        n_max = int(sdist.all_reduce([len(plan)], op="max")[0])
        for j in range(n_max):
            if j >= len(plan):
                self._mirror_head_logits(engine)
                continue
            idx = plan[j]
            lp = self._logp(engine, collate([samples[i] for i in idx], pad_id=self.pad_id)).float().cpu()
            for r, i in enumerate(idx):
                out[i] = lp[r, : len(samples[i].completion_ids)]
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _token_prepass(self, samples, plan, teacher_at) -> dict[int, torch.Tensor]:
        """Per-token weights of every distilled sample (`Algorithm.token_weights`), from statistics computed over
        the whole batch before any loss pass: TIP's selection, SRPO's entropy weights normalised over the batch.

        Both models run on hidden states and the statistics are computed in [chunk, V] blocks. Ranks without
        distilled rows at a micro-batch mirror its passes and gathers.
        """
        local: dict[int, torch.Tensor] = {}
        for j, flag in enumerate(teacher_at):
            if not flag:
                continue
            didx = [i for i in plan[j] if samples[i].distilled] if j < len(plan) else []
            distinct = self.teacher is not self.engine
            if not didx:  # the same passes and gathers, in the same order, on dummy input
                self._mirror_head_logits(self.teacher)
                passes.dummy_hidden(self.engine, self.pad_id)
                if distinct:
                    passes.gathered_head(self.engine)
                continue
            drows = [samples[i] for i in didx]
            t_h = passes.hidden_states(self.teacher, self._teacher_mb(drows, [s.teacher_prompt_ids for s in drows]))
            t_head = passes.gathered_head(self.teacher)
            s_h = passes.hidden_states(self.engine, collate(drows, pad_id=self.pad_id))
            s_head = passes.gathered_head(self.engine) if distinct else t_head
            t_logits, s_logits = passes.logits_of(t_h, *t_head), passes.logits_of(s_h, *s_head)
            T = min(t_logits.shape[1], s_logits.shape[1])
            dev = self.engine.device
            db = DistillBatch(
                student_logits_DTV=s_logits[:, :T],
                teacher_logits_DTV=t_logits[:, :T],
                tokens_DT=self._dev(collate(drows, pad_id=self.pad_id)["completion_ids_BT"][:, :T]),
                lengths_D=torch.tensor([min(s.distill_len, T) for s in drows], device=dev),
                weight_D=torch.tensor([s.distill_weight for s in drows], device=dev),
                logp_DT=torch.zeros(len(drows), T, device=dev),
                old_logp_DT=torch.zeros(len(drows), T, device=dev),
            )
            for i, st in zip(didx, self.algo.token_stats(db), strict=True):
                local[i] = st
        keys = sorted(local)
        everyone = sdist.all_gather_objects([local[i] for i in keys])
        return dict(zip(keys, self.algo.token_weights([local[i] for i in keys], everyone), strict=True))

    def _student_pass(self, where, teacher_logits, score_logp, token_w, old, ref, norm):
        """Forward, loss and backward of one micro-batch's rows (distilled rows first): the policy's hidden states
        with grad, its output layer through one module call, log-probs and divergences in [chunk, V] blocks.

        Returns: (the algorithm's LossOut, logp_BT, the collated micro-batch).
        """
        idx, rows, drows = where
        mb = collate(rows, pad_id=self.pad_id)
        tokens = self._dev(mb["completion_ids_BT"])
        h, W, b = passes.policy_head(self.engine, passes.hidden_states(self.engine, mb))
        S = passes.logits_of(h, W, b)
        lengths = self._dev(_completion_lengths(mb))
        logp = passes.completion_logprobs(S, tokens, lengths, temperature=self.loss_temperature, chunk=self._chunk)
        mask = self._dev(mb["mask_BT"])
        old_lp = logp.detach() if old is None else self._dev(_pad([old[i] for i in idx], logp.shape[1]))
        ref_lp = None if ref is None else self._dev(_pad([ref[i] for i in idx], logp.shape[1]))
        distill = None
        if teacher_logits is not None:
            D, Td = len(drows), teacher_logits.shape[1]
            distill = DistillBatch(
                student_logits_DTV=S[:D, :Td],
                teacher_logits_DTV=teacher_logits,
                tokens_DT=tokens[:D, :Td],
                lengths_D=torch.tensor([min(s.distill_len, Td) for s in drows], device=tokens.device),
                weight_D=torch.tensor([s.distill_weight for s in drows], device=tokens.device),
                logp_DT=logp[:D, :Td],
                old_logp_DT=old_lp[:D, :Td],
                token_weight_DT=_pad([token_w[i] for i in idx[:D]], Td).to(tokens.device) if token_w else None,
            )
        batch = PolicyBatch(
            logp_BT=logp,
            old_logp_BT=old_lp,
            mask_BT=mask,
            adv_B=self._dev(mb["adv_B"]),
            ref_logp_BT=ref_lp,
            distill=distill,
            teacher_logp_KBT=score_logp,
        )
        out = self.algo.loss(batch, norm)
        # every rank's backward must reach the output-layer call (its gather in backward is collective)
        self.engine.backward(_in_graph(out.loss * self.world, h, W, b), scale_wrt_gas=False)
        return out, logp, mb

    def _optimizer_step(self, samples, old, ref, max_len) -> dict[str, float]:
        # Distilled rows go first in each micro-batch, so the student logits of the D distilled rows are the
        # view logits[:D] (no copy of a [D, T, V] block).
        plan = [
            sorted(idx, key=lambda i: not samples[i].distilled)
            for idx in plan_micro_batches([s.plan_length for s in samples], self.micro_batch_tokens)
        ]
        kept = [s for s in samples if s.loss_weight > 0]  # masked rows add nothing, so they must not count
        n_tok = sum(len(s.completion_ids) for s in kept)
        d_units = sum(s.distill_units for s in samples if s.distilled)
        tot_tok, tot_seq, tot_units, n_max = sdist.all_reduce([n_tok, len(kept), d_units], op="sum") + sdist.all_reduce(
            [len(plan)], op="max"
        )
        n_max = int(n_max)
        norm = Normalizer(
            num_tokens=max(tot_tok, 1.0),
            num_seqs=max(tot_seq, 1.0),
            max_len=int(self.algo.cfg.loss_scale_len or max_len),
            distill_units=max(tot_units, 1e-12),
        )
        # A teacher pass on any rank at micro-batch j means one on every rank (ZeRO-3 gathers are collective).
        teacher_at = [0.0] * n_max
        if self.teacher is not None:
            local = [float(j < len(plan) and any(samples[i].distilled for i in plan[j])) for j in range(n_max)]
            teacher_at = sdist.all_reduce(local, op="max") if n_max else []
        t0 = time.perf_counter()
        token_w = self._token_prepass(samples, plan, teacher_at) if self.algo.needs_token_prepass else {}
        t_teacher = time.perf_counter() - t0
        metrics: dict[str, float] = {}
        diff_sum = diff_n = 0.0
        for j in range(n_max):
            self.engine.set_gradient_accumulation_boundary(j == n_max - 1)
            rows = [samples[i] for i in plan[j]] if j < len(plan) else []
            drows = [s for s in rows if s.distilled]
            t0 = time.perf_counter()
            teacher_logits = None
            if teacher_at[j]:  # one teacher pass on every rank (dummy input where this rank has no distilled row)
                if drows:
                    teacher_logits = self._teacher_logits(drows)
                else:
                    self._mirror_head_logits(self.teacher)
            T = max((len(s.completion_ids) for s in rows), default=1)
            score_logp = self._score_logps(rows or None, T) if self.algo.num_score_contexts else None
            t_teacher += time.perf_counter() - t0
            if not rows:
                self._dummy_backward()
                self.engine.step()
                continue
            out, logp, mb = self._student_pass(
                [plan[j], rows, drows], teacher_logits, score_logp, token_w, old, ref, norm
            )
            self.engine.step()
            del teacher_logits
            metrics["loss/total"] = metrics.get("loss/total", 0.0) + float(out.loss.detach())
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v)
            with torch.no_grad():  # stale-weight alarm: vLLM's sampling log-probs vs the learner's
                has = self._dev(mb["has_rollout_logp_B"])[:, None] * (
                    self._dev(mb["attention_mask_BL"])[:, -logp.shape[1] :] > 0
                )
                d = (logp.detach().float() - self._dev(mb["rollout_logp_BT"])).abs() * has
                diff_sum += float(d.sum())
                diff_n += float(has.sum())
        self.optimizer_steps += 1
        if self.teacher is not None and self.teacher is not self.engine:
            self._update_teacher()
        # Ranks may have seen different metric names (one with no micro-batch at all): sum over the union.
        keys = sorted({k for part in sdist.all_gather_objects(sorted(metrics)) for k in part})
        summed = sdist.all_reduce([metrics.get(k, 0.0) for k in keys] + [diff_sum, diff_n], op="sum")
        out_m = dict(zip(keys, summed[: len(keys)], strict=True))
        out_m["actor/rollout_logp_abs_diff"] = summed[-2] / max(summed[-1], 1.0)
        out_m["actor/grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out_m["actor/lr"] = float(self.scheduler.get_last_lr()[0])
        if self.teacher is not None:
            out_m["time/teacher_fwd_s"] = t_teacher
        return out_m

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save_state(self, ckpt_dir: Path) -> None:
        """Write this rank's part of a checkpoint; every rank must call it (DeepSpeed's save is collective).

        DeepSpeed's own checkpoint under `policy/` (ZeRO-3 parameter and optimizer shards, the LR schedule), and
        for an EMA / periodic teacher this rank's shard of it. A frozen initial teacher or reference model needs
        nothing: it is the starting model.
        """
        self.engine.save_checkpoint(
            str(ckpt_dir), tag="policy", client_state={"optimizer_steps": self.optimizer_steps}, save_latest=False
        )
        if self._teacher_has_state:
            shards = {n: _shard(p).detach().clone() for n, p in self.teacher.module.named_parameters()}
            torch.save(shards, Path(ckpt_dir) / f"teacher_rank_{self.rank:05d}.pt")

    def load_state(self, ckpt_dir: Path) -> None:
        """Restore what `save_state` wrote (the same world size; DeepSpeed's shards are per rank)."""
        path, client = self.engine.load_checkpoint(
            str(ckpt_dir), tag="policy", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"{ckpt_dir}/policy holds no DeepSpeed checkpoint for this world size")
        self.optimizer_steps = int(client["optimizer_steps"])
        if self._teacher_has_state:
            f = Path(ckpt_dir) / f"teacher_rank_{self.rank:05d}.pt"
            if not f.exists():
                raise FileNotFoundError(f"{f} is missing: the checkpoint was written without this teacher")
            shards = torch.load(f, map_location="cpu")
            with torch.no_grad():
                for n, p in self.teacher.module.named_parameters():
                    _shard(p).copy_(shards[n])

    @property
    def _teacher_has_state(self) -> bool:
        return self.teacher is not None and self.teacher_kind in ("ema", "periodic")

    # ---- export --------------------------------------------------------------------------------------
    def save_hf(self, out_dir: str | Path, *, tokenizer=None) -> Path | None:
        """Write the current policy in Hugging Face format (rank 0), atomically; every rank must call this."""
        from sposd.sync.weights import iter_gathered_params

        out_dir = Path(out_dir)
        state = {n: t.cpu() for n, t in iter_gathered_params(self.module)}
        if self.rank != 0:
            return None
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        return out_dir


def _shard(p: torch.nn.Parameter) -> torch.Tensor:
    """This rank's part of a parameter: its ZeRO-3 partition, or the whole tensor without ZeRO-3."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


def _pad(rows: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        n = min(r.numel(), T)
        out[i, :n] = r[:n]
    return out


def _completion_lengths(mb: dict) -> torch.Tensor:
    """Tokens in each row's completion: [B] (the attended columns of the right-padded completion block)."""
    T = mb["completion_ids_BT"].shape[1]
    return mb["attention_mask_BL"][:, -T:].sum(-1)


def _in_graph(loss: torch.Tensor, *tensors: torch.Tensor | None) -> torch.Tensor:
    """loss + 0 x one entry of each tensor: backward then reaches whatever produced them, on every rank."""
    for t in tensors:
        if t is not None:
            loss = loss + t.reshape(-1)[:1].sum() * 0.0
    return loss
