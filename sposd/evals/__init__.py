"""Evaluation: benchmarks, metrics (Avg@k, unbiased pass@k, maj@k), samples.jsonl, results.json, re-grading.

The loop of `sposd eval` and evaluation during training is `sposd/evaluate.py`; nothing here imports vLLM.
"""
