"""Schemas of the `train` key (`LoopCfg`): what `sposd train` does besides a step, i.e. checkpoints
(`CheckpointCfg`), evaluations during training (`TrainEvalCfg`) and records for `sposd inspect` (`InspectCfg`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sposd.config_checks import _check_choice, _check_positive

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


@dataclass(kw_only=True)
class CheckpointCfg:
    """When training state is saved (run_dir/checkpoints/step_N, see sposd/checkpoint.py).

    Attributes:
        every: save every N steps (0: only on exit).
        keep: complete checkpoints kept (the newest); 0 keeps all.
        on_exit: also save when the run ends (the last step, or a stop signal).
        signals: signals that stop the run cleanly: finish the current step, save, exit (SLURM sends SIGTERM on
            preemption and submitit's SIGUSR2 before the time limit).
        requeue: under SLURM (SLURM_JOB_ID set), `scontrol requeue` the job after a signal-triggered save, so it
            restarts and resumes.
    """

    every: int = 50
    keep: int = 2
    on_exit: bool = True
    signals: list[str] = field(default_factory=lambda: list(STOP_SIGNALS))
    requeue: bool = True

    def __post_init__(self) -> None:
        _check_positive("train.checkpoint.every", self.every, allow_zero=True)
        _check_positive("train.checkpoint.keep", self.keep, allow_zero=True)
        for sig in self.signals:
            _check_choice("train.checkpoint.signals[]", sig, STOP_SIGNALS)


@dataclass(kw_only=True)
class TrainEvalCfg:
    """When `sposd train` evaluates its policy on `benchmarks` (how: the `eval` group, as in `sposd eval`).

    Attributes:
        every: evaluate every N steps and at the last step (0 = off).
    """

    every: int = 0

    def __post_init__(self) -> None:
        _check_positive("train.eval.every", self.every, allow_zero=True)


@dataclass(kw_only=True)
class InspectCfg:
    """What `sposd train` records for `sposd inspect` (run_dir/inspect/step_N.jsonl.gz, see sposd/inspect/).

    Attributes:
        every: every N steps (and at step 1), record for a few distilled rows, from the learner step's own student
            and teacher logits, per token the divergence the loss uses, its clip, both models' probabilities and
            their top alternatives (0 = off).
        rows: distilled rows recorded per step (over all ranks).
        topk: alternatives recorded per position, for the teacher and for the student.
    """

    every: int = 0
    rows: int = 4
    topk: int = 3

    def __post_init__(self) -> None:
        _check_positive("train.inspect.every", self.every, allow_zero=True)
        _check_positive("train.inspect.rows", self.rows)
        _check_positive("train.inspect.topk", self.topk)


@dataclass(kw_only=True)
class LoopCfg:
    """When `sposd train` does more than a step: evaluations, checkpoints, and where it resumes from.

    Attributes:
        resume: "auto" (continue the newest complete checkpoint of this run directory, if any), "never", or the
            path of a checkpoint (checkpoints/step_N) or of a run directory (its newest checkpoint).
        existing_run: what a fresh start (resume "never" or another run's checkpoint) does when the run directory
            already holds a run: "refuse" (exit, naming a folder to use instead) or "move_aside" (rename the old
            run to `<dir>.old-<N>` first). Runs are never mixed in one folder.
        checkpoint: when to save.
        eval: when to evaluate on benchmarks.
        inspect: what is recorded for `sposd inspect` (the distillation signal, token by token).
        ignore_memory_plan: start a GPU run whose memory plan (`sposd plan`) says it does not fit.
    """

    resume: str = "auto"
    existing_run: str = "refuse"
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    eval: TrainEvalCfg = field(default_factory=TrainEvalCfg)
    inspect: InspectCfg = field(default_factory=InspectCfg)
    ignore_memory_plan: bool = False

    def __post_init__(self) -> None:
        _check_choice("train.existing_run", self.existing_run, ("refuse", "move_aside"))
        if not self.resume:
            raise ValueError("train.resume is empty; use auto, never, or the path of a checkpoint or run directory")
