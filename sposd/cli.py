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
  eval     Avg@k / pass@k / maj@k on benchmarks (vLLM sampling, math-verify grading), resumable:
           sposd eval model.path=<HF dir or hub id> benchmarks=[aime24,aime25,hmmt25] eval.k=12
  grade    re-grade saved completions without generating: sposd grade <samples.jsonl> [--out DIR]

  plan     the memory a train run needs per rank, and whether it fits (no GPU needed):
           sposd plan model=qwen3-8b hardware=gpu8 [--gpu-gib 80] [--json]
  export   write a Hugging Face model from a training checkpoint: sposd export <checkpoint> <dir> [--adapter]
  report   table + plots of final and best metrics over a run or sweep: sposd report <dir>
  inspect  an HTML page of the distillation signal, token by token (runs trained with train.inspect.every=N):
           sposd inspect <run dir> [--step N] [--out page.html]

`sposd <command> --help` lists config groups and options; Hydra flags (-m, --cfg job, --info) work
for train and eval.
"""


def _conf_path() -> str:
    """The source checkout's top-level conf/ when present, else the copy shipped as package data."""
    repo_conf = Path(__file__).resolve().parent.parent / "conf"
    return str(repo_conf) if (repo_conf / "train.yaml").exists() else "pkg://sposd.conf"


def _die(msg: str, code: int = 2) -> None:
    """One line on stderr and the exit code every user mistake shares (sposd.errors.EXIT_USER_ERROR)."""
    print(f"sposd: error: {msg}", file=sys.stderr)
    sys.exit(code)


def _precheck(command: str, argv: list[str]) -> None:
    """Compose, validate and pre-flight the config of `sposd train|eval` before Hydra writes the run directory or
    anything heavy loads (sposd/compose.py, sposd/preflight.py); a mistake exits here with one line."""
    from sposd import preflight
    from sposd.compose import MULTIRUN_FLAGS, ConfigError, compose_checked, first_point, wants_info
    from sposd.errors import UserError

    if wants_info(argv):
        return
    try:
        cfg, run_dir = compose_checked(_conf_path(), command, first_point(argv))
        if any(a in MULTIRUN_FLAGS for a in argv):
            return  # each point's folder belongs to the sweep; the jobs may run elsewhere (SLURM)
        if command == "eval":
            preflight.preflight_eval(cfg, Path(run_dir))
            return
        # the ranks a launcher started: the process that launched them checked (and owns) the folder
        from sposd.dist import launched_as_ranks

        rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
        secondary = os.environ.get("SPOSD_CHILD_RANK") or (launched_as_ranks() and rank != "0")
        moved = preflight.preflight_train(cfg, None if secondary else Path(run_dir))
        if moved is not None:
            print(f"sposd: moved the run that was in {run_dir} to {moved} (train.existing_run=move_aside)")
    except (ConfigError, UserError) as e:
        _die(str(e))


def _run_dir_override(run_dir: Path) -> str:
    """The `hydra.run.dir=...` override that points a rerun at run_dir (quoted for Hydra when needed)."""
    import re

    text = str(run_dir)
    return f"hydra.run.dir={text}" if re.fullmatch(r"[\w./~+-]+", text) else f"'hydra.run.dir=\"{text}\"'"


def _resume_hint(run_dir: Path) -> str:
    from sposd.checkpoint import checkpoint_root, latest_checkpoint

    ckpt = latest_checkpoint(checkpoint_root(run_dir))
    if ckpt is None:
        return "no checkpoint was written, so there is nothing to resume"
    return f"to resume from {ckpt.name}, run the same command with {_run_dir_override(run_dir)}"


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
    _precheck("train", sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=_conf_path(), config_name="train")
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from sposd.config import to_object
        from sposd.errors import UserError
        from sposd.train import train

        try:
            tcfg = to_object(cfg)
        except ValueError as e:
            _die(str(e))
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        from sposd.dist import launched_as_ranks
        from sposd.preflight import check_launch

        try:
            check_launch(tcfg.hardware)  # also checked before Hydra ran; a multirun job gets here directly
        except UserError as e:
            _die(str(e))
        if tcfg.hardware.nproc > 1 and not launched_as_ranks():
            _relaunch_ranks(tcfg.hardware.nproc, str(run_dir))
            return
        try:
            summary = train(tcfg, run_dir, resolved_config=OmegaConf.to_container(cfg, resolve=True))
        except UserError as e:
            _die(str(e))
        except KeyboardInterrupt:  # before the loop's own handler was installed (start-up), or a second Ctrl-C
            _die(f"interrupted; {_resume_hint(run_dir)}", code=130)
        from sposd.dist import shutdown

        shutdown()  # every rank got here: leave the process group cleanly, so no rank aborts at interpreter exit
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
            + f". To resume, run the same command with {_run_dir_override(Path(summary['run_dir']))}"
        )
        return
    if "base_accuracy" in summary:
        print(
            f"held-out accuracy  base: {summary['base_accuracy']:.3f}   trained: "
            f"{summary.get('trained_accuracy', float('nan')):.3f}"
        )
    ev = summary.get("eval")
    if ev:
        key = "eval/macro/avg@k"
        print(
            f"eval macro avg@{ev['k']}  last (step {ev['last']['step']}): {ev['last'][key]:.3f}   "
            f"best (step {ev['best']['step']}): {ev['best'][key]:.3f}"
        )
        if ev.get("checkpoints"):
            from sposd.evals.results import format_checkpoint_views

            print(format_checkpoint_views(ev["checkpoints"]))
    if "final" in summary:
        print(f"final model (HF format): {summary['final']}")


def _eval_app() -> None:
    import hydra
    from omegaconf import DictConfig

    from sposd.config import register_configs, register_resolvers

    register_resolvers()
    register_configs()
    _check_benchmark_names(sys.argv[1:])
    _precheck("eval", sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=_conf_path(), config_name="eval")
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from sposd.config import to_object
        from sposd.errors import UserError
        from sposd.evaluate import evaluate, print_results

        try:
            ecfg = to_object(cfg)
        except ValueError as e:
            _die(str(e))
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            results = evaluate(ecfg, run_dir)
        except UserError as e:
            _die(str(e))
        except KeyboardInterrupt:
            _die(
                f"interrupted; finished problems are saved in {run_dir / 'samples.jsonl'}: rerun the same command "
                f"with {_run_dir_override(run_dir)} to resume",
                code=130,
            )
        print_results(results, run_dir)

    _main()


def _check_benchmark_names(overrides: list[str]) -> None:
    """`benchmarks=[...]` names must be options of the benchmarks group: one line listing the valid ones
    (Hydra's own message spans several lines and does not list them). Sweeps (`-m benchmarks=[a],[b]`) are checked
    too; an override Hydra cannot parse is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    names = _benchmark_options()
    for o in overrides:
        if o.partition("=")[0].lstrip("~+") != "benchmarks":
            continue
        try:
            (parsed,) = OverridesParser.create().parse_overrides([o])
        except HydraException:
            continue
        bad = [c for c in _leaves(parsed.value()) if c not in names]
        if bad:
            _die(f"unknown benchmark {bad[0]!r} in {o!r}; choose from {names}")


def _leaves(value) -> list[str]:
    """The strings inside a parsed override value (a name, a list, or a sweep of either)."""
    if isinstance(value, str):
        return [value]
    items = getattr(value, "list", value)  # ChoiceSweep keeps its choices in .list
    return [leaf for v in items for leaf in _leaves(v)] if isinstance(items, list | tuple) else [str(value)]


def _benchmark_options() -> list[str]:
    repo = Path(_conf_path()) / "benchmarks"
    if repo.is_dir():
        return sorted(p.stem for p in repo.glob("*.yaml"))
    from importlib import resources

    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("sposd.conf").joinpath("benchmarks").iterdir()
        if p.name.endswith(".yaml")
    )


def _arg_parser(**kwargs):
    """An argparse parser whose errors are sposd's one line (not a usage block), exit code 2."""
    import argparse

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message: str) -> None:
            _die(f"{self.prog}: {message} (see {self.prog} --help)")

    return OneLineParser(**kwargs)


def _grade_cmd() -> None:
    ap = _arg_parser(
        prog="sposd grade",
        description="Re-grade saved completions (no generation) and write DIR/graded.jsonl and DIR/results.json "
        "(the schema of `sposd eval`). Each input row needs benchmark, id, completion and answer (the gold answer); "
        "rows with the same benchmark and id are samples of one problem. `sposd eval`'s samples.jsonl is valid input.",
    )
    ap.add_argument("samples", type=Path, help="a JSONL file of completions, e.g. a run's samples.jsonl")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the input's folder, or its regraded/ when an evaluation's results.json is there)",
    )
    ap.add_argument("--timeout-s", type=float, default=5.0, help="per-answer grading deadline (default 5)")
    ap.add_argument("--workers", type=int, default=None, help="grading processes (default min(4, cpus))")
    ap.add_argument(
        "--no-answer-line-fallback",
        action="store_true",
        help="grade only \\boxed{} answers, not an 'Answer: ...' last line",
    )
    args = ap.parse_args(sys.argv[1:])
    if args.timeout_s <= 0:
        _die(f"--timeout-s must be > 0, got {args.timeout_s}")
    if args.workers is not None and args.workers < 1:
        _die(f"--workers must be >= 1, got {args.workers}")

    from sposd.errors import UserError
    from sposd.evals.grade import GRADED, RESULTS, grade_file
    from sposd.evals.results import format_table
    from sposd.preflight import check_writable

    out = args.out
    if out is None:  # beside the input, unless an evaluation's results.json is there: then in regraded/
        out = args.samples.parent
        if (out / RESULTS).exists() and not _is_grade_output(out / RESULTS):
            out = out / "regraded"
    try:
        check_writable(out, "--out")
        if (out / RESULTS).exists() and not _is_grade_output(out / RESULTS):
            raise UserError(f"{out / RESULTS} is not from `sposd grade` (an evaluation's?): choose another --out DIR")
    except UserError as e:
        _die(str(e))
    try:
        results = grade_file(
            args.samples,
            out,
            timeout_s=args.timeout_s,
            num_workers=args.workers,
            answer_line_fallback=not args.no_answer_line_fallback,
        )
    except (FileNotFoundError, ValueError) as e:
        _die(str(e))
    except OSError as e:
        _die(f"cannot write {out}: {e.strerror or e}")
    print(format_table(results))
    print(f"results: {out / RESULTS}   graded: {out / GRADED}")


def _is_grade_output(path: Path) -> bool:
    """Whether a results.json was written by `sposd grade` (settings.regraded), which alone it may replace."""
    import json

    try:
        return "regraded" in json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _export_app() -> None:
    ap = _arg_parser(
        prog="sposd export",
        description="Write the policy of a training checkpoint as a Hugging Face model. The output folder must be "
        "new or empty, or (with --overwrite) an earlier export; nothing else is ever replaced.",
    )
    ap.add_argument("checkpoint", type=Path, help="a checkpoints/step_N directory, or a run directory (its newest)")
    ap.add_argument("out", type=Path, help="output folder: new, empty, or an earlier export (with --overwrite)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier `sposd export` in OUT")
    ap.add_argument("--adapter", action="store_true",
                    help="a LoRA checkpoint: the PEFT adapter (adapter_config.json + weights), not the merged model")
    ap.add_argument("--base", default=None,
                    help="a LoRA checkpoint's base model (default: the run's model.path, from its adapter_config.json)")
    args = ap.parse_args(sys.argv[1:])
    from sposd.checkpoint import check_export_target, export_hf, resolve_resume
    from sposd.errors import UserError
    from sposd.preflight import check_writable

    try:
        if str(args.checkpoint) in ("auto", "never") or not args.checkpoint.exists():
            raise FileNotFoundError(f"{args.checkpoint} does not exist; give a checkpoints/step_N or run directory")
        ckpt = resolve_resume(str(args.checkpoint), args.checkpoint)
        check_export_target(ckpt, args.out, overwrite=args.overwrite)  # before DeepSpeed loads
        check_writable(args.out, "out")
        out = export_hf(ckpt, args.out, overwrite=args.overwrite, adapter=args.adapter, base=args.base)
    except (FileNotFoundError, ValueError, UserError) as e:
        _die(str(e))
    except OSError as e:
        _die(f"cannot write {args.out}: {e.strerror or e}")
    print(f"exported {ckpt} -> {out}")


def _plan_cmd() -> None:
    from sposd.plan import main as plan_main

    sys.exit(plan_main(sys.argv[1:]))


def _report_app() -> None:
    from sposd.report import main as report_main

    try:
        report_main(sys.argv[1:])
    except OSError as e:  # an --out that cannot be written
        _die(f"cannot write {e.filename or 'the report'}: {e.strerror or e}")


def _inspect_cmd() -> None:
    ap = _arg_parser(
        prog="sposd inspect",
        description="One self-contained HTML page of a run's recorded distillation signal (train.inspect.every=N): "
        "per inspected completion, each token shaded by the divergence the loss puts on it, the teacher's and the "
        "student's alternatives on hover, the privileged context folded above; and a summary PNG across steps.",
    )
    ap.add_argument("run_dir", type=Path, help="a run directory of `sposd train` (with inspect/step_N.jsonl.gz)")
    ap.add_argument("--step", type=int, default=None, help="the recorded step to show (default: the last)")
    ap.add_argument("--out", type=Path, default=None, help="the page (default: RUN_DIR/inspect/step_N.html)")
    ap.add_argument("--png", type=Path, default=None, help="the summary PNG (default: RUN_DIR/inspect/summary.png)")
    ap.add_argument("--no-png", action="store_true", help="write the page only")
    args = ap.parse_args(sys.argv[1:])
    from sposd.errors import UserError
    from sposd.inspect.app import inspect_run

    try:
        page, png = inspect_run(args.run_dir, step=args.step, out=args.out, png=args.png, with_png=not args.no_png)
    except UserError as e:
        _die(str(e))
    print(f"page: {page}" + (f"   summary: {png}" if png else ""))


COMMANDS = {
    "train": _train_app,
    "eval": _eval_app,
    "grade": _grade_cmd,
    "plan": _plan_cmd,
    "export": _export_app,
    "report": _report_app,
    "inspect": _inspect_cmd,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if not any(a.lower() in ("verbose=true", "verbose=1", "verbose=yes") for a in rest):
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10's warnings: read once, when torch loads
    if cmd not in COMMANDS:
        _die(f"unknown command {cmd!r}; choose from {sorted(COMMANDS)}")
    sys.argv = [f"sposd {cmd}", *rest]
    try:
        COMMANDS[cmd]()
    except KeyboardInterrupt:  # Ctrl-C while importing or composing: nothing was written yet
        print("sposd: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `sposd report DIR | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


if __name__ == "__main__":
    main()
