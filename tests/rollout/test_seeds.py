"""Per-request sampling seeds: distinct for every request of a run, the same when a step is replayed."""

from __future__ import annotations

from sposd.rollout.seeds import SEED_BITS, call_seed, request_seeds


def test_every_request_of_a_run_gets_its_own_seed():
    seeds = [
        s
        for step in range(1, 6)
        for round_ in (-2, -1, 0, 1)
        for rank in range(4)
        for s in request_seeds(call_seed(0, step, round_, rank), 16)
    ]
    assert len(set(seeds)) == len(seeds) == 5 * 4 * 4 * 16
    assert all(0 <= s < 2**SEED_BITS for s in seeds)  # vLLM's child seeds s + i stay inside int64


def test_a_replayed_call_draws_the_same_seeds():
    first = request_seeds(call_seed(7, 3, 0, 1), 8)
    assert request_seeds(call_seed(7, 3, 0, 1), 8) == first
    assert request_seeds(call_seed(7, 3, 0, 1), 4) == first[:4]  # prompt i's seed does not depend on the batch size
    # any coordinate changes the call: run seed, step, round, rank
    others = [call_seed(8, 3, 0, 1), call_seed(7, 4, 0, 1), call_seed(7, 3, 1, 1), call_seed(7, 3, 0, 0)]
    assert call_seed(7, 3, 0, 1) not in others and len(set(others)) == 4


def test_train_loop_seeds_each_call_from_its_step_and_round(run_loop):
    cfg, first = run_loop("num_steps=3", name="a")
    _, again = run_loop("num_steps=3", name="b")
    assert first.seeds == again.seeds == [call_seed(cfg.seed, step, 0, 0) for step in (1, 2, 3)]
