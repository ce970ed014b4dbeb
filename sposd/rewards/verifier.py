"""Binary verifier reward (ALGORITHMS.md 0.2): extract the final answer and check it with math-verify.

`grade_one` grades in the calling process. It must run on a main thread, because math-verify's own
timeouts use `signal.alarm`, and it cannot stop code that never returns to the interpreter.
`VerifierPool` is what the trainer and the evaluator use: reusable worker processes plus a hard
wall-clock deadline per answer, enforced from the parent by killing and replacing the worker.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from sposd.rewards.extract import extract_answer

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

# Real final answers are short (the longest gold in the four benchmarks has 62 characters); anything
# longer is scored 0 without parsing, which bounds the parser's work.
MAX_ANSWER_CHARS = 2000
_READY = "ready"
_PR_SET_PDEATHSIG = 1


def grade_extracted(answer: str, gold: str, *, timeout_s: int = 5) -> bool:
    """Return whether an already-extracted answer equals the gold answer under math-verify.

    Both sides are parsed as `$...$` (no string fallback) and compared with `verify(gold, pred)`. If
    math-verify raises (its timeout included) or cannot parse one side, the verdict is equality of
    the strings after removing `$` and spaces and lower-casing. Empty or over-long answers are False.

    Args:
        answer: the extracted prediction, e.g. the content of the last `\\boxed{}`.
        gold: the reference answer string.
        timeout_s: math-verify's per-parse and per-comparison timeout in whole seconds.
    """
    if not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return False
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = parse(f"${gold}$", fallback_mode="no_fallback", parsing_timeout=timeout_s)
        pred_parsed = parse(f"${answer}$", fallback_mode="no_fallback", parsing_timeout=timeout_s)
        if gold_parsed and pred_parsed:
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))
    except (Exception, TimeoutException):  # any failure falls back to string equality (spec 0.2)
        logger.debug("math-verify failed; comparing strings", exc_info=True)
    return _normalize(answer) == _normalize(gold)


def grade_one(response: str, gold: str, *, answer_line_fallback: bool = True, timeout_s: int = 5) -> bool:
    """Return whether a completion's final answer (last `\\boxed{}`, else `Answer:` line) equals gold.

    A completion with no extractable answer is False. Runs in this process; see the module docstring.
    """
    answer = extract_answer(response, answer_line_fallback=answer_line_fallback)
    return answer is not None and grade_extracted(answer, gold, timeout_s=timeout_s)


def _normalize(s: str) -> str:
    """The OPSD eval grader's string fallback: drop `$` and spaces, lower-case."""
    return s.replace("$", "").replace(" ", "").lower()


@dataclass
class _Worker:
    """Parent-side handle of one grading process and the answer it is working on."""

    proc: BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    task: int | None = None
    deadline: float = field(default=float("inf"))


class VerifierPool:
    """Grade many (completion, gold) pairs in reusable worker processes with a hard per-answer deadline.

    The parent extracts each answer (linear time) and drops empty or over-long (> MAX_ANSWER_CHARS)
    ones without sending them to a worker. Workers run math-verify on their main thread, so its
    `signal.alarm` timeouts work. An answer whose worker has not replied `timeout_s` seconds after
    dispatch scores False and the worker is killed and replaced (this is what stops sympy stuck in C
    code). A worker that dies mid-answer (crash, OOM kill) is replaced and the answer retried once.

    Workers are started with "spawn", never fork, so the parent may hold vLLM / torch threads. They
    die with the parent: on EOF from their pipe, and through `PR_SET_PDEATHSIG` (Linux) even when
    stuck. "forkserver" is not offered because its server outlives the parent for as long as any
    worker lives, so a stuck worker would never get that signal. PDEATHSIG follows the thread that
    started a worker: the constructor starts them, and replacements start in the thread that calls
    `grade`; if that thread exits, its workers die and are transparently replaced on the next call.

    `grade` is serialized by a lock; the constructor returns once every worker is ready.

    Args:
        num_workers: worker processes, default min(4, cpu_count).
        timeout_s: wall-clock seconds one answer may take in a worker.
        answer_line_fallback: also accept an `Answer: ...` final line when there is no `\\boxed{}`.
        startup_timeout_s: how long a new worker may take to import math-verify and report ready.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        timeout_s: float = 5.0,
        answer_line_fallback: bool = True,
        startup_timeout_s: float = 60.0,
    ) -> None:
        num_workers = min(4, mp.cpu_count()) if num_workers is None else num_workers
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.answer_line_fallback = answer_line_fallback
        self.startup_timeout_s = startup_timeout_s
        # Workers' own math-verify alarms fire first (whole seconds, at least 1) so that answers which
        # do return to the interpreter finish without costing a worker; the parent's deadline is the backstop.
        self._mv_timeout_s = max(1, int(timeout_s / 2))
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._workers: list[_Worker] = [self._start_worker() for _ in range(num_workers)]
        self._close = weakref.finalize(self, _shutdown, self._workers)
        # Wait for every worker, so that a broken install fails here rather than at the first batch.
        self._run({}, [], until_ready=True)

    @property
    def worker_pids(self) -> list[int | None]:
        """Process ids of the current workers (they change when a worker is replaced)."""
        return [w.proc.pid for w in self._workers]

    def grade(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Return one verdict per (completion_text, gold_answer) pair, in order; never hangs."""
        with self._lock:
            if not self._close.alive:
                raise RuntimeError("VerifierPool is closed")
            results = [False] * len(pairs)
            jobs: dict[int, tuple[str, str]] = {}
            for i, (text, gold) in enumerate(pairs):
                answer = extract_answer(text, answer_line_fallback=self.answer_line_fallback)
                if answer and len(answer) <= MAX_ANSWER_CHARS:  # cheap rejection before any IPC
                    jobs[i] = (answer, gold)
            try:
                self._run(jobs, results)
            except BaseException:
                # e.g. KeyboardInterrupt: no worker may carry a stale answer into the next call.
                for k, w in enumerate(self._workers):
                    if w.task is not None:
                        self._replace(k)
                raise
            return results

    def close(self) -> None:
        """Stop the workers; safe to call more than once."""
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(
        self, jobs: dict[int, tuple[str, str]], results: list[bool], *, until_ready: bool = False
    ) -> None:
        """Dispatch `jobs` one at a time per worker and write verdicts into `results` until all are done.

        With `until_ready`, also wait until every worker has reported ready.
        """
        todo = deque(jobs)
        deaths: Counter[int] = Counter()
        startup_failures = 0
        while todo or any(w.task is not None or (until_ready and not w.ready) for w in self._workers):
            for k, w in enumerate(self._workers):
                if w.ready and w.task is None and todo:
                    i = todo.popleft()
                    try:
                        w.conn.send((i, *jobs[i]))
                    except OSError:  # died while idle: the answer was never seen, so it is not charged
                        todo.appendleft(i)
                        self._replace(k)
                        continue
                    w.task, w.deadline = i, time.monotonic() + self.timeout_s
            pending = [w for w in self._workers if w.task is not None or not w.ready]
            now = time.monotonic()
            wake = min(w.deadline if w.ready else w.started + self.startup_timeout_s for w in pending)
            readable = set(wait([w.conn for w in pending], timeout=max(0.0, wake - now)))
            now = time.monotonic()
            for k, w in enumerate(self._workers):
                if w.conn in readable:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        if not w.ready:
                            startup_failures += 1
                            if startup_failures > 3:
                                raise RuntimeError(
                                    f"verifier workers keep dying at startup (exit code {w.proc.exitcode})"
                                ) from None
                        elif w.task is not None:
                            deaths[w.task] += 1
                            if deaths[w.task] < 2:
                                todo.appendleft(w.task)
                        self._replace(k)
                        continue
                    if msg == _READY:
                        w.ready = True
                        startup_failures = 0
                    else:
                        i, verdict = msg
                        assert i == w.task, f"worker answered task {i}, expected {w.task}"
                        results[i], w.task, w.deadline = verdict, None, float("inf")
                elif w.task is not None and now >= w.deadline:
                    self._replace(k)  # stuck past the deadline: the answer keeps its False
                elif not w.ready and now >= w.started + self.startup_timeout_s:
                    raise RuntimeError(f"verifier worker not ready after {self.startup_timeout_s} s")

    def _start_worker(self) -> _Worker:
        """Start one worker process and return its handle (it reports ready once math-verify is loaded)."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, os.getpid(), self._mv_timeout_s),
            name="sposd-verifier",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Worker(proc=proc, conn=parent_conn, started=time.monotonic())

    def _replace(self, k: int) -> None:
        """Kill worker `k` and put a fresh one in its slot."""
        _stop(self._workers[k])
        self._workers[k] = self._start_worker()


def _stop(w: _Worker) -> None:
    """Kill one worker and reap it."""
    w.conn.close()
    w.proc.kill()
    w.proc.join()


def _shutdown(workers: list[_Worker]) -> None:
    """Let idle workers exit on EOF, then kill whatever is left (finalizer of `VerifierPool`)."""
    for w in workers:
        w.conn.close()
    deadline = time.monotonic() + 1.0
    for w in workers:
        w.proc.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()


def _worker_main(conn: Connection, parent_pid: int, mv_timeout_s: int) -> None:
    """Worker loop: load math-verify, report ready, then answer (index, answer, gold) with (index, verdict)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        return
    # Ctrl-C and a scheduler's stop signals (sent to the whole process group) are the parent's to handle: it
    # finishes its step, checkpoints and then closes the pool; the worker still dies with it (PDEATHSIG, EOF).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # a timeout is a verdict, not a warning
    grade_extracted("1", "1", timeout_s=mv_timeout_s)  # import and warm up before taking work
    try:
        conn.send(_READY)
        while True:
            i, answer, gold = conn.recv()
            conn.send((i, grade_extracted(answer, gold, timeout_s=mv_timeout_s)))
    except (EOFError, BrokenPipeError):  # the pool closed or the parent died
        return
