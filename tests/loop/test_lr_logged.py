"""`actor/lr` is the learning rate the step's update applied (the scheduler steps after the update, so reading it
afterwards would log the next step's rate)."""

from __future__ import annotations

import pytest

from sposd.learner.batching import LearnerSample

pytestmark = pytest.mark.integration  # a real DeepSpeed ZeRO-3 learner (one gloo rank, tiny model)


class _Optim:
    lr, weight_decay, betas, eps = 1e-3, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 4, "constant", 0.0, 1.0


def test_actor_lr_is_the_rate_of_the_update_it_logs(tiny_model_dir):
    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg
    from sposd.learner.learner import DeepSpeedLearner

    algo = get_algo("grpo")(AlgoCfg(name="grpo", group_size=2))
    learner = DeepSpeedLearner(
        str(tiny_model_dir),
        algo=algo,
        optim=_Optim,
        total_steps=10,
        device="cpu",
        dtype="float32",
        zero_stage=3,
        micro_batch_tokens=4096,
        pad_id=0,
    )
    samples = [LearnerSample([5, 6, 7], [20, 21, 22], 1.0), LearnerSample([5, 6, 7], [30, 31], -1.0)]
    logged = [learner.train_step(samples, max_len=8)["actor/lr"] for _ in range(3)]
    # linear warm-up over 4 steps: update k (0-based) runs at lr * (k + 1) / 4 -> 2.5e-4, 5e-4, 7.5e-4
    assert logged == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
