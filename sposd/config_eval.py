"""Schemas of evaluation: the `benchmarks` group (`BenchmarkCfg`, several selected at once) and the `eval` group
(`EvalCfg`: how to sample and grade), shared by `sposd eval` and evaluations during `sposd train`."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from sposd.config_checks import _check_choice, _check_positive, check_sampling

# The user message of the evaluation protocol (spec/ALGORITHMS.md 0.7, siyan-zhao/OPSD eval/evaluate_math.py).
EVAL_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
BENCHMARK_KINDS = ("hf", "local", "toy")
BENCHMARK_KEYS = ("id", "problem", "answer")


@dataclass(kw_only=True)
class BenchmarkCfg:
    """One evaluation benchmark (group `benchmarks`, several selected at once: `benchmarks=[aime24,math500]`).

    Attributes:
        kind: "hf" (a Hugging Face dataset), "local" (a JSONL / parquet file) or "toy" (the toy task's held-out
            split, generated with the `data.*` knobs). Setting `path` turns an "hf" benchmark into a local one.
        hf_id, hf_config, split, hf_fields: the Hub dataset and its column names (our key -> column).
        path: a local .jsonl / .json / .parquet file to read instead of the Hub.
        fields: our key (id, problem, answer) -> column, overriding hf_fields for a Hub set; null keeps the
            default column (hf_fields', or for a local file the same name: id, problem, answer).
        prompt: the user message with a `{problem}` placeholder; null = `eval.prompt`.
        enable_thinking: the chat template's thinking switch for this benchmark; null = `eval.enable_thinking`.
        limit: evaluate only the first `limit` problems; null = `eval.limit`.
    """

    kind: str = "hf"
    hf_id: str | None = None
    hf_config: str | None = None
    split: str = "test"
    hf_fields: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    fields: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(BENCHMARK_KEYS))
    prompt: str | None = None
    enable_thinking: bool | None = None
    limit: int | None = None

    def check(self, name: str) -> None:
        """Raise ValueError naming `benchmarks.<name>.<key>`; called by the config holding the benchmark, which
        knows its name (a dataclass does not know the key it sits under)."""
        key = f"benchmarks.{name}"
        _check_choice(f"{key}.kind", self.kind, BENCHMARK_KINDS)
        if self.kind == "hf" and not (self.hf_id or self.path):
            raise ValueError(f"{key} needs {key}.hf_id=<owner/name> or {key}.path=<file.jsonl|file.parquet>")
        if self.kind == "local" and not self.path:
            raise ValueError(f"{key} needs {key}.path=<file.jsonl|file.parquet>")
        if self.kind == "toy" and self.path:
            raise ValueError(f"{key} is generated (kind toy) and takes no path, got {key}.path={self.path!r}")
        for attr in ("hf_fields", "fields"):
            bad = sorted(set(getattr(self, attr)) - set(BENCHMARK_KEYS))
            if bad:
                raise ValueError(f"{key}.{attr} has unknown keys {bad}; valid: {list(BENCHMARK_KEYS)}")
        if self.prompt is not None and "{problem}" not in self.prompt:
            raise ValueError(f"{key}.prompt must contain {{problem}}, got {self.prompt!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{key}.limit must be >= 1 (or null for all), got {self.limit}")


def _check_benchmarks(benchmarks: dict[str, BenchmarkCfg]) -> None:
    for name, b in benchmarks.items():
        b.check(name)


@dataclass(kw_only=True)
class EvalCfg:
    """How to evaluate (group `eval`, presets `opsd_repo`, `qwen3_recommended`); spec/ALGORITHMS.md 0.7.

    Attributes:
        k: samples per problem (Avg@k, pass@k', maj@k).
        temperature, top_p, top_k, min_p, max_new_tokens: vLLM sampling (top_k -1 = off).
        max_model_len: vLLM's prompt + completion budget; null = the smaller of the model's context length and
            the longest prompt + max_new_tokens.
        enable_thinking: the chat template's thinking switch (Qwen3).
        prompt: the user message with a `{problem}` placeholder, rendered with the model's chat template.
        answer_line_fallback: grade an `Answer: ...` last line when a completion has no \\boxed{}.
        grade_timeout_s, grade_workers: the verifier pool (hard per-answer deadline; workers null = min(4, cpus)).
        limit: evaluate only the first `limit` problems of each benchmark (null = all).
        gpu_memory_utilization: vLLM's share of the GPU in `sposd eval` (training uses hardware.*).
        results_every_s: rewrite results.json (marked incomplete) at most this often while generating.
    """

    name: str = MISSING
    k: int = 12
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = -1
    min_p: float = 0.0
    max_new_tokens: int = 38912
    max_model_len: int | None = None
    enable_thinking: bool = True
    prompt: str = EVAL_PROMPT
    answer_line_fallback: bool = True
    grade_timeout_s: float = 5.0
    grade_workers: int | None = None
    limit: int | None = None
    gpu_memory_utilization: float = 0.9
    results_every_s: float = 30.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"eval.k must be >= 1, got {self.k}")
        check_sampling(
            "eval",
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            allow_greedy=True,
        )
        _check_positive("eval.max_new_tokens", self.max_new_tokens)
        if self.max_model_len is not None:
            _check_positive("eval.max_model_len", self.max_model_len)
        if "{problem}" not in self.prompt:
            raise ValueError(f"eval.prompt must contain {{problem}}, got {self.prompt!r}")
        _check_positive("eval.grade_timeout_s", self.grade_timeout_s)
        if self.grade_workers is not None:
            _check_positive("eval.grade_workers", self.grade_workers)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit must be >= 1 (or null for all), got {self.limit}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"eval.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        _check_positive("eval.results_every_s", self.results_every_s)
