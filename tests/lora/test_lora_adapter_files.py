"""Adapter folders for `sposd eval` (no DeepSpeed, no vLLM): which adapter and base a config names, and the merge.

A PEFT adapter written by peft itself (random B, so it changes the model) is merged into its base by
`merge_adapter_folder`, found through adapter_config.json or given explicitly; the merged folder is a plain
Hugging Face model whose logits equal the PeftModel's.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sposd.models.lora import eval_adapter, merge_adapter_folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    out = tmp_path_factory.mktemp("adapter") / "a"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = peft_model(ids).logits
    return out, want


def _model(path, adapter=None):
    return SimpleNamespace(path=str(path), adapter=None if adapter is None else str(adapter))


def test_eval_finds_the_adapter_and_its_base(adapter_dir, tiny_model_dir, tmp_path):
    folder, _ = adapter_dir
    assert eval_adapter(_model(tiny_model_dir)) is None  # a plain model
    assert eval_adapter(_model(folder)) == (str(folder), None)  # base from adapter_config.json
    assert eval_adapter(_model(tiny_model_dir, folder)) == (str(folder), str(tiny_model_dir))  # explicit base
    with pytest.raises(ValueError, match="has no adapter_config.json"):
        eval_adapter(_model(tiny_model_dir, tmp_path))


@pytest.mark.parametrize("explicit_base", [False, True])
def test_merged_folder_is_a_plain_model_with_the_adapters_logits(adapter_dir, tiny_model_dir, tmp_path,
                                                                 explicit_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, want = adapter_dir
    out = merge_adapter_folder(str(folder), base=str(tiny_model_dir) if explicit_base else None,
                               out_dir=tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([[1, 5, 6, 7, 8, 9]])).logits, want, rtol=1e-5, atol=1e-5)
    AutoTokenizer.from_pretrained(out)  # vLLM and the prompts need one
