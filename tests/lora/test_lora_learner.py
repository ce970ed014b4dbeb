"""A LoRA learner on the real DeepSpeed ZeRO-3 engine (one gloo rank, tiny model, no vLLM).

- Only the adapters train: the optimizer holds exactly the LoRA parameters, the base is bit-for-bit unchanged
  after a step, the adapters moved.
- The initial teacher and the KL reference are the policy with the adapter off: no second model is built, and
  their log-probs equal a plain transformers model's built without LoRA (after a step, so the adapter is non-zero).
- The merged weights the sync streams give a plain model the learner's own log-probs.
- Gradient checkpointing with a frozen base under ZeRO-3 (frozen parameters partitioned, the DeepSpeed#8148
  trap): the adapters' gradients equal those without checkpointing.
"""

from __future__ import annotations

import pytest
import torch

from sposd.config import LoraCfg
from sposd.learner.batching import LearnerSample, collate

pytestmark = pytest.mark.integration

LORA = LoraCfg(rank=4, alpha=8.0)


class _Optim:
    lr, weight_decay, betas, eps = 1e-2, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


ROWS = [  # (student prompt, teacher context, completion)
    ([5, 6, 7], [5, 6, 7, 40, 41, 42, 43, 44], [20, 21, 22, 23]),
    ([5, 8], [5, 8, 50], [30, 31]),
    ([9, 10, 11, 12], [9, 10, 11, 12, 60, 61, 62, 63, 64, 65, 66], [33, 34, 35, 36, 37, 38]),
]


def _samples():
    return [
        LearnerSample(p, c, 0.0, teacher_prompt_ids=t, distill_weight=1.0, distill_len=len(c),
                      distill_units=float(len(c)))
        for p, t, c in ROWS
    ]


def lora_learner(path, *, lora=LORA, kl_coef=0.0, teacher="initial", gradient_checkpointing=False, **kw):
    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg, DistillCfg
    from sposd.learner.learner import DeepSpeedLearner

    d = DistillCfg(coef=1.0, context="reference_solution", normalize="token_mean", teacher=teacher)
    algo = get_algo("opsd")(AlgoCfg(name="opsd", group_size=1, rl_coef=1.0 if kl_coef else 0.0, dual_clip_c=None,
                                    kl_coef=kl_coef, distill=d))
    return DeepSpeedLearner(str(path), algo=algo, optim=_Optim, total_steps=10, device="cpu", dtype="float32",
                            zero_stage=3, micro_batch_tokens=4096, pad_id=0, lora=lora,
                            gradient_checkpointing=gradient_checkpointing, **kw)


def gathered(module, names=None) -> dict[str, torch.Tensor]:
    import deepspeed

    out = {}
    for n, p in module.named_parameters():
        if names is None or n in names:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                out[n] = p.data.detach().clone()
    return out


def _plain_logps(model, rows_ctx) -> list[torch.Tensor]:
    out = []
    for ctx, comp in rows_ctx:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ctx + comp])).logits[0, len(ctx) - 1 : -1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(comp)[:, None])[:, 0])
    return out


def test_only_adapters_train_and_the_initial_teacher_is_the_base_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sposd.models.lora import AdapterDisabled

    learner = lora_learner(tiny_model_dir, kl_coef=0.1)
    names = [n for n, _ in learner.module.named_parameters()]
    trainable = [n for n, p in learner.module.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 4 layers x 7 targets x (A + B)
    assert len(trainable) == 4 * 7 * 2
    in_optimizer = {id(p) for group in learner.optimizer.fp16_groups for p in group}  # ZeRO-3's optimised params
    assert in_optimizer == {id(p) for p in learner.module.parameters() if p.requires_grad}
    # no second model: the teacher and the reference wrap the policy's own engine
    assert isinstance(learner.teacher, AdapterDisabled) and learner.teacher.engine is learner.engine
    assert learner.ref is learner.teacher
    assert learner.shape.teacher_distinct  # separate passes, same weights

    before = gathered(learner.module)
    learner.train_step(_samples(), max_len=8)
    after = gathered(learner.module)
    assert all(torch.equal(before[n], after[n]) for n in names if n not in trainable)  # the base is untouched
    assert any(not torch.equal(before[n], after[n]) for n in trainable if ".lora_B." in n)  # B left zero

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    want = _plain_logps(plain, [(t, c) for _, t, c in ROWS])
    mb = learner._teacher_mb(_samples(), [t for _, t, _ in ROWS])
    got = learner._logp(learner.teacher, mb)
    for r, (_, _, comp) in enumerate(ROWS):
        torch.testing.assert_close(got[r, : len(comp)], want[r], rtol=0, atol=1e-6)
    # ... and the policy itself is no longer the base model (the adapter is on for it)
    policy = learner._logp(learner.engine, mb)
    assert (policy[0, :4] - want[0]).abs().max() > 1e-4


def test_merged_sync_weights_give_a_plain_model_the_learners_log_probs(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sposd.sync.weights import iter_gathered_params

    learner = lora_learner(tiny_model_dir)
    learner.train_step(_samples(), max_len=8)
    learner.train_step(_samples(), max_len=8)
    merged = dict(iter_gathered_params(learner.module, bucket_bytes=1 << 16))  # many buckets: units stay whole
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert set(merged) == {n for n, _ in plain.named_parameters()}
    plain.load_state_dict(merged, strict=False)
    want = _plain_logps(plain, [(p, c) for p, _, c in ROWS])
    got = learner._logp(learner.engine, collate(_samples(), pad_id=0))
    for r, (_, _, comp) in enumerate(ROWS):
        torch.testing.assert_close(got[r, : len(comp)], want[r], rtol=0, atol=1e-5)


def test_ema_teacher_is_refused_in_one_line(tiny_model_dir):
    from sposd.errors import UserError

    with pytest.raises(UserError, match="teacher weights 'ema' are not supported with LoRA"):
        lora_learner(tiny_model_dir, teacher="ema")


def _adapter_grads(path, *, gradient_checkpointing: bool, monkeypatch) -> dict[str, torch.Tensor]:
    """The adapters' full gradients after one student pass's backward (before the optimizer step)."""
    from deepspeed.utils import safe_get_full_grad

    import sposd.learner.learner as L
    from sposd.learner import passes

    real = L.ds_config

    def every_param_partitioned(**kw):  # frozen norms partitioned too: what the recompute trap needs
        cfg = real(**kw)
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        return cfg

    monkeypatch.setattr(L, "ds_config", every_param_partitioned)
    torch.manual_seed(0)  # the same adapter initialisation in both learners
    learner = lora_learner(path, gradient_checkpointing=gradient_checkpointing)
    with torch.no_grad():  # B = 0 at start would leave A's gradient 0: give both a signal
        for n, p in learner.module.named_parameters():
            if ".lora_B." in n:
                p.ds_tensor.normal_(0, 0.1, generator=torch.Generator().manual_seed(hash(n) % 2**31))
    layer = learner.module.model.layers[0]
    assert layer.training and layer.gradient_checkpointing == gradient_checkpointing  # checkpointing really runs
    mb = collate(_samples(), pad_id=0)
    h = passes.hidden_states(learner.engine, mb)
    hh, W, b = passes.policy_head(learner.engine, h)
    logp = passes.completion_logprobs(passes.logits_of(hh, W, b), mb["completion_ids_BT"],
                                      passes.completion_lengths(mb), temperature=1.0, chunk=64)
    learner.engine.set_gradient_accumulation_boundary(True)
    learner.engine.backward(-logp.sum(), scale_wrt_gas=False)
    return {n: safe_get_full_grad(p).clone() for n, p in learner.module.named_parameters() if p.requires_grad}


def test_gradient_checkpointing_with_a_frozen_base_gives_the_same_adapter_gradients(tiny_model_dir, monkeypatch):
    plain = _adapter_grads(tiny_model_dir, gradient_checkpointing=False, monkeypatch=monkeypatch)
    ckpt = _adapter_grads(tiny_model_dir, gradient_checkpointing=True, monkeypatch=monkeypatch)
    assert set(plain) == set(ckpt) and len(plain) == 56
    assert all(g.abs().sum() > 0 for n, g in plain.items() if ".lora_A." in n)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-7)
