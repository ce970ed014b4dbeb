"""Bad inputs across train, eval, grade, export and report: each is one line naming the problem, exit code 2, no
traceback, and nothing on disk changes (the whole workspace is hashed before and after).

Every case fails before a model, vLLM or DeepSpeed loads (config composition, sposd/preflight.py, the data and
benchmark loaders, the export target check), so the CLI runs in-process and the table stays fast. Inputs that
still need a heavy start-up to be detected are listed in HEAVY_ONLY below (not run here).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from sposd.cli import main

W = "@W"  # replaced by the workspace path in a case's argv

# What the cases below need: a training run, an evaluation, someone else's folder, broken models, data files.
META = {"step": 2, "world": 1, "num_steps": 5, "algo": "ssopd", "seed": 0}
GOOD = [{"problem": "1+1", "answer": "2"}, {"problem": "2+2", "answer": "4"}]
SAMPLE = {"benchmark": "b", "id": "1", "completion": "\\boxed{2}", "answer": "2"}
WORKSPACE = {
    "run/.hydra/config.yaml": "num_steps: 5\n",
    "run/config.yaml": "num_steps: 5\n",
    "run/metrics.jsonl": '{"step": 1}\n{"step": 2}\n',
    "run/cli.log": "",
    "run/checkpoints/latest": "step_2\n",
    "run/checkpoints/step_2/meta.json": json.dumps(META),
    "run/checkpoints/step_2/model/config.json": "{}",
    "run/checkpoints/step_2/policy/zero.pt": "shards",
    "run_w2/metrics.jsonl": '{"step": 1}\n',
    "run_w2/checkpoints/latest": "step_1\n",
    "run_w2/checkpoints/step_1/meta.json": json.dumps({**META, "step": 1, "world": 2}),
    "partial/checkpoints/step_3.tmp/rank_00000.pt": "half",
    "evalrun/.hydra/config.yaml": "seed: 0\n",
    "evalrun/results.json": json.dumps({"settings": {"preset": "opsd_repo"}, "benchmarks": {}}),
    "evalrun/samples.jsonl": json.dumps(SAMPLE) + "\n",
    "export1/.sposd_export": "{}\n",
    "export1/config.json": "{}",
    "foreign/notes.txt": "my thesis\n",
    "afile": "not a folder\n",
    "model_noweights/config.json": "{}",
    "model_noconfig/model.safetensors": "weights",
    "adapter_nobase/adapter_config.json": json.dumps({"base_model_name_or_path": "/nonexistent/base", "r": 8}),
    "data/good.jsonl": "".join(json.dumps(r) + "\n" for r in GOOD),
    "data/bad_json.jsonl": json.dumps(GOOD[0]) + "\n{not json\n",
    "data/no_answer.jsonl": json.dumps({"problem": "1+1"}) + "\n",
    "data/empty_problem.jsonl": json.dumps({"problem": " ", "answer": "2"}) + "\n",
    "data/number_problem.jsonl": json.dumps({"problem": 3, "answer": "2"}) + "\n",
    "data/array.jsonl": "[1, 2]\n",
    "data/empty.jsonl": "",
    "data/table.csv": "problem,answer\n1+1,2\n",
    "data/broken.parquet": "not parquet",
    "data/dup_ids.jsonl": "".join(json.dumps({**r, "id": "same"}) + "\n" for r in GOOD),
    "data/latin1.jsonl": "",  # filled with non-UTF-8 bytes below
    "grade/not_json.jsonl": "{oops\n",
    "grade/no_completion.jsonl": json.dumps({k: v for k, v in SAMPLE.items() if k != "completion"}) + "\n",
    "grade/no_benchmark.jsonl": json.dumps({k: v for k, v in SAMPLE.items() if k != "benchmark"}) + "\n",
    "grade/ok.jsonl": json.dumps(SAMPLE) + "\n",
}

# (id, argv, substring the one line must contain). Exit code 2 for all.
TRAIN = [
    ("typo", ["algo.clip_hgih=0.3"], "did you mean algo.clip_high?"),
    ("plus-typo", ["+algo.clip_hgih=0.3"], "algo.clip_hgih is not a key of algo"),
    ("plusplus-new-key", ["++algo.foo=1"], "algo.foo is not a key of algo"),
    ("plus-nested", ["+algo.distill.coeff=1"], "did you mean algo.distill.coef?"),
    ("top-level-typo", ["num_step=5"], "did you mean num_steps?"),
    ("unknown-top-level", ["nokey=1"], "nokey is not a key of the top level"),
    ("algo-option", ["algo=nope"], "algo=nope is not an option of algo"),
    ("model-option", ["model=qwen9"], "model=qwen9 is not an option of model"),
    ("data-option", ["data=nope"], "data=nope is not an option"),
    ("hardware-option", ["hardware=tpu"], "hardware=tpu is not an option"),
    ("logger-option", ["logger=mlflow"], "logger=mlflow is not an option"),
    ("eval-option", ["eval=nope"], "eval=nope is not an option"),
    ("experiment-option", ["experiment=nope"], "experiment=nope is not an option"),
    ("not-a-number", ["optim.lr=abc"], "optim.lr"),
    ("parse-error", ["x=["], "cannot parse an override"),
    ("lr-zero", ["optim.lr=0"], "optim.lr must be > 0"),
    ("lr-negative", ["optim.lr=-1"], "optim.lr must be > 0"),
    ("min-lr-ratio-above-1", ["optim.min_lr_ratio=5"], "optim.min_lr_ratio must be in [0, 1]"),
    ("min-lr-ratio-negative", ["optim.min_lr_ratio=-0.1"], "optim.min_lr_ratio must be in [0, 1]"),
    ("grad-clip-negative", ["optim.grad_clip=-1"], "optim.grad_clip"),
    ("warmup-negative", ["optim.warmup_steps=-5"], "optim.warmup_steps must be >= 0"),
    ("eps-negative", ["optim.eps=-1"], "optim.eps must be > 0"),
    ("eps-zero", ["optim.eps=0"], "optim.eps must be > 0"),
    ("weight-decay-negative", ["optim.weight_decay=-1"], "optim.weight_decay must be >= 0"),
    ("betas-one", ["optim.betas=[0.9]"], "optim.betas"),
    ("betas-above-1", ["optim.betas=[0.9,1.5]"], "optim.betas"),
    ("schedule", ["optim.schedule=exponential"], "optim.schedule"),
    ("rollout-top-k-0", ["rollout.top_k=0"], "rollout.top_k must be -1 (off) or >= 1"),
    ("rollout-top-k-neg", ["rollout.top_k=-2"], "rollout.top_k must be -1 (off) or >= 1"),
    ("rollout-top-p-0", ["rollout.top_p=0"], "rollout.top_p must be in (0, 1]"),
    ("rollout-top-p-big", ["rollout.top_p=1.5"], "rollout.top_p must be in (0, 1]"),
    ("rollout-temp-0", ["rollout.temperature=0"], "rollout.temperature must be > 0"),
    ("rollout-temp-neg", ["rollout.temperature=-1"], "rollout.temperature must be > 0"),
    ("micro-batch-1", ["hardware.micro_batch_tokens=1"], "hardware.micro_batch_tokens"),
    ("nproc-0", ["hardware.nproc=0"], "hardware.nproc must be > 0"),
    ("zero-stage", ["hardware.zero_stage=4"], "hardware.zero_stage"),
    ("device", ["hardware.device=tpu"], "hardware.device"),
    ("vllm-mem", ["hardware.vllm_gpu_memory_utilization=1.5"], "hardware.vllm_gpu_memory_utilization"),
    ("vllm-tp-cpu", ["hardware=cpu", "hardware.vllm_tp=2"], "hardware.vllm_tp=2"),
    ("gpu1-without-gpu", ["hardware=gpu1"], "hardware=gpu1 runs on CUDA GPUs and this machine has none"),
    ("gpu8-without-gpu", ["hardware=gpu8", "prompts_per_step=16"], "this machine has none"),
    ("num-threads", ["hardware.num_threads=-1"], "hardware.num_threads must be >= 0"),
    ("kv-cache", ["hardware.vllm_kv_cache_gb=0"], "hardware.vllm_kv_cache_gb must be > 0"),
    ("group-size-1-grpo", ["algo=grpo", "algo.group_size=1"], "needs algo.group_size >= 2"),
    ("group-size-0", ["algo.group_size=0"], "group_size"),
    ("clip-low", ["algo.clip_low=-0.1"], "clip_low"),
    ("loss-agg", ["algo.loss_agg=nope"], "loss_agg"),
    ("divergence", ["algo.distill.divergence=nope"], "divergence"),
    ("seed-negative", ["seed=-1"], "seed must be >= 0"),
    ("num-steps", ["num_steps=-1"], "num_steps must be >= 0"),
    ("prompts-per-step-0", ["prompts_per_step=0"], "prompts_per_step must be > 0"),
    ("prompts-per-step-ranks", ["hardware=cpu2", "prompts_per_step=3"], "divisible by the number of ranks"),
    ("heldout-samples", ["heldout_samples=0"], "heldout_samples must be > 0"),
    ("save-samples-every", ["save_samples_every=-1"], "save_samples_every must be >= 0"),
    ("dtype", ["model.dtype=int8"], "model.dtype"),
    ("max-new-tokens", ["model.max_new_tokens=0"], "model.max_new_tokens must be > 0"),
    ("max-prompt-len", ["model.max_prompt_len=-1"], "model.max_prompt_len must be > 0"),
    ("builtin-heads", ["model.builtin.num_heads=3"], "model.builtin needs hidden_size divisible"),
    ("builtin-privileged", ["model.builtin.privileged_frac=2"], "model.builtin.privileged_frac"),
    ("data-kind", ["data.kind=weird"], "data.kind"),
    ("data-local-no-path", ["data=local"], "data.kind=local needs data.path"),
    ("data-missing-file", ["data=local", f"data.path={W}/data/nope.jsonl"], "does not exist"),
    ("data-bad-json", ["data=local", f"data.path={W}/data/bad_json.jsonl"], "line 2: not valid JSON"),
    ("data-no-answer", ["data=local", f"data.path={W}/data/no_answer.jsonl"], "line 1: missing field 'answer'"),
    ("data-empty-problem", ["data=local", f"data.path={W}/data/empty_problem.jsonl"], "is empty"),
    ("data-number-problem", ["data=local", f"data.path={W}/data/number_problem.jsonl"], "must be a string"),
    ("data-array-row", ["data=local", f"data.path={W}/data/array.jsonl"], "expected a JSON object"),
    ("data-empty-file", ["data=local", f"data.path={W}/data/empty.jsonl"], "holds no records"),
    ("data-csv", ["data=local", f"data.path={W}/data/table.csv"], "unsupported file type '.csv'"),
    ("data-broken-parquet", ["data=local", f"data.path={W}/data/broken.parquet"], "cannot read as parquet"),
    ("data-not-utf8", ["data=local", f"data.path={W}/data/latin1.jsonl"], "not UTF-8"),
    ("data-fields-key", ["data.fields.nope=x"], "data.fields.nope is not a key of data.fields"),
    ("data-local-fields-key", ["data=local", f"data.path={W}/data/good.jsonl", "data.fields.nope=x"],
     "valid keys: id, problem, answer, solution"),  # fmt: skip
    ("data-mapped-id-missing", ["data=local", f"data.path={W}/data/good.jsonl", "data.fields.id=qid"],
     "missing field 'qid' (for 'id')"),  # fmt: skip
    ("data-limit", ["data.limit=0"], "data.limit must be > 0"),
    ("data-terms", ["data.min_terms=5"], "data.min_terms"),
    ("long-prompts", ["data.long_prompts=truncate"], "data.long_prompts"),
    ("wandb-no-key", ["logger=wandb"], "needs a W&B API key"),
    ("logger-mode", ["logger.mode=sometimes"], "logger.mode"),
    ("resume-missing", [f"train.resume={W}/nowhere"], "is not a complete checkpoint"),
    ("resume-partial", [f"train.resume={W}/partial"], "is not a complete checkpoint"),
    ("resume-past-end", [f"train.resume={W}/run/checkpoints/step_2", "num_steps=1"], "past num_steps=1"),
    ("resume-other-world", [f"hydra.run.dir={W}/run_w2"], "was written by 2 ranks and this run has 1"),
    ("resume-never-into-run", [f"hydra.run.dir={W}/run", "train.resume=never"], "already holds a run"),
    ("resume-other-run-into-run", [f"hydra.run.dir={W}/run_w2", f"train.resume={W}/run"], "already holds a run"),
    ("existing-run-key", ["train.existing_run=maybe"], "train.existing_run"),
    ("train-into-eval", [f"hydra.run.dir={W}/evalrun"], "holds an evaluation"),
    ("train-into-foreign", [f"hydra.run.dir={W}/foreign"], "holds no sposd run"),
    ("train-into-file", [f"hydra.run.dir={W}/afile/run"], "is a file, not a folder"),
    ("cache-dir-file", [f"cache_dir={W}/afile/cache"], "is a file, not a folder"),
    ("checkpoint-every", ["train.checkpoint.every=-1"], "train.checkpoint.every must be >= 0"),
    ("checkpoint-signal", ["train.checkpoint.signals=[SIGKILL]"], "SIGKILL"),
    ("eval-every-no-benchmarks", ["train.eval.every=5", "benchmarks=[]"], "needs benchmarks"),
    ("eval-every-local-no-path", ["train.eval.every=1", "benchmarks=[local]"], "benchmarks.local needs"),
    ("model-missing", [f"model.path={W}/nomodel"], "does not exist"),
    ("model-no-weights", [f"model.path={W}/model_noweights"], "has config.json but no weights"),
    ("model-no-config", [f"model.path={W}/model_noconfig"], "without config.json"),
    ("model-is-file", [f"model.path={W}/afile"], "is a file"),
    ("lora-rank", ["model.lora.rank=-1"], "model.lora.rank must be >= 0 (0 = full fine-tuning), got -1"),
    ("lora-ema-teacher", ["model.lora.rank=8", "algo.distill.teacher=ema"], "with model.lora.rank=8 is not supported"),
    ("lora-no-targets", ["model.lora.rank=8", "model.lora.targets=[]"], "model.lora.targets is empty"),
    ("adapter-in-train", [f"model.adapter={W}/adapter_nobase"], "model.adapter is for `sposd eval`"),
    ("multirun-first-point", ["-m", "optim.lr=-1,1e-4"], "optim.lr must be > 0"),
    ("multirun-typo", ["-m", "seed=0,1", "algo.clip_hgih=0.3"], "did you mean algo.clip_high?"),
]
EVAL = [
    ("k", ["eval.k=0"], "eval.k must be >= 1"),
    ("top-k", ["eval.top_k=0"], "eval.top_k must be -1 (off) or >= 1"),
    ("top-p", ["eval.top_p=0"], "eval.top_p must be in (0, 1]"),
    ("min-p", ["eval.min_p=1"], "eval.min_p must be in [0, 1)"),
    ("temperature", ["eval.temperature=-1"], "eval.temperature must be >= 0"),
    ("max-new-tokens", ["eval.max_new_tokens=0"], "eval.max_new_tokens must be > 0"),
    ("prompt", ["eval.prompt=noplaceholder"], "must contain {problem}"),
    ("limit", ["eval.limit=0"], "eval.limit must be >= 1"),
    ("gpu-mem", ["eval.gpu_memory_utilization=0"], "eval.gpu_memory_utilization"),
    ("results-every", ["eval.results_every_s=0"], "eval.results_every_s must be > 0"),
    ("typo", ["eval.kk=4"], "did you mean eval.k?"),
    ("plus-key", ["+eval.foo=1"], "eval.foo is not a key of eval"),
    ("seed", ["seed=-1"], "seed must be >= 0"),
    ("unknown-benchmark", ["benchmarks=[aime26]"], "unknown benchmark 'aime26'"),
    ("no-benchmarks", ["benchmarks=[]"], "no benchmarks selected"),
    ("local-no-path", ["benchmarks=[local]"], "benchmarks.local needs benchmarks.local.path"),
    ("local-missing", ["benchmarks=[local]", f"benchmarks.local.path={W}/data/nope.jsonl"], "does not exist"),
    ("local-csv", ["benchmarks=[local]", f"benchmarks.local.path={W}/data/table.csv"], "unsupported file type"),
    ("local-mapped-id-missing", ["benchmarks=[local]", f"benchmarks.local.path={W}/data/good.jsonl",
                                 "benchmarks.local.fields.id=nope"], "missing field 'nope' (for 'id')"),  # fmt: skip
    ("local-dup-ids", ["benchmarks=[local]", f"benchmarks.local.path={W}/data/dup_ids.jsonl"], "more than once"),
    ("local-no-answer", ["benchmarks=[local]", f"benchmarks.local.path={W}/data/no_answer.jsonl"], "'answer'"),
    ("bench-fields-key", ["benchmarks.toy.fields.nope=x"], "valid keys: id, problem, answer"),
    ("bench-limit", ["benchmarks.toy.limit=0"], "benchmarks.toy.limit must be >= 1"),
    ("toy-with-path", [f"benchmarks.toy.path={W}/data/good.jsonl"], "takes no path"),
    ("into-training-run", [f"hydra.run.dir={W}/run"], "is a training run"),
    ("into-foreign", [f"hydra.run.dir={W}/foreign"], "holds no sposd evaluation"),
    ("into-file", [f"hydra.run.dir={W}/afile/x"], "is a file, not a folder"),
    ("model-no-weights", [f"model.path={W}/model_noweights"], "has config.json but no weights"),
    ("model-missing", [f"model.path={W}/nomodel"], "does not exist"),
    ("vllm-tp-cpu", ["hardware=cpu", "hardware.vllm_tp=2"], "hardware.vllm_tp=2"),
    ("gpu1-without-gpu", ["hardware=gpu1"], "this machine has none"),
    ("adapter-without-config", [f"model.adapter={W}/foreign"], "has no adapter_config.json"),
    ("adapter-base-missing", [f"model.path={W}/adapter_nobase"], "'/nonexistent/base' (from adapter_config.json)"),
]
NEEDS_NO_GPU = ("gpu1-without-gpu", "gpu8-without-gpu")
GRADE = [
    ("missing-file", [f"{W}/grade/nope.jsonl"], "no such file"),
    ("not-json", [f"{W}/grade/not_json.jsonl"], "not_json.jsonl:1"),
    ("no-completion", [f"{W}/grade/no_completion.jsonl"], "missing field 'completion'"),
    ("no-benchmark", [f"{W}/grade/no_benchmark.jsonl"], "missing field 'benchmark'"),
    ("timeout", [f"{W}/grade/ok.jsonl", "--timeout-s", "0"], "--timeout-s must be > 0"),
    ("workers", [f"{W}/grade/ok.jsonl", "--workers", "0"], "--workers must be >= 1"),
    ("out-is-file", [f"{W}/grade/ok.jsonl", "--out", f"{W}/afile/o"], "is a file, not a folder"),
    ("out-is-an-evaluation", [f"{W}/grade/ok.jsonl", "--out", f"{W}/evalrun"], "is not from `sposd grade`"),
    ("no-args", [], "the following arguments are required"),
    ("bad-flag", [f"{W}/grade/ok.jsonl", "--timeout", "x"], "--timeout-s"),
]
EXPORT = [
    ("missing-checkpoint", [f"{W}/nope", f"{W}/out"], "does not exist"),
    ("incomplete-checkpoint", [f"{W}/partial/checkpoints/step_3.tmp", f"{W}/out"], "not a complete checkpoint"),
    ("not-a-run", [f"{W}/foreign", f"{W}/out"], "not a complete checkpoint"),
    ("into-its-own-run", [f"{W}/run/checkpoints/step_2", f"{W}/run"], "contains or is inside the checkpoint"),
    ("into-the-checkpoint", [f"{W}/run/checkpoints/step_2", f"{W}/run/checkpoints/step_2/hf"], "inside the checkpoint"),
    ("into-foreign", [f"{W}/run", f"{W}/foreign"], "is not an earlier `sposd export`"),
    ("into-another-run", [f"{W}/run", f"{W}/run_w2"], "is not an earlier `sposd export`"),
    ("into-earlier-export", [f"{W}/run", f"{W}/export1"], "add --overwrite"),
    ("into-file", [f"{W}/run", f"{W}/afile"], "is a file"),
    ("under-file", [f"{W}/run", f"{W}/afile/out"], "is a file, not a folder"),
    ("keyword", ["auto", f"{W}/out"], "does not exist"),
    ("adapter-of-full-checkpoint", [f"{W}/run/checkpoints/step_2", f"{W}/out", "--adapter"], "full fine-tuning"),
    ("no-args", [], "the following arguments are required"),
]
REPORT = [
    ("missing", [f"{W}/nope"], "holds no run directory"),
    ("foreign", [f"{W}/foreign"], "holds no run directory"),
    ("a-file", [f"{W}/afile"], "holds no run directory"),
]
CASES = (
    [("train", *c) for c in TRAIN]
    + [("eval", *c) for c in EVAL]
    + [("grade", *c) for c in GRADE]
    + [("export", *c) for c in EXPORT]
    + [("report", *c) for c in REPORT]
)

# Inputs only a heavy start-up detects (the report of issue 14 lists why); not run here.
HEAVY_ONLY = {
    "a prompt longer than model.max_prompt_len": "needs the model's tokenizer (and, for data=hf, the download); "
    "checked at load, before vLLM starts",
    "data=hf with a missing column or a wrong hf_id": "needs the Hub (or its cache)",
    "model.path=<hub id> that does not exist": "needs the Hub",
    "a corrupt safetensors file or a config.json transformers cannot parse": "needs transformers to load the model",
    "a model too large for the GPU / KV cache too small": "known only once vLLM profiles memory",
    "a benchmark prompt longer than the model's context": "needs the tokenizer and the model's config",
    "model.lora.targets naming no linear layer of the model": "needs the model's modules; one line when the learner "
    "loads, before DeepSpeed",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    for rel, text in WORKSPACE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "data/latin1.jsonl").write_bytes('{"problem": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    (root / "home").mkdir()
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root and a hash of its bytes (folders too: an added or removed folder counts)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("command", "name", "argv", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(command, name, argv, expected, workspace, monkeypatch, capsys):
    if name in NEEDS_NO_GPU and torch.cuda.is_available():
        pytest.skip("a GPU preset is valid on this machine")
    monkeypatch.chdir(workspace)  # default run folders (runs/...) would land here and show in the snapshot
    monkeypatch.setenv("HOME", str(workspace / "home"))  # no ~/.netrc with a W&B key
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "RANK", "SPOSD_CHILD_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    before = _snapshot(workspace)
    with pytest.raises(SystemExit) as exit_:
        main([command, *(a.replace(W, str(workspace)) for a in argv)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("sposd: error: "), err
    assert expected.replace(W, str(workspace)) in lines[0], lines[0]
    assert "+" + name not in lines[0] and "use +" not in lines[0]  # never "add + to the key"
    assert _snapshot(workspace) == before, "a bad input changed files on disk"


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 80
    assert len({(c[0], c[1]) for c in CASES}) == len(CASES)
    assert len({(c[0], tuple(c[2])) for c in CASES}) == len(CASES)
