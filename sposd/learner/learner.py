"""DeepSpeed learner: ZeRO-3 (gloo on CPU, NCCL + bf16 on GPU), token-budget micro-batches, AdamW, schedules.

Loss normalisation is global: the algorithm divides by token/sequence counts summed over every micro-batch and
every rank (exchanged before the first forward). DeepSpeed must then neither divide by its accumulation steps
(`scale_wrt_gas=False`) nor leave its data-parallel gradient *average* uncorrected, so each rank's loss is
multiplied by the world size: the averaged gradient is then exactly the gradient of the global loss.

Per optimiser step, in order, whatever the algorithm (it only answers the `Algorithm` hooks):
    token pre-pass      (`needs_token_prepass`) teacher + student hidden states, statistics in [chunk, V] blocks,
                        all-gathered -> per-token weights (TIP's selection, SRPO's weights)
    per micro-batch     distillation teacher pass ([teacher context | completion], no padding between);
                        K scoring passes (`num_score_contexts`); the student pass: loss, backward
    after the step      EMA / periodic teacher update (`teacher.py`)
Every pass gives final hidden states and the output layer, never [rows, T, V] logits: log-probs, entropies and
divergences are computed in [chunk, V] blocks and recomputed in backward (`passes.py`, `sposd.ops.fused`).
Every ZeRO-3 collective (a module's parameter gather, an explicit GatheredParameters) happens in the same order
on every rank: the passes come from `learner.plan` (built from every rank's counts before the first pass), and a
rank without rows for a pass runs it on empty input (`passes.run_empty`, which interprets the pass's ops).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sposd import dist as sdist
from sposd.algos.base import DistillBatch, Normalizer, PolicyBatch
from sposd.errors import UserError
from sposd.learner import passes
from sposd.learner.batching import LearnerSample, collate
from sposd.learner.deepspeed import (
    ds_config,
    forget_stale_deepspeed_groups,
    frozen_copy,
    initialize_policy,
    load_model,
    load_policy_state,
    lr_lambda,  # noqa: F401 (re-exported: the learner's LR schedule)
    save_hf,
    save_policy_state,
    use_cached_torch_extensions,
)
from sposd.learner.memory import PeakMemory
from sposd.learner.plan import (
    PassShape,
    Row,
    StepPlan,
    balance_ranks,
    build_step_plan,
    local_micro_batches,
    logp_schedule,
    summarize,
)
from sposd.learner.teacher import TeacherWeights
from sposd.models.lora import DEFAULT_ADAPTER, AdapterDisabled, apply_lora
from sposd.ops.logprobs import sampled_token_logprobs


class DeepSpeedLearner:
    """Owns the trainable policy (and, when the algorithm needs one, a frozen reference copy).

    Args:
        model_path: HF-format directory or hub id of the starting policy.
        algo: the `sposd.algos.Algorithm` supplying the loss (the learner never looks at its name).
        optim: `OptimCfg`-like object (lr, weight_decay, betas, eps, warmup_steps, schedule, min_lr_ratio, grad_clip).
        total_steps: optimiser steps the schedule spans.
        loss_temperature: logits are divided by this before log-softmax (= rollout temperature).
        rollout_top_k, rollout_top_p: the rollout's truncation; the stale-weight alarm compares vLLM's log-probs
            with the learner's under the same truncated distribution (vLLM's `processed_logprobs`).
        lora: a `LoraCfg` (rank > 0: peft adapters on its targets, the base frozen; the initial teacher and the KL
            reference are then the policy with the adapter off, `sposd.models.lora.AdapterDisabled`), or None.
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
        fp32_grad_accum: bool = True,
        balance_ranks: bool = True,
        rollout_top_k: int = -1,
        rollout_top_p: float = 1.0,
        lora=None,
        share_prompts: bool = True,
    ) -> None:
        use_cached_torch_extensions()
        self.algo, self.device, self.pad_id = algo, device, pad_id
        self.micro_batch_tokens, self.loss_temperature = micro_batch_tokens, loss_temperature
        self.rollout_top_k, self.rollout_top_p = rollout_top_k, rollout_top_p
        # transformers drops the key/value cache under gradient checkpointing: no shared prompts then
        self.share_prompts = share_prompts and not gradient_checkpointing
        self.rank, self.world = sdist.init_distributed(device)
        forget_stale_deepspeed_groups()
        cfg = ds_config(
            dtype=dtype,
            zero_stage=zero_stage,
            grad_clip=optim.grad_clip,
            offload_optimizer=offload_optimizer,
            offload_params=offload_params,
            fp32_grad_accum=fp32_grad_accum,
        )
        model = load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code, ds_cfg=cfg)
        self.lora = lora if lora is not None and lora.rank > 0 else None
        self.peft_model = None
        if self.lora is not None:  # before DeepSpeed: it partitions (and optimises) the adapters with the rest
            self.peft_model = apply_lora(model, rank=self.lora.rank, alpha=self.lora.scale_alpha,
                                         dropout=self.lora.dropout, targets=list(self.lora.targets))
            model = self.peft_model.base_model.model  # the model itself, adapters injected: HF names and passes
        if gradient_checkpointing:
            # non-reentrant (transformers' default), which also makes the embeddings' output require grad, so a
            # frozen base still back-propagates into the adapters; DeepSpeed >= 0.19.3 keeps frozen parameters
            # gathered through the recompute (DeepSpeed#8148, transformers#47254)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        # from_pretrained returns a model in eval mode, where transformers' layers skip checkpointing altogether
        # (`self.gradient_checkpointing and self.training`): the policy trains in train mode (Qwen3's dropout is 0)
        model.train()
        self.engine, self.optimizer, self.scheduler = initialize_policy(
            model, optim=optim, total_steps=total_steps, cfg=cfg, device=device
        )

        def make_copy():
            if self.peft_model is not None:
                return self._base_model_engine(algo.teacher_weights)
            return frozen_copy(model_path, dtype=dtype, trust_remote_code=trust_remote_code, cfg=cfg)

        self.ref = make_copy() if algo.needs_ref else None
        kind = algo.teacher_weights
        self.teacher_weights = TeacherWeights(
            kind,
            policy=self.engine,
            ref=self.ref,
            make_copy=make_copy,
            ema_rate=algo.teacher_ema_rate if kind == "ema" else 0.0,
            update_every=algo.teacher_update_every if kind == "periodic" else 1,
        )
        self.teacher_kind, self.teacher = kind, self.teacher_weights.engine
        self.shape = PassShape(
            has_teacher=self.teacher is not None,
            teacher_distinct=self.teacher is not None and self.teacher is not self.engine,
            prepass=bool(algo.needs_token_prepass),
            score_contexts=algo.num_score_contexts,
            partner=bool(getattr(algo, "needs_partner_pass", False)),
        )
        self.optimizer_steps = 0
        self.balance = balance_ranks
        # `sposd inspect`'s tap (sposd.inspect.record.InspectTap), set by the loop on steps it records: called with
        # each micro-batch's distilled rows and their DistillBatch before the loss; reads them, changes nothing
        self.inspect_tap = None

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def _base_model_engine(self, teacher_kind: str | None) -> AdapterDisabled:
        """A LoRA run's starting model: the policy's engine with the adapter off (no second copy of the weights).
        EMA and periodic teachers would need a second adapter; they are refused."""
        if teacher_kind in ("ema", "periodic"):
            raise UserError(
                f"teacher weights {teacher_kind!r} are not supported with LoRA (model.lora.rank="
                f"{self.lora.rank}): use teacher current or initial (the base model with the adapter off)"
            )
        return AdapterDisabled(self.engine, self.peft_model)

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.engine.device, non_blocking=True)

    @property
    def _chunk(self) -> int:
        return self.algo.cfg.distill.chunk_tokens

    def _logp(self, engine, mb: dict) -> torch.Tensor:
        """Log-prob of each completion token under `engine`'s model: [B, T] (fp32; 0 beyond each completion)."""
        return passes.logprobs(engine, mb, temperature=self.loss_temperature, chunk=self._chunk)

    def _collate(self, rows: list[LearnerSample]) -> dict:
        return collate(rows, pad_id=self.pad_id, share_prompts=self.share_prompts)

    def _teacher_mb(self, rows: list[LearnerSample], contexts: list[list[int]]) -> dict:
        return passes.teacher_mb(rows, contexts, pad_id=self.pad_id, share_prompts=self.share_prompts)

    @torch.no_grad()
    def _teacher_logits(self, rows: list[LearnerSample]):
        """Teacher logits on [teacher context | the student's completion] for each row, [D, T, V] as hidden states
        and the teacher's output layer (`HiddenLogits`), aligned with the student on completion positions."""
        return passes.head_logits(self.teacher, self._teacher_mb(rows, [s.teacher_prompt_ids for s in rows]))

    @torch.no_grad()
    def _partner_logits(self, rows: list[LearnerSample]):
        """The teacher's logits under each row's partner context (PAINT's full solution; a row without one: its
        teacher context again), as `HiddenLogits` aligned like `_teacher_logits`."""
        ctxs = [s.partner_prompt_ids or s.teacher_prompt_ids for s in rows]
        return passes.head_logits(self.teacher, self._teacher_mb(rows, ctxs))

    def _score_logps(self, rows: list[LearnerSample], T: int) -> torch.Tensor:
        """Teacher log-probs of every completion token under each row's K scoring contexts: [K, B, T] (fp32)."""
        K = self.algo.num_score_contexts
        out = torch.zeros(K, len(rows), T, device=self.engine.device)
        for k in range(K):
            tmb = self._teacher_mb(rows, [s.score_prompt_ids[k] if s.score_prompt_ids else s.prompt_ids for s in rows])
            lp = self._logp(self.teacher, tmb)
            out[k, :, : lp.shape[1]] = lp
        return out

    def _run_empty(self, p) -> None:
        engines = {"policy": self.engine, "teacher": self.teacher, "ref": self.ref}
        passes.run_empty(p.ops, engines, self.pad_id, share_prompts=self.share_prompts)

    def _plan_step(self, samples: list[LearnerSample]) -> StepPlan:
        """The step's plan: this rank's micro-batches, then one exchange of every rank's summary (the only
        collective before the first pass), from which every rank builds the same schedule."""
        rows = [Row.of(s) for s in samples]
        micro_batches = local_micro_batches(rows, self.micro_batch_tokens, share_prompts=self.share_prompts)
        summaries = sdist.all_gather_objects(summarize(rows, micro_batches))
        return build_step_plan(micro_batches, summaries, self.shape)

    def train_step(self, samples: list[LearnerSample], *, max_len: int) -> dict[str, float]:
        """One rollout batch -> ppo_epochs x num_minibatches optimiser steps. Returns rank-summed metrics."""
        cfg = self.algo.cfg
        if self.balance and self.world > 1:
            samples = self._rebalanced(samples)
        # The same number of optimiser steps on every rank (each is a series of collectives): as many mini-batches
        # as asked, but no more than the rank with the fewest samples can fill.
        fewest = -sdist.all_reduce([-len(samples)], op="max")[0]
        n_mini = max(1, min(cfg.num_minibatches, int(fewest)))
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

    def _rebalanced(self, samples: list[LearnerSample]) -> list[LearnerSample]:
        """This rank's share of every rank's samples, reassigned by token count (`plan.balance_ranks`): each ZeRO-3
        gather waits for the slowest rank. The global loss, hence the gradient, does not depend on the split."""
        everyone = [s for part in sdist.all_gather_objects(samples) for s in part]
        assign = balance_ranks([len(s.prompt_ids) + len(s.completion_ids) for s in everyone], self.world)
        return [everyone[i] for i in assign[self.rank]]

    @torch.no_grad()
    def _no_grad_logps(self, engine, samples: list[LearnerSample]) -> list[torch.Tensor]:
        """Per-sample log-probs (unpadded, on CPU), computed with the same micro-batching as training."""
        out: list[torch.Tensor | None] = [None] * len(samples)
        rows = [Row.of(s) for s in samples]
        micro_batches = local_micro_batches(rows, self.micro_batch_tokens, share_prompts=self.share_prompts)
        counts = sdist.all_gather_objects(len(micro_batches))
        for idx, p in logp_schedule(micro_batches, counts, "ref" if engine is self.ref else "policy"):
            if not idx:
                self._run_empty(p)
                continue
            lp = self._logp(engine, self._collate([samples[i] for i in idx])).float().cpu()
            for r, i in enumerate(idx):
                out[i] = lp[r, : len(samples[i].completion_ids)]
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _token_prepass(self, samples, step: StepPlan) -> dict[int, torch.Tensor]:
        """Per-token weights of every distilled sample (`Algorithm.token_weights`), from statistics computed over
        the whole batch before any loss pass: TIP's selection, SRPO's entropy weights normalised over the batch.

        Both models give hidden states and the statistics are computed in [chunk, V] blocks, in the order of
        `plan.prepass_ops`. A rank without distilled rows at a micro-batch runs its prepass empty.
        """
        local: dict[int, torch.Tensor] = {}
        for p in (p for p in step.passes if p.kind == "prepass"):
            didx = [i for i in step.rows[p.micro_batch] if samples[i].distilled]
            if not didx:
                self._run_empty(p)
                continue
            drows = [samples[i] for i in didx]
            smb = self._collate(drows)
            t_h = passes.hidden_states(self.teacher, self._teacher_mb(drows, [s.teacher_prompt_ids for s in drows]))
            s_h = passes.hidden_states(self.engine, smb)
            t_head = passes.gathered_head(self.teacher)
            s_head = passes.gathered_head(self.engine) if self.teacher is not self.engine else t_head
            T = min(t_h.shape[1], s_h.shape[1])
            dev = self.engine.device
            db = DistillBatch(
                student_logits_DTV=passes.logits_of(s_h[:, :T], *s_head),
                teacher_logits_DTV=passes.logits_of(t_h[:, :T], *t_head),
                tokens_DT=self._dev(smb["completion_ids_BT"][:, :T]),
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

    def _student_pass(self, idx, rows, drows, teachers, score_logp, token_w, old, ref, norm):
        """Forward, loss and backward of one micro-batch's rows (distilled rows first): the policy's hidden states
        with grad, its output layer through one module call, log-probs and divergences in [chunk, V] blocks.

        Returns: (the algorithm's LossOut, logp_BT, the collated micro-batch).
        """
        mb = self._collate(rows)
        tokens = self._dev(mb["completion_ids_BT"])
        h, W, b = passes.policy_head(self.engine, passes.hidden_states(self.engine, mb))
        S = passes.logits_of(h, W, b)
        lengths = self._dev(passes.completion_lengths(mb))
        logp = passes.completion_logprobs(S, tokens, lengths, temperature=self.loss_temperature, chunk=self._chunk)
        old_lp = logp.detach() if old is None else self._dev(_pad([old[i] for i in idx], logp.shape[1]))
        ref_lp = None if ref is None else self._dev(_pad([ref[i] for i in idx], logp.shape[1]))
        distill, (teacher_logits, partner_logits) = None, teachers
        if teacher_logits is not None:
            D, Td = len(drows), teacher_logits.shape[1]
            distill = DistillBatch(
                student_logits_DTV=S[:D, :Td],
                teacher_logits_DTV=teacher_logits,
                partner_logits_DTV=partner_logits,
                tokens_DT=tokens[:D, :Td],
                lengths_D=torch.tensor([min(s.distill_len, Td) for s in drows], device=tokens.device),
                weight_D=torch.tensor([s.distill_weight for s in drows], device=tokens.device),
                logp_DT=logp[:D, :Td],
                old_logp_DT=old_lp[:D, :Td],
                token_weight_DT=_pad([token_w[i] for i in idx[:D]], Td).to(tokens.device) if token_w else None,
            )
        if distill is not None and self.inspect_tap is not None:
            self.inspect_tap(drows, distill)
        batch = PolicyBatch(
            logp_BT=logp,
            old_logp_BT=old_lp,
            mask_BT=self._dev(mb["mask_BT"]),
            adv_B=self._dev(mb["adv_B"]),
            ref_logp_BT=ref_lp,
            distill=distill,
            teacher_logp_KBT=score_logp,
        )
        out = self.algo.loss(batch, norm)
        # every rank's backward must reach the output-layer call (its gather in backward is collective)
        self.engine.backward(passes.in_graph(out.loss * self.world, h, W, b), scale_wrt_gas=False)
        return out, self._sampled_logp(S, tokens, logp), mb

    @torch.no_grad()
    def _sampled_logp(self, S, tokens: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """The log-probs of the distribution the rollout sampled from (for the stale-weight alarm): `logp` itself
        without top-k / top-p truncation, else recomputed under the same truncation, block by block."""
        if not (0 < self.rollout_top_k < S.shape[-1] or self.rollout_top_p < 1.0):
            return logp
        return sampled_token_logprobs(
            S.detach(),
            tokens,
            temperature=self.loss_temperature,
            top_k=self.rollout_top_k,
            top_p=self.rollout_top_p,
            chunk_tokens=self._chunk,
        ).clamp(min=-1e4)  # a token outside the learner's kept set: a large, finite alarm

    def _optimizer_step(self, samples, old, ref, max_len) -> dict[str, float]:
        # Distilled rows go first in each micro-batch (their student logits are the leading D rows). Every rank
        # runs the plan's passes in order.
        step = self._plan_step(samples)
        plan, teacher_at, n_max = step.rows, step.teacher_at, step.num_micro_batches
        lr = float(self.scheduler.get_last_lr()[0])  # the rate this update applies (the scheduler steps after it)
        norm = Normalizer(
            num_tokens=max(step.num_tokens, 1.0),
            num_seqs=max(step.num_seqs, 1.0),
            max_len=int(self.algo.cfg.loss_scale_len or max_len),
            distill_units=max(step.distill_units, 1e-12),
        )
        t0 = time.perf_counter()
        token_w = self._token_prepass(samples, step) if self.algo.needs_token_prepass else {}
        t_teacher = time.perf_counter() - t0
        metrics: dict[str, float] = {}
        diff = [0.0, 0.0]  # |vLLM - learner| log-prob sum, positions
        for j in range(n_max):
            self.engine.set_gradient_accumulation_boundary(j == n_max - 1)
            rows = [samples[i] for i in plan[j]]
            drows = [s for s in rows if s.distilled]
            t0 = time.perf_counter()
            teacher_logits = partner_logits = None
            if teacher_at[j]:
                if drows:
                    teacher_logits = self._teacher_logits(drows)
                    if self.shape.partner:
                        partner_logits = self._partner_logits(drows)
                else:
                    for p in step.at(j, "teacher") + step.at(j, "partner"):
                        self._run_empty(p)
            if not rows:
                for p in step.at(j, "score") + step.at(j, "student"):
                    self._run_empty(p)
                t_teacher += time.perf_counter() - t0
                continue
            T = max(len(s.completion_ids) for s in rows)
            score_logp = self._score_logps(rows, T) if self.algo.num_score_contexts else None
            t_teacher += time.perf_counter() - t0
            out, sampled_lp, mb = self._student_pass(
                plan[j], rows, drows, (teacher_logits, partner_logits), score_logp, token_w, old, ref, norm
            )
            self.engine.step()
            del teacher_logits, partner_logits
            self._add_metrics(metrics, diff, out, sampled_lp, mb)
        self.optimizer_steps += 1
        self.teacher_weights.after_optimizer_step(self.optimizer_steps)
        # Ranks may have seen different metric names (one with no micro-batch at all): sum over the union.
        keys = sorted({k for part in sdist.all_gather_objects(sorted(metrics)) for k in part})
        summed = sdist.all_reduce([metrics.get(k, 0.0) for k in keys] + diff, op="sum")
        out_m = dict(zip(keys, summed[: len(keys)], strict=True))
        out_m["actor/rollout_logp_abs_diff"] = summed[-2] / max(summed[-1], 1.0)
        out_m["actor/grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out_m["actor/lr"] = lr
        if self.teacher is not None:
            out_m["time/teacher_fwd_s"] = t_teacher
        return out_m

    @torch.no_grad()
    def _add_metrics(self, metrics: dict[str, float], diff: list[float], out, logp, mb) -> None:
        """Add one micro-batch's loss metrics, and the stale-weight alarm: vLLM's sampling log-probs vs ours."""
        metrics["loss/total"] = metrics.get("loss/total", 0.0) + float(out.loss.detach())
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + float(v)
        has = self._dev(mb["has_rollout_logp_B"])[:, None] * (
            self._dev(mb["attention_mask_BL"])[:, -logp.shape[1] :] > 0
        )
        d = (logp.detach().float() - self._dev(mb["rollout_logp_BT"])).abs() * has
        diff[0] += float(d.sum())
        diff[1] += float(has.sum())

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save_state(self, ckpt_dir: Path) -> None:
        """Write this rank's part of a checkpoint; every rank must call it (DeepSpeed's save is collective).

        DeepSpeed's own checkpoint under `policy/` (ZeRO-3 parameter and optimizer shards, the LR schedule), and
        for an EMA / periodic teacher this rank's shard of it. A frozen initial teacher or reference model needs
        nothing: it is the starting model. A LoRA policy saves its adapter and the adapter's optimizer state only
        (the frozen base is the starting model, read again on resume), plus model/adapter_config.json (rank,
        alpha, targets, the base model's path) for `sposd export`.
        """
        save_policy_state(self.engine, ckpt_dir, optimizer_steps=self.optimizer_steps,
                          trainable_only=self.lora is not None)
        if self.peft_model is not None and self.rank == 0:  # what export needs besides the adapter: its base
            self.peft_model.peft_config[DEFAULT_ADAPTER].save_pretrained(str(Path(ckpt_dir) / "model"))
        self.teacher_weights.save(ckpt_dir, rank=self.rank)

    def load_state(self, ckpt_dir: Path) -> None:
        """Restore what `save_state` wrote (the same world size; DeepSpeed's shards are per rank)."""
        self.optimizer_steps = load_policy_state(self.engine, ckpt_dir, trainable_only=self.lora is not None)
        self.teacher_weights.load(ckpt_dir, rank=self.rank)

    # ---- export --------------------------------------------------------------------------------------
    def save_hf(self, out_dir: str | Path, *, tokenizer=None) -> Path | None:
        """Write the current policy in Hugging Face format (rank 0), atomically; every rank must call this."""
        return save_hf(self.module, out_dir, rank=self.rank, tokenizer=tokenizer)


def _pad(rows: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        n = min(r.numel(), T)
        out[i, :n] = r[:n]
    return out
