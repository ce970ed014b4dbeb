"""`sposd` command line: a dispatcher over Hydra apps (one `@hydra.main` per subcommand).

The dispatcher pops the subcommand from argv and leaves the rest to Hydra, so `-m`, launchers, output dirs,
`--cfg`, `--info` and `--help` behave as in any Hydra app. User errors exit non-zero with one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

USAGE = """usage: sposd <command> [overrides...]

commands:
  train    RL / on-policy self-distillation (vLLM rollouts + DeepSpeed ZeRO-3 learner)
           `sposd train` alone runs the embedded default: tiny model + toy task on the CPU.

  export   write a Hugging Face model from a training checkpoint: sposd export <checkpoint> <dir>
  report   table + plots of final and best metrics over a run or sweep: sposd report <dir>

`sposd <command> --help` lists config groups and options; Hydra flags (-m, --cfg job, --info) work.
"""


def _conf_path() -> str:
    """The source checkout's top-level conf/ when present, else the copy shipped as package data."""
    repo_conf = Path(__file__).resolve().parent.parent / "conf"
    return str(repo_conf) if (repo_conf / "train.yaml").exists() else "pkg://sposd.conf"


def _die(msg: str, code: int = 2) -> None:
    print(f"sposd: error: {msg}", file=sys.stderr)
    sys.exit(code)


def _relaunch_ranks(nproc: int, run_dir: str) -> None:
    """Re-run this same command under torch.distributed.run with nproc ranks, all writing to run_dir."""
    from hydra.core.hydra_config import HydraConfig

    from sposd.dist import free_port

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        "-m",
        "sposd",
        "train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "hydra.output_subdir=null",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    import signal

    proc = subprocess.Popen(cmd, env={**os.environ, "SPOSD_CHILD_RANK": "1"})
    # A terminal's Ctrl-C reaches torchrun and the ranks directly (one process group); a scheduler's signals to
    # this process are passed on, so the ranks can finish their step and checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
    rc = proc.wait()
    if rc:
        sys.exit(rc if rc > 0 else 128 - rc)


def _train_app() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from sposd.config import register_configs, register_resolvers

    register_resolvers()
    register_configs()

    @hydra.main(version_base="1.3", config_path=_conf_path(), config_name="train")
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from sposd.config import to_object
        from sposd.train import UserError, train

        try:
            tcfg = to_object(cfg)
        except ValueError as e:
            _die(str(e))
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        from sposd.dist import launched_as_ranks

        hw = tcfg.hardware
        if hw.nodes > 1 and not launched_as_ranks():
            _die(
                f"hardware.nodes={hw.nodes} needs one process per rank on every node: launch it through SLURM "
                "(-m hydra/launcher=slurm, or srun with one task per GPU) or torchrun --nnodes"
            )
        if tcfg.hardware.nproc > 1 and not launched_as_ranks():
            _relaunch_ranks(tcfg.hardware.nproc, str(run_dir))
            return
        try:
            summary = train(tcfg, run_dir, resolved_config=OmegaConf.to_container(cfg, resolve=True))
        except UserError as e:
            _die(str(e))
        if int(os.environ.get("RANK", "0")) == 0:
            _print_summary(summary)
        stopped = summary.get("stopped")
        if stopped and not (stopped.get("requeue") or "").startswith("requeued"):
            import signal

            # stopped by a signal and not requeued: the conventional 128 + signal number tells scripts it did not end
            sys.exit(128 + int(getattr(signal, stopped["signal"], signal.SIGTERM)))

    _main()


def _print_summary(summary: dict) -> None:
    print(f"\nrun directory: {summary['run_dir']}")
    if "stopped" in summary:
        s = summary["stopped"]
        print(
            f"stopped by {s['signal']} after step {s['step']}; checkpoint saved"
            + (f"; {s['requeue']}" if s.get("requeue") else "")
            + ". Run the same command again to resume."
        )
        return
    if "base_accuracy" in summary:
        print(
            f"held-out accuracy  base: {summary['base_accuracy']:.3f}   trained: "
            f"{summary.get('trained_accuracy', float('nan')):.3f}"
        )
    if "final" in summary:
        print(f"final model (HF format): {summary['final']}")


def _export_app() -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="sposd export", description="Write the policy of a training checkpoint as a Hugging Face model."
    )
    ap.add_argument("checkpoint", type=Path, help="a checkpoints/step_N directory, or a run directory (its newest)")
    ap.add_argument("out", type=Path, help="output directory (replaced atomically)")
    args = ap.parse_args(sys.argv[1:])
    from sposd.checkpoint import export_hf, resolve_resume

    try:
        ckpt = resolve_resume(str(args.checkpoint), args.checkpoint)
        out = export_hf(ckpt, args.out)
    except (FileNotFoundError, ValueError) as e:
        _die(str(e))
    print(f"exported {ckpt} -> {out}")


def _report_app() -> None:
    from sposd.report import main as report_main

    report_main(sys.argv[1:])


COMMANDS = {"train": _train_app, "export": _export_app, "report": _report_app}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        _die(f"unknown command {cmd!r}; choose from {sorted(COMMANDS)}")
    sys.argv = [f"sposd {cmd}", *rest]
    COMMANDS[cmd]()


if __name__ == "__main__":
    main()
