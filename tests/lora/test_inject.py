"""Tests for minituner.lora.inject: add_lora on MiniGPT and any module, merge_lora, counting."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from lora_util import (
    VOCAB,
    Toy,
    randomize_lora,
    tiny,
    tokens,
)

from minituner.lora.adapter_io import (
    lora_state_dict,
)
from minituner.lora.inject import add_lora, count_parameters, lora_layers, merge_lora
from minituner.lora.layer import LoRALinear

# -------------------------------------------------------------- add_lora


def test_add_lora_paths_and_full_path_target():
    model = tiny()
    assert add_lora(model, "q,v", r=2, alpha=4) == [
        f"blocks.{i}.attn.{n}" for i in range(2) for n in ("q_proj", "v_proj")
    ]
    other = tiny()
    assert add_lora(other, "blocks.1.mlp.fc_out", r=2, alpha=4) == ["blocks.1.mlp.fc_out"]


def test_add_lora_on_plain_modules():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    expected = seq(x)
    assert add_lora(seq, "0,2", r=2, alpha=2) == ["0", "2"]
    assert torch.equal(seq(x), expected)
    toy = Toy()
    assert add_lora(toy, "attn", r=2, alpha=4) == ["q_proj", "v_proj"]  # k, o absent: skipped
    assert not toy.head.weight.requires_grad
    trainable = [n for n, p in toy.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"]


def test_training_changes_only_lora():
    model = tiny()
    paths = add_lora(model, "q,v,fc_in", r=4, alpha=8, dropout=0.1)
    assert len(paths) == 6
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: t.clone() for n, t in lora_state_dict(model).items()}
    # every parameter goes to the optimizer, with weight decay: frozen ones must still not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    x = tokens(batch=4, length=16)
    for _ in range(3):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for name, p in model.named_parameters():
            is_lora = name.endswith((".lora_A", ".lora_B"))
            assert (p.grad is not None) == is_lora, name
            assert p.requires_grad == is_lora, name
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    after = lora_state_dict(model)
    assert set(after) == {f"{p}.{k}" for p in paths for k in ("lora_A", "lora_B")}
    assert all(not torch.equal(after[n], lora_before[n]) for n in after)


@pytest.mark.parametrize(
    "targets,match",
    [
        ([], r"no LoRA targets given"),
        ("", r"no LoRA targets given"),
        (" , ", r"no LoRA targets given"),
        (5, r"targets must be a list of names or a comma-separated string"),
        ([1], r"target names must be strings"),
        ("q,zz", r"'zz' matches no module of MiniGPT; Linear .* available: fc_in, fc_out, k_proj"),
        ("ln_1", r"'ln_1' is a LayerNorm in MiniGPT, not an nn.Linear"),
    ],
)
def test_add_lora_rejects_bad_targets(targets, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        add_lora(model, targets, r=2, alpha=4)
    assert not lora_layers(model)


def test_add_lora_rejects_double_wrap_no_match_and_bad_rank_without_changing_model():
    model = tiny()
    add_lora(model, "q", r=2, alpha=4)
    with pytest.raises(ValueError, match=r"LoRA already added to blocks.0.attn.q_proj"):
        add_lora(model, "attn", r=2, alpha=4)
    with pytest.raises(ValueError, match=r"matched no Linear layer of Sequential"):
        add_lora(nn.Sequential(nn.Linear(3, 3)), "attn", r=2, alpha=4)
    fresh = tiny()
    # fc_in is 32 -> 128, q_proj 32 -> 32: r=40 fits neither, and nothing may be half-done
    with pytest.raises(ValueError, match=r"r=40 does not fit blocks.0.attn.q_proj"):
        add_lora(fresh, "fc_in,q", r=40, alpha=4)
    assert not lora_layers(fresh)
    assert all(p.requires_grad for p in fresh.parameters())


# ------------------------------------------------------------ merge_lora


def test_merge_lora_gives_plain_linears_and_leaves_tied_embedding_alone():
    model = tiny()
    emb = model.tok_emb.weight.detach().clone()
    add_lora(model, "all,lm_head", r=4, alpha=8)
    randomize_lora(model)
    x = tokens()
    expected = model(x)
    with pytest.raises(ValueError, match="tied"):
        model.lm_head.merge()
    assert merge_lora(model) is model
    assert not lora_layers(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert isinstance(model.blocks[0].attn.q_proj, nn.Linear)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.tok_emb.weight, emb)


def test_merge_lora_after_in_place_merge_adds_delta_once():
    model = tiny()
    add_lora(model, "q", r=2, alpha=4)
    randomize_lora(model)
    x = tokens()
    expected = model(x)
    model.blocks[0].attn.q_proj.merge()
    merge_lora(model)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------ accounting


def test_count_parameters_counts_tied_weights_once():
    model = tiny()
    n_base = model.num_params()
    add_lora(model, "q,v", r=4, alpha=8)
    counts = count_parameters(model)
    n_lora = 2 * 2 * 4 * (32 + 32)  # layers x modules x r(in + out)
    assert counts["trainable"] == n_lora
    assert counts["total"] == n_base + n_lora == sum(p.numel() for p in model.parameters())
    per = {m["name"]: m for m in counts["per_module"]}
    assert per["blocks.0.attn.q_proj"] == {
        "name": "blocks.0.attn.q_proj",
        "trainable": 256,
        "total": 256,
    }
    assert per["blocks.0.attn.q_proj.base"]["trainable"] == 0
    assert "lm_head" not in per  # its weight is the token embedding, counted there
    assert sum(m["total"] for m in counts["per_module"]) == counts["total"]
