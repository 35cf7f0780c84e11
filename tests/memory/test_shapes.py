"""Tests for minituner.memory.shapes: the reference shapes' parameter counts, MiniGPT's shape
against the real model, and target names read as add_lora reads them."""

from __future__ import annotations

import pytest

from minituner.lora.inject import add_lora, lora_layers
from minituner.memory.predict import trainable_params
from minituner.memory.shapes import SHAPES, ModelShape
from minituner.minigpt.model import MiniGPT, preset_config


def test_reference_shapes():
    assert SHAPES["gpt2-small"].total_params() == 124_439_808
    llama = SHAPES["llama-7b"]
    assert llama.total_params() == 6_738_415_616
    assert [lin.name for lin in llama.layer_linears][4:] == ["gate_proj", "up_proj", "down_proj"]
    assert llama.short_targets("mlp") == ("gate", "up", "down")
    assert llama.short_targets(["fc_out", "q_proj"]) == ("q", "down")
    assert llama.short_targets("attn, fc_in") == ("q", "k", "v", "o", "gate", "up")
    assert llama.linears()[-1] == ("lm_head", 4096, 32000)
    assert len(llama.linears()) == 32 * 7 + 1
    with pytest.raises(ValueError, match="gate"):
        llama.short_targets("fc_middle")
    with pytest.raises(ValueError):
        SHAPES["gpt2-small"].short_targets("gate")
    with pytest.raises(ValueError):
        trainable_params(llama, "adapter")


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("targets", [("q", "v"), ("attn",), ("all",), ("fc_out", "k")])
def test_shape_counts_match_minigpt(preset, targets):
    cfg = preset_config(preset, vocab_size=37, block_size=24)
    model = MiniGPT(cfg)
    shape = ModelShape.from_gpt_config(cfg)
    assert shape.total_params() == model.num_params()
    assert trainable_params(shape, "full") == model.num_params(trainable_only=True)
    assert len(shape.param_tensors()) == len(list(model.parameters()))
    add_lora(model, list(targets), r=4, alpha=8)
    assert trainable_params(shape, "lora", 4, targets) == model.num_params(trainable_only=True)


@pytest.mark.parametrize(
    "targets", ["q,v", ["attn"], "mlp", ("all",), ["fc_out", "k_proj"], "o, fc_in", ("v", "v")]
)
def test_short_targets_are_the_layers_add_lora_adapts(targets):
    """ModelShape reads a target list as add_lora does: the same layers of MiniGPT."""
    cfg = preset_config("tiny", vocab_size=20, block_size=8)
    model = MiniGPT(cfg)
    add_lora(model, targets, r=2, alpha=4)
    shape = ModelShape.from_gpt_config(cfg)
    short = {lin.name: lin.target for lin in shape.layer_linears}
    adapted = {short[path.rpartition(".")[2]] for path in lora_layers(model)}
    assert shape.short_targets(targets) == tuple(s for s in short.values() if s in adapted)


def test_short_targets_errors():
    shape = SHAPES["minigpt"]
    with pytest.raises(ValueError, match="no LoRA targets"):
        shape.short_targets(" , ")
    with pytest.raises(ValueError, match=r"unknown target 'lm_head' for minigpt.*attn"):
        shape.short_targets("q,lm_head")
