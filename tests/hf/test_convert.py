"""minituner.hf.convert: GPT-2's Conv1D layers become equal Linears (LoRA fits them), and a
PEFT adapter aimed at an unconverted Conv1D is refused with the fix named."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from minituner.hf import TransposedLinear, conv1d_to_linear  # noqa: E402
from minituner.lora.adapter_io import load_adapter  # noqa: E402
from minituner.lora.inject import lora_layers  # noqa: E402


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=64, n_layer=2, n_head=4, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_every_conv1d_becomes_a_linear_computing_the_same():
    model = gpt2()
    converted = copy.deepcopy(model)
    paths = conv1d_to_linear(converted)
    assert sorted(paths) == sorted(
        f"transformer.h.{i}.{p}" for i in (0, 1) for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )  # fmt: skip
    layer = converted.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(layer, TransposedLinear) and layer.fan_in_fan_out
    assert (layer.in_features, layer.out_features) == (64, 192)
    assert torch.equal(layer.weight, model.get_submodule("transformer.h.0.attn.c_attn").weight.t())
    x = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(converted(x).logits, model(x).logits, atol=1e-6, rtol=0)
    assert conv1d_to_linear(converted) == []  # nothing left to convert


def test_a_peft_adapter_for_an_unconverted_gpt2_names_the_conversion(tmp_path):
    model = gpt2()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    peft.get_peft_model(copy.deepcopy(model), cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"Conv1D .*minituner.hf.conv1d_to_linear\(model\)"):
        load_adapter(tmp_path, model)
    assert not lora_layers(model)
    conv1d_to_linear(model)
    assert len(load_adapter(tmp_path, model)["modules"]) == 2
