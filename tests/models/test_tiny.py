"""Tests for sposd/models/tiny.py: HF-format files, loading, logits shape, determinism, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch


def test_files_and_config(tiny_model_dir):
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (tiny_model_dir / name).exists(), name
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["torch_dtype"] == "float32" and cfg["head_dim"] == 32
    assert cfg["vocab_size"] % 64 == 0
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert 2 in gen["eos_token_id"] and gen["pad_token_id"] == 0  # <|im_end|>, <|endoftext|>
    assert not list(tiny_model_dir.parent.glob(".tmp-*"))


def test_loads_with_transformers_and_gives_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.dtype == torch.float32
    assert len(tok) == model.config.vocab_size  # reserved tokens fill the padded vocabulary
    ids_BT = torch.tensor([tok.encode("Compute 1+2."), tok.encode("Compute 3-4.")])
    with torch.no_grad():
        logits_BTV = model(input_ids=ids_BT).logits
    assert logits_BTV.shape == (2, ids_BT.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits_BTV).all()


def test_deterministic_by_seed_and_atomic_replace(tmp_path):
    from safetensors.torch import load_file

    from sposd.models.tiny import build_tiny_model

    kw = dict(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    a = load_file(build_tiny_model(tmp_path / "a", seed=3, **kw) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=3, **kw) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(build_tiny_model(tmp_path / "a", seed=4, **kw) / "model.safetensors")  # replaces "a"
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_rejects_bad_head_grouping(tmp_path):
    from sposd.models.tiny import build_tiny_model

    with pytest.raises(ValueError, match="num_kv_heads"):
        build_tiny_model(tmp_path / "m", num_heads=3, num_kv_heads=2)
    assert not (tmp_path / "m").exists()
