"""A tiny random-init Qwen3 model + the character tokenizer, saved in Hugging Face format.

The directory loads with `AutoModelForCausalLM` / `AutoTokenizer` and with `vllm.LLM(model=dir)`. vLLM's CPU
attention needs head_dim >= 32 (notes/CPU_STACK.md), so head_dim is fixed at 32 whatever hidden_size is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

HEAD_DIM = 32
VOCAB_MULTIPLE = 64


def padded_vocab_size(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round n up to a multiple (embedding rows past the tokenizer's ids are never produced by it)."""
    return -(-n // multiple) * multiple


@contextmanager
def atomic_dir(out_dir: str | os.PathLike):
    """Yield a temp dir beside `out_dir`; on success rename it to `out_dir` (replacing an old one).

    A crash leaves only a `.tmp-*` sibling, never a half-written `out_dir`.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".old-{out.name}-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 2,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> Path:
    """Build a random-init Qwen3ForCausalLM (float32) and the char tokenizer; save both to `out_dir` atomically.

    Embeddings are tied by default, like Qwen3-0.6B/1.7B/4B, so weight sync exercises the tied case.

    Returns:
        out_dir as a Path.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from sposd.models.tokenizer import build_char_tokenizer, save_tokenizer

    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    tok = build_char_tokenizer(model_max_length=max_position_embeddings)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    config = Qwen3Config(
        vocab_size=padded_vocab_size(len(tok)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
        torch_dtype="float32",
    )
    # transformers 5 calls it `dtype`; vLLM and older transformers read `torch_dtype` from config.json.
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, pad], pad_token_id=pad, bos_token_id=None, do_sample=True, temperature=1.0
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tok, tmp)
        _add_legacy_config_keys(tmp / "config.json")
    return Path(out_dir)


def _add_legacy_config_keys(config_path: Path) -> None:
    """Add the pre-v5 spellings (`torch_dtype`, top-level `rope_theta`) that transformers 5 no longer writes.

    vLLM and transformers 4.x read them; transformers 5 ignores the extra keys.
    """
    import json

    cfg = json.loads(config_path.read_text())
    cfg.setdefault("torch_dtype", "float32")
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
    config_path.write_text(json.dumps(cfg, indent=2) + "\n")
