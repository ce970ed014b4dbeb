"""Tests for sposd/models/tokenizer.py: one token per character, exact round trip, ChatML template, save/load."""

from __future__ import annotations

import json
import string

import pytest

from sposd.models.tokenizer import CHAT_TEMPLATE, build_char_tokenizer, save_tokenizer

PRINTABLE = "".join(chr(c) for c in range(32, 127)) + "\n\t"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.mark.parametrize("text", [PRINTABLE, "Compute 12+7-15.", "12+7=19. 19-15=4. \\boxed{4}", "  a  b \n\n c ", ""])
def test_round_trip_is_exact_one_token_per_char(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_special_tokens(tok):
    assert len(tok) % 64 == 0
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert (tok.pad_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert tok.bos_token is None
    text = "<|im_start|>user\n<think>x</think><|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 1 + 5 + 1 + 1 + 1 + 1
    assert tok.decode(ids) == text
    # <think> survives skip_special_tokens (as in Qwen3); the ChatML markers do not
    assert tok.decode(ids, skip_special_tokens=True) == "user\n<think>x</think>"


def test_non_ascii_becomes_unk(tok):
    ids = tok.encode("a\u00e9b", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["a", "<|unk|>", "b"]
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template(tok):
    msgs = [{"role": "user", "content": "Hi"}]
    render = tok.apply_chat_template
    assert render(msgs, tokenize=False, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    assert render(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    two = [{"role": "system", "content": "S"}, *msgs, {"role": "assistant", "content": "A"}]
    assert render(two, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n")


def test_save_and_reload(tok, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tok, tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE and cfg["eos_token"] == "<|im_end|>"
    assert (tmp_path / "tokenizer.json").exists()
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = string.ascii_letters + " 1+2=3.\n"
    assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert again.chat_template == CHAT_TEMPLATE
    assert (again.eos_token_id, again.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_incremental_decode_matches_full_decode(tok):
    """vLLM detokenizes with tokenizers' DecodeStream, one token at a time: it must agree with decode()."""
    from tokenizers.decoders import DecodeStream

    ids = tok.encode("<think>\n\n</think>\n\n3+4=7. \\boxed{7}<|im_end|>", add_special_tokens=False)
    for skip in (False, True):
        stream, text = DecodeStream(skip_special_tokens=skip), ""
        for i in ids:
            text += stream.step(tok.backend_tokenizer, i) or ""
        assert text == tok.decode(ids, skip_special_tokens=skip)
