"""LoRA pieces without DeepSpeed: the config, target checks, the on-the-fly merge and its gather units."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sposd.config import LoraCfg
from sposd.models.lora import LoraLayout, adapter_state, check_targets, merge_lora_tensors, sync_units


def test_lora_config_validates_and_defaults_alpha_to_twice_the_rank():
    assert not LoraCfg().enabled  # rank 0 = full fine-tuning
    assert LoraCfg(rank=64).scale_alpha == 128.0
    assert LoraCfg(rank=64, alpha=16).scale_alpha == 16.0
    with pytest.raises(ValueError, match=r"model.lora.rank must be >= 0 \(0 = full fine-tuning\), got -1"):
        LoraCfg(rank=-1)
    with pytest.raises(ValueError, match="model.lora.dropout must be in"):
        LoraCfg(rank=8, dropout=1.0)
    with pytest.raises(ValueError, match="model.lora.alpha must be > 0"):
        LoraCfg(rank=8, alpha=0)
    with pytest.raises(ValueError, match="model.lora.targets is empty"):
        LoraCfg(rank=8, targets=[])


def test_unknown_targets_name_the_valid_ones():
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(2, 2))
    model.add_module("up_proj", nn.Linear(2, 2))
    check_targets(model, ["q_proj"])
    valid = r"choose from \['q_proj', 'up_proj'\]"
    with pytest.raises(ValueError, match=r"\['qkv'\] name no linear layer of this model; " + valid):
        check_targets(model, ["q_proj", "qkv"])


def test_the_output_layer_is_not_a_target(tiny_model_dir):
    # the learner reads lm_head's weight directly (log-probs in [chunk, V] blocks): an adapter there would be inert
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    check_targets(model, ["q_proj", "down_proj"])
    with pytest.raises(ValueError, match=r"\['lm_head'\] name no linear layer of this model; choose from \['down"):
        check_targets(model, ["lm_head"])


def test_merge_is_w_plus_scaled_b_a_by_hand():
    # W = I (2x2), A = [[1, 2]] (r 1 x in 2), B = [[1], [0]] (out 2 x r 1), s = alpha / r = 2
    # B @ A = [[1, 2], [0, 0]] -> W + 2 B A = [[3, 4], [0, 1]]; the bias passes through; A, B leave the stream
    lay = LoraLayout("layer.q_proj", 2.0)
    copies = [
        ("embed.weight", torch.ones(3)),
        ("layer.q_proj.base_layer.weight", torch.eye(2)),
        ("layer.q_proj.base_layer.bias", torch.tensor([5.0, 6.0])),
        ("layer.q_proj.lora_A.default.weight", torch.tensor([[1.0, 2.0]])),
        ("layer.q_proj.lora_B.default.weight", torch.tensor([[1.0], [0.0]])),
    ]
    out = dict(merge_lora_tensors(copies, {lay.prefix: lay}))
    assert list(out) == ["embed.weight", "layer.q_proj.weight", "layer.q_proj.bias"]
    torch.testing.assert_close(out["layer.q_proj.weight"], torch.tensor([[3.0, 4.0], [0.0, 1.0]]), rtol=0, atol=0)
    torch.testing.assert_close(out["layer.q_proj.bias"], torch.tensor([5.0, 6.0]))


def test_merge_matches_peft_merge_and_unload():
    from peft import LoraConfig, get_peft_model

    from sposd.models.lora import lora_layouts

    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("q_proj", nn.Linear(8, 6))
    base.add_module("o_proj", nn.Linear(6, 4, bias=False))
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "o_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # B starts at zero: make the adapter do something
    inner = peft_model.base_model.model
    named = [(n, p.detach().clone()) for n, p in inner.named_parameters()]
    merged = dict(merge_lora_tensors(named, lora_layouts(inner)))
    reference = peft_model.merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for k, v in reference.items():
        torch.testing.assert_close(merged[k], v, rtol=1e-6, atol=1e-6)


def test_a_lora_layers_tensors_are_one_gather_unit_in_order():
    lay = LoraLayout("m.q_proj", 1.0)
    names = ["a", "m.q_proj.base_layer.weight", "m.q_proj.lora_A.default.weight", "m.q_proj.lora_B.default.weight",
             "b"]
    units = sync_units([(n, None) for n in names], {lay.prefix: lay})
    assert [[n for n, _ in u] for u in units] == [["a"], names[1:4], ["b"]]


def test_adapter_state_uses_peft_file_names():
    state = adapter_state([("model.layers.0.q_proj.lora_A.default.weight", torch.zeros(1)),
                           ("model.layers.0.q_proj.base_layer.weight", torch.zeros(1))])
    assert list(state) == ["base_model.model.model.layers.0.q_proj.lora_A.weight"]
