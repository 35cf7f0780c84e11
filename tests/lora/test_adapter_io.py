"""Tests for minituner.lora.adapter_io: exact round trips, mismatches and damaged files refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from lora_util import (
    VOCAB,
    randomize_lora,
    tiny,
    tokens,
)

from minituner.lora.adapter_io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_adapter,
    lora_state_dict,
    save_adapter,
)
from minituner.lora.inject import add_lora, lora_layers
from minituner.minigpt.model import MiniGPT, preset_config


def trained_tiny(targets="q,v", **overrides) -> MiniGPT:
    model = tiny(**overrides)
    add_lora(model, targets, r=4, alpha=8, dropout=0.05)
    randomize_lora(model)
    return model.eval()


def test_save_load_round_trip_is_exact(tmp_path):
    model = trained_tiny()
    x = tokens()
    expected = model(x)
    out = save_adapter(tmp_path / "run1", model, {"lr": 3e-4, "note": "irregular verbs"})
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
    meta = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (meta["r"], meta["alpha"], meta["rslora"], meta["dropout"]) == (4, 8.0, False, 0.05)
    assert meta["targets"] == ["q_proj", "v_proj"]
    assert meta["modules"]["blocks.1.attn.v_proj"]["in_features"] == 32
    assert meta["config"] == {"lr": 3e-4, "note": "irregular verbs"}

    fresh = tiny()  # same base weights, no LoRA yet
    loaded = load_adapter(out, fresh)
    assert loaded["config"]["note"] == "irregular verbs"
    assert fresh.blocks[0].attn.v_proj.dropout == 0.05
    assert torch.equal(fresh.eval()(x), expected)
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == list(
        lora_state_dict(fresh)
    )
    # a model that already has the same LoRA layers just takes the values
    again = tiny()
    add_lora(again, "q,v", r=4, alpha=8)
    load_adapter(out, again)
    assert torch.equal(again(x), expected)


def test_load_into_other_shape_or_targets_says_what_differs(tmp_path):
    save_adapter(tmp_path, trained_tiny())
    bigger = MiniGPT(preset_config("small", vocab_size=VOCAB))
    with pytest.raises(
        ValueError,
        match=r"blocks.0.attn.q_proj: adapter lora_A is \(4, 32\), model expects \(4, 96\)",
    ):
        load_adapter(tmp_path, bigger)
    assert not lora_layers(bigger)  # nothing changed on failure
    other_targets = tiny()
    add_lora(other_targets, "k,v", r=4, alpha=8)
    with pytest.raises(
        ValueError,
        match=r"adapter has blocks.0.attn.q_proj but the model has no LoRA layer there.*model has LoRA on blocks.0.attn.k_proj",
    ):
        load_adapter(tmp_path, other_targets)
    other_rank = tiny()
    add_lora(other_rank, "q,v", r=2, alpha=8)
    with pytest.raises(ValueError, match=r"adapter lora_A is \(4, 32\), model expects \(2, 32\)"):
        load_adapter(tmp_path, other_rank)
    other_alpha = tiny()
    add_lora(other_alpha, "q,v", r=4, alpha=16)
    with pytest.raises(ValueError, match=r"adapter alpha is 8.0, the model's is 16.0"):
        load_adapter(tmp_path, other_alpha)
    deeper = tmp_path / "deeper"
    save_adapter(deeper, trained_tiny(n_layer=3))
    with pytest.raises(
        ValueError, match=r"adapter has blocks.2.attn.q_proj but the model has no such layer"
    ):
        load_adapter(deeper, tiny())
    merged = trained_tiny()
    merged.blocks[0].attn.q_proj.merge()
    with pytest.raises(ValueError, match=r"blocks.0.attn.q_proj is merged"):
        load_adapter(tmp_path, merged)


def test_bad_adapter_files_raise_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"adapter_config.json is missing"):
        load_adapter(tmp_path / "nowhere", tiny())
    save_adapter(tmp_path, trained_tiny())
    weights, cfg = tmp_path / ADAPTER_WEIGHTS, tmp_path / ADAPTER_CONFIG
    good = weights.read_bytes()
    for damaged in (b"not a safetensors file", good[: len(good) // 2], b""):
        weights.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"is not a valid safetensors file") as err:
            load_adapter(tmp_path, tiny())
        assert "\n" not in str(err.value)
    weights.unlink()
    with pytest.raises(ValueError, match=r"adapter.safetensors is missing"):
        load_adapter(tmp_path, tiny())
    weights.write_bytes(good)
    meta = json.loads(cfg.read_text())
    cfg.write_text("{ not json")
    with pytest.raises(ValueError, match=r"not a readable adapter config"):
        load_adapter(tmp_path, tiny())
    meta["modules"]["blocks.0.attn.q_proj"]["r"] = 0
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"bad entry for blocks.0.attn.q_proj"):
        load_adapter(tmp_path, tiny())
    meta["modules"]["blocks.0.attn.q_proj"]["r"] = 2
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not match adapter_config.json"):
        load_adapter(tmp_path, tiny())


def test_special_or_escaping_adapter_files_are_refused(tmp_path):
    """issue 23, item 4: a FIFO or a device as an adapter file is refused without reading
    it, and inside a store (``root``) a link to a file outside the store is refused."""
    store = tmp_path / "store"
    folder = save_adapter(store / "run", trained_tiny())
    weights, cfg = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    weights.symlink_to(outside)
    load_adapter(folder, tiny())  # a link is fine where no store is named
    with pytest.raises(ValueError, match=r"adapter.safetensors is a link .* outside"):
        load_adapter(folder, tiny(), root=store)
    weights.unlink()
    weights.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"adapter.safetensors is not a regular file"):
        load_adapter(folder, tiny())
    weights.unlink()
    outside.rename(weights)
    cfg.unlink()
    os.mkfifo(cfg)
    with pytest.raises(ValueError, match=r"adapter_config.json is not a regular file"):
        load_adapter(folder, tiny())


def test_an_adapter_config_of_the_wrong_shape_is_a_value_error(tmp_path):
    """issue 23, item 6 (adapter side): a list where a module entry belongs."""
    save_adapter(tmp_path, trained_tiny())
    cfg = tmp_path / ADAPTER_CONFIG
    meta = json.loads(cfg.read_text())
    for bad in ([1, 2], None, "x", 3):
        meta["modules"]["blocks.0.attn.q_proj"] = bad
        cfg.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=r"bad entry for blocks.0.attn.q_proj"):
            load_adapter(tmp_path, tiny())
    cfg.write_text(json.dumps([meta]))
    with pytest.raises(ValueError, match=r"adapter_config.json"):
        load_adapter(tmp_path, tiny())


def test_save_adapter_rejects_bad_requests(tmp_path):
    with pytest.raises(ValueError, match=r"no LoRA layers"):
        save_adapter(tmp_path, tiny())
    with pytest.raises(ValueError, match=r"cannot be written as JSON"):
        save_adapter(tmp_path, trained_tiny(), {"f": object()})
    with pytest.raises(ValueError, match=r"config must be a dict"):
        save_adapter(tmp_path, trained_tiny(), ["r", 4])
    assert not list(tmp_path.iterdir())  # nothing half-written
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"is a file"):
        save_adapter(file, trained_tiny())


def test_no_pickle_loading_in_lora_package():
    for path in (Path(__file__).parents[2] / "minituner" / "lora").rglob("*.py"):
        source = path.read_text()
        assert "torch.load(" not in source and "import pickle" not in source, path


@pytest.mark.parametrize("fmt", ["own", "peft"])
def test_load_adapter_recognises_either_layout_and_own_stays_the_default(tmp_path, fmt):
    model = trained_tiny()
    kw = {} if fmt == "own" else {"format": "peft"}
    save_adapter(tmp_path, model, **kw)
    names = sorted(p.name for p in tmp_path.iterdir())
    weights = ADAPTER_WEIGHTS if fmt == "own" else "adapter_model.safetensors"
    assert names == sorted([ADAPTER_CONFIG, weights])
    fresh = tiny()
    meta = load_adapter(tmp_path, fresh)
    assert meta["format"] == ("minituner-lora" if fmt == "own" else "peft")
    for key, t in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[key], t), key
    x = tokens()
    assert torch.equal(model.eval()(x), fresh.eval()(x))
