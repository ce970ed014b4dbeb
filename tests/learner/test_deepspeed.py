"""The learner's DeepSpeed plumbing: config, CPU Adam under optimizer offload, rank-0-only export.

- fp32 gradient accumulation is the default and can be turned off (GPU_AUDIT F12).
- `offload_optimizer=True` trains with DeepSpeed's CPU Adam (a client torch AdamW makes `deepspeed.initialize`
  raise under ZeRO-Offload, GPU_AUDIT F3), and two steps of it equal two steps of torch's AdamW.
  The CPU Adam op is JIT-built with the machine's C++ compiler the first time (g++; about 1.5 min of CPU,
  3.5 min of wall time on a busy 2-core machine), then loaded from TORCH_EXTENSIONS_DIR
  (~/.cache/sposd/torch_extensions).
- `save_hf` on two ranks: both consume every gathered parameter, only rank 0 keeps host copies (F18).
"""

from __future__ import annotations

import pytest
import torch
from two_ranks import run_ranks

from sposd.learner.batching import LearnerSample
from sposd.learner.deepspeed import cpu_adam_threads, ds_config, host_state_dict


def _cfg(**kw):
    base = dict(dtype="bfloat16", zero_stage=3, grad_clip=1.0, offload_optimizer=False, offload_params=False)
    return ds_config(**{**base, **kw})


def test_gradients_accumulate_in_fp32_unless_turned_off():
    assert _cfg()["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in _cfg(fp32_grad_accum=False)  # DeepSpeed's default: the model dtype


def test_offload_puts_the_optimizer_state_in_cpu_memory():
    assert _cfg(offload_optimizer=True)["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_optimizer" not in _cfg()["zero_optimization"]


def test_cpu_adam_threads_share_the_cores_among_local_ranks():
    assert cpu_adam_threads(cores=16, local_ranks=8) == 2
    assert cpu_adam_threads(cores=2, local_ranks=8) == 1  # never 0
    assert cpu_adam_threads(cores=7, local_ranks=0) == 7


def test_host_state_dict_consumes_everything_but_keeps_copies_only_when_asked():
    seen = []

    def named():
        for i in range(3):
            seen.append(i)
            yield f"p{i}", torch.full((2,), float(i))

    assert host_state_dict(named(), keep=False) == {} and seen == [0, 1, 2]
    kept = host_state_dict(named(), keep=True)
    assert list(kept) == ["p0", "p1", "p2"] and kept["p2"].device.type == "cpu"


class _Optim:
    lr, weight_decay, betas, eps = 1e-2, 0.01, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


def _grpo_learner(path, **kw):
    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg
    from sposd.learner.learner import DeepSpeedLearner

    return DeepSpeedLearner(
        str(path),
        algo=get_algo("grpo")(AlgoCfg(name="grpo")),
        optim=_Optim,
        total_steps=10,
        device="cpu",
        dtype="float32",
        zero_stage=3,
        micro_batch_tokens=4096,
        pad_id=0,
        **kw,
    )


SAMPLES = [
    LearnerSample([5, 6, 7], [20, 21, 22, 23], 1.0),
    LearnerSample([5, 8], [30, 31], -1.0),
    LearnerSample([9, 10, 11, 12], [33, 34, 35, 36, 37, 38], 0.5),
]


def _gathered(module) -> dict[str, torch.Tensor]:
    from sposd.sync.weights import iter_gathered_params

    return {n: t.clone() for n, t in iter_gathered_params(module)}


@pytest.mark.integration
def test_offloaded_optimizer_is_cpu_adam_and_matches_torch_adamw(tiny_model_dir):
    import gc

    from sposd.learner.deepspeed import cpu_adam_buildable, use_cached_torch_extensions

    use_cached_torch_extensions()
    if not cpu_adam_buildable():
        pytest.skip("DeepSpeed's CPU Adam needs a C++ compiler to build once: apt-get install g++")

    from deepspeed.ops.adam import DeepSpeedCPUAdam

    results = []
    for offload in (True, False):
        learner = _grpo_learner(tiny_model_dir, offload_optimizer=offload)
        assert isinstance(learner.optimizer.optimizer, DeepSpeedCPUAdam) == offload
        theta0 = _gathered(learner.module)
        losses = [learner.train_step(SAMPLES, max_len=8)["loss/total"] for _ in range(2)]
        theta2 = _gathered(learner.module)
        assert all(loss == loss for loss in losses)  # finite
        assert any((theta2[n] - theta0[n]).abs().max() > 1e-4 for n in theta0)  # lr 1e-2: the weights moved
        results.append((losses, theta2))
        del learner
        gc.collect()
    (loss_cpu, theta_cpu), (loss_torch, theta_torch) = results
    assert loss_cpu == pytest.approx(loss_torch, rel=1e-5, abs=1e-6)
    # The same AdamW (decoupled weight decay) up to fp32 rounding. DeepSpeed's vectorised CPU Adam orders its
    # arithmetic differently, which shows where sqrt(v) is near eps: on an AMD EPYC, 1 of 4096 elements of a
    # weight (~0.04) differed by 2.4e-6 after 2 steps at lr 1e-2. Another update rule would move most elements:
    # coupled weight decay (0.01) shifts each by about lr * wd * |theta| = 4e-6 per step. So: nearly every element
    # within the tight tolerance, and all within 1e-5 (0.05% of the 2-step update, 2e-2).
    for n in theta_torch:
        tight = torch.isclose(theta_cpu[n], theta_torch[n], atol=1e-6, rtol=1e-5)
        assert tight.float().mean().item() >= 0.999, (n, int((~tight).sum()), tight.numel())
        torch.testing.assert_close(theta_cpu[n], theta_torch[n], atol=1e-5, rtol=1e-5)


@pytest.mark.integration
def test_save_hf_keeps_host_copies_on_rank_zero_only(tiny_model_dir, tmp_path):
    out = run_ranks(
        f"""
        import sposd.learner.deepspeed as lds
        from sposd.algos import get_algo
        from sposd.algos.config import AlgoCfg
        from sposd.learner.learner import DeepSpeedLearner

        class Optim:
            lr, weight_decay, betas, eps = 1e-2, 0.0, [0.9, 0.999], 1e-8
            warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0

        original = lds.host_state_dict
        def counting(named, *, keep):
            consumed = []
            def walk():
                for n, t in named:
                    consumed.append(n)
                    yield n, t
            state = original(walk(), keep=keep)
            RESULT.update(consumed=len(consumed), kept=len(state))
            return state
        lds.host_state_dict = counting
        learner = DeepSpeedLearner({str(tiny_model_dir)!r}, algo=get_algo("grpo")(AlgoCfg(name="grpo")),
            optim=Optim, total_steps=1, device="cpu", dtype="float32", zero_stage=3, micro_batch_tokens=64, pad_id=0)
        RESULT["params"] = sum(1 for _ in learner.module.parameters())
        RESULT["partitioned"] = all(hasattr(p, "ds_tensor") for p in learner.module.parameters())
        path = learner.save_hf({str(tmp_path / "hf")!r})
        RESULT["path"] = None if path is None else str(path)
        """,
        tmp_path,
    )
    assert all(r["partitioned"] for r in out)
    assert out[0]["consumed"] == out[1]["consumed"] == out[0]["params"]  # both ranks walk every gather
    assert out[0]["kept"] == out[0]["params"] and out[1]["kept"] == 0  # host copies: rank 0 only
    assert out[0]["path"] == str(tmp_path / "hf") and out[1]["path"] is None

    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    for n, t in start.items():
        torch.testing.assert_close(saved[n], t, atol=0, rtol=0)


@pytest.mark.integration
def test_uncopied_sync_stream_equals_the_copied_one_for_a_consumer_that_copies(tiny_model_dir):
    # copy=False hands out the gathered tensors while their gather is open (vLLM's one-copy load on CUDA);
    # a consumer that copies each one as it arrives receives exactly what the copied stream gives, in order
    import gc

    from sposd.sync.weights import iter_gathered_params

    learner = _grpo_learner(tiny_model_dir)
    try:
        learner.train_step(SAMPLES, max_len=8)  # weights that differ from the file's
        copied_stats, direct_stats = {}, {}
        copied = [(n, t) for n, t in iter_gathered_params(learner.module, bucket_bytes=1 << 16, stats=copied_stats)]
        direct = [
            (n, t.clone())
            for n, t in iter_gathered_params(learner.module, bucket_bytes=1 << 16, stats=direct_stats, copy=False)
        ]
        assert [n for n, _ in direct] == [n for n, _ in copied]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(direct, copied, strict=True))
        assert direct_stats == copied_stats and copied_stats["buckets"] > 1
    finally:
        del learner
        gc.collect()
