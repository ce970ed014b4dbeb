"""`sposd train`: the RL / self-distillation loop, read top to bottom.

    prompts -> vLLM group rollouts -> math-verify rewards -> algorithm (advantages, filters)
            -> DeepSpeed learner step -> stream weights into vLLM -> log -> evaluate -> checkpoint

Every rank runs this same loop on its own share of the prompts, with its own in-process vLLM engine; the
learner's ZeRO-3 collectives and a few scalar all-reduces keep the ranks in step. The stages live beside it:
`build` (components from the config), `rollouts`, `metrics`, `evals`; `sposd.checkpoint.TrainState` holds what
the loop carries from step to step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sposd import checkpoint as ck
from sposd.config import TrainCfg
from sposd.inspect.record import inspection
from sposd.logging import write_atomic
from sposd.loop.build import build, resume_point, start_ranks
from sposd.loop.evals import evaluate_step, final_evaluations
from sposd.loop.metrics import StepClock, progress_bar, save_samples, show_step, step_metrics
from sposd.loop.rollouts import collect_rollouts, learner_batch
from sposd.plan import check_before_training


def train(
    cfg: TrainCfg,
    run_dir: Path,
    *,
    resolved_config: dict | None = None,
    engine=None,
    learner=None,
    sync_engine_first: bool = False,
    close_engine: bool = True,
) -> dict:
    """Run `cfg.num_steps` RL steps; returns a summary (base / trained held-out accuracy, final path).

    Args:
        cfg: the validated config. run_dir: where the run-directory contract is written.
        resolved_config: the resolved config as a plain dict, saved as config.yaml.
        engine, learner: injected components (unit tests use a scripted engine); built from cfg when None.
        sync_engine_first: push the learner's weights into the engine before the first rollout (an injected engine
            reused from another run holds that run's weights).
        close_engine: close the engine at the end (false keeps an injected engine alive for the next run).
    """
    from sposd.sync.weights import push_weights

    check_before_training(cfg)  # a GPU run whose memory plan cannot fit stops here (`sposd plan` shows why)
    rank, world = start_ranks(cfg)
    resume = resume_point(cfg, run_dir, world=world)
    c = build(
        cfg,
        run_dir,
        rank=rank,
        world=world,
        resume=resume,
        resolved_config=resolved_config,
        engine=engine,
        learner=learner,
    )
    state, summary = c.restore(resume)  # optimizer, schedule, teacher, controllers, sampler, RNG after that step
    stop = ck.StopSignals(cfg.train.checkpoint.signals).install()
    try:
        if sync_engine_first and resume is None:  # an injected engine holds another run's weights
            push_weights(c.learner.module, c.engine)
        if c.heldout and state.base_accuracy is None:
            state.base_accuracy = summary["base_accuracy"] = c.heldout(c, step=0)
        bar = progress_bar(cfg.num_steps, state.step, enabled=c.console)
        ckpt_s = None
        for step in range(state.step + 1, cfg.num_steps + 1):
            clock = StepClock()
            algo_m = c.algo.begin_step(step, cfg.num_steps)
            # 1-3. G completions per prompt from the current weights, verified, informative groups kept
            rollouts = collect_rollouts(c, step)
            # 4. algorithm: advantages, loss weights and teacher contexts -> learner samples
            batch = learner_batch(rollouts.kept, algo=c.algo, teacher_prompts=c.teacher_prompts)
            # 5. learner step (DeepSpeed ZeRO-3), vLLM asleep (sposd.rollout.colocation has the sequence)
            with clock.phase("learn"):
                c.colocation.release()
                with inspection(c, step, rollouts.kept, batch) as inspect_m:  # `sposd inspect`'s tap, when due
                    learn_m = c.learner.train_step(batch.samples, max_len=cfg.model.max_new_tokens)
                learn_m |= inspect_m
            # 6. weight sync: vLLM must sample the next batch from the weights just trained
            with clock.phase("sync"):
                sync_m = c.colocation.sync(lambda: push_weights(c.learner.module, c.engine))
            # 7. log (the algorithm's controllers see the step first), evaluate when due
            metrics = step_metrics(c, state, rollouts, batch, {**learn_m, **sync_m, **algo_m}, checkpoint_s=ckpt_s)
            metrics.update(c.algo.end_step(step, metrics))
            metrics.update(clock.metrics(rollouts))
            metrics.update(evaluate_step(c, step, summary))
            c.logger.log(step, metrics)
            if cfg.save_samples_every and (step % cfg.save_samples_every == 0 or step == 1):
                save_samples(c, step, rollouts, batch)
            show_step(bar, metrics)
            # 8. checkpoint (after the log line, so a resumed run never misses a step's metrics); a stop signal
            # (SLURM preemption, Ctrl-C) ends the run here with a checkpoint
            state.step, stopping, ckpt_s = step, stop.requested(), None
            if stopping or _checkpoint_due(cfg, step):
                t0 = time.perf_counter()
                c.save(state)
                ckpt_s = summary["last_checkpoint_s"] = time.perf_counter() - t0
            if stopping:
                summary["stopped"] = {"signal": stopping, "step": step}
                if cfg.train.checkpoint.requeue:
                    summary["stopped"]["requeue"] = ck.requeue_slurm_job()
                break
        if bar is not None:
            bar.close()
        if "stopped" not in summary:  # interrupted: no final evaluation or export; the checkpoint has everything
            summary.update(final_evaluations(c, summary))
            final = c.learner.save_hf(run_dir / "final", tokenizer=c.tokenizer) if cfg.save_final else None
            if final is not None:
                summary["final"] = str(final)
        if rank == 0:
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    finally:
        stop.restore()
        c.close(close_engine=close_engine)
    return summary


def _checkpoint_due(cfg: TrainCfg, step: int) -> bool:
    every = cfg.train.checkpoint.every
    return bool(every and step % every == 0) or (step == cfg.num_steps and cfg.train.checkpoint.on_exit)
