"""A character-level tokenizer with Qwen3-style ChatML special tokens, built locally (nothing is downloaded).

Every printable ASCII character, tab and newline is one token, so encode -> decode round-trips any printable
ASCII text exactly; any other character becomes `<|unk|>` (a special token: decoding with skip_special_tokens
drops it). It is a `tokenizers` BPE model with no merges (every character stays one token) and a `Fuse`
decoder (decoding concatenates, never inserts spaces); vLLM's incremental detokenizer (`DecodeStream`) handles
it like any fast tokenizer. There is deliberately no byte fallback: a sampled lone UTF-8 byte token makes
vLLM's detokenizer reset its stream and its text disagree with `tokenizer.decode`.

Ids: 0 `<|endoftext|>` (pad), 1 `<|im_start|>`, 2 `<|im_end|>` (eos), 3 `<|unk|>`, 4 `<think>`, 5 `</think>`,
6.. the 97 characters, then `<|reserved_k|>` special tokens up to a multiple of 64 (128 in all). The reserved
tokens make the tokenizer exactly as large as the model's (padded) vocabulary, so every id a model can sample
decodes to something. `<think>` / `</think>` are added tokens that are not "special" (as in Qwen3):
`skip_special_tokens` keeps them.

The toy task renders prompts with enable_thinking=False (conf/model/tiny.yaml): the prompt then ends with the
empty think block, 6 tokens, and the model answers with the worked solution directly, which keeps sequences
short. The warm start trains exactly that format (sposd/models/warmstart.py).
"""

from __future__ import annotations

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, UNK_TOKEN)
CHARS = "".join(chr(c) for c in range(32, 127)) + "\t\n"
VOCAB_MULTIPLE = 64

# Qwen3's template, reduced to what a text-only model needs (no tools): each turn is
# `<|im_start|>role\ncontent<|im_end|>\n`; the generation prompt opens an assistant turn and, with
# enable_thinking=False, pre-fills an empty think block exactly as Qwen3 does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def build_char_tokenizer(*, model_max_length: int = 512, vocab_multiple: int = VOCAB_MULTIPLE):
    """Return the character-level ChatML tokenizer as a `transformers.PreTrainedTokenizerFast`.

    Args:
        model_max_length: recorded in tokenizer_config.json (the model's max_position_embeddings).
        vocab_multiple: reserved special tokens pad the vocabulary to a multiple of this.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    base = [*SPECIAL_TOKENS, THINK_OPEN, THINK_CLOSE, *CHARS]
    reserved = [f"<|reserved_{k}|>" for k in range(-len(base) % vocab_multiple)]
    vocab = {t: i for i, t in enumerate(base + reserved)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, fuse_unk=False))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIAL_TOKENS, *reserved)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN, THINK_CLOSE)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(tokenizer, out_dir) -> None:
    """`save_pretrained`, plus the chat template and a portable class name inside tokenizer_config.json.

    transformers 5 writes the template to chat_template.jinja and names its own backend class; copying the
    template into tokenizer_config.json and naming `PreTrainedTokenizerFast` keeps the directory loadable
    by transformers 4.x too (the CUDA vLLM wheels may pin one).
    """
    import json
    from pathlib import Path

    out = Path(out_dir)
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = tokenizer.chat_template
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
