"""Model directories (minituner.minigpt.checkpoint): the shipped base loads, a save/load
round trip is exact and pickle-free, and a missing or corrupt directory is one
ValueError line that names it and says how to rebuild it, with nothing on disk touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minituner.finetune.result import load_base
from minituner.io import save_tensors
from minituner.minigpt.checkpoint import load_model, save_model
from minituner.minigpt.model import MiniGPT, preset_config
from minituner.paths import base_dir


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (and the names of dirs)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@pytest.fixture
def base_copy(tmp_path) -> Path:
    """A copy of the shipped base directory, so nothing real can be damaged."""
    out = tmp_path / "base"
    shutil.copytree(base_dir(), out)
    return out


def test_load_shipped_base(base):
    assert not base.model.training
    assert base.model.config.vocab_size == base.tok.vocab_size
    assert base.model.lm_head.weight is base.model.tok_emb.weight


def corrupt_garbage_weights(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"this is not a safetensors file" * 10)


def corrupt_empty_weights(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"")


def corrupt_truncated_weights(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def corrupt_missing_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()


def corrupt_wrong_shapes(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    small = MiniGPT(preset_config("tiny", vocab_size=cfg["model"]["vocab_size"]))
    sd = {k: v for k, v in small.state_dict().items() if k != "lm_head.weight"}  # tied
    save_tensors(d / "model.safetensors", sd)


def corrupt_missing_tensor(d: Path) -> None:
    from minituner.io import load_tensors

    sd = load_tensors(d / "model.safetensors")
    sd.pop("blocks.0.attn.q_proj.weight")
    save_tensors(d / "model.safetensors", sd)


def corrupt_config_not_json(d: Path) -> None:
    (d / "config.json").write_text('{"model": {"vocab_size": 49,', encoding="utf-8")


def corrupt_config_no_model(d: Path) -> None:
    (d / "config.json").write_text('{"corpus_version": "c1-x"}', encoding="utf-8")


def corrupt_config_bad_sizes(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    cfg["model"]["n_layer"] = 0
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")


def corrupt_config_unknown_field(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    cfg["model"]["n_experts"] = 8
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")


def corrupt_config_list(d: Path) -> None:
    (d / "config.json").write_text("[1, 2, 3]", encoding="utf-8")


def corrupt_missing_config(d: Path) -> None:
    (d / "config.json").unlink()


def corrupt_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").write_text("garbage", encoding="utf-8")


def corrupt_tokenizer_vocab(d: Path) -> None:
    (d / "tokenizer.json").write_text('{"type": "char", "chars": ["a", "b"]}', encoding="utf-8")


def corrupt_missing_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").unlink()


CORRUPTIONS = [
    corrupt_garbage_weights,
    corrupt_empty_weights,
    corrupt_truncated_weights,
    corrupt_missing_weights,
    corrupt_wrong_shapes,
    corrupt_missing_tensor,
    corrupt_config_not_json,
    corrupt_config_no_model,
    corrupt_config_bad_sizes,
    corrupt_config_unknown_field,
    corrupt_config_list,
    corrupt_missing_config,
    corrupt_tokenizer,
    corrupt_tokenizer_vocab,
    corrupt_missing_tokenizer,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.removeprefix("corrupt_"))
def test_load_corrupt_model_dir(base_copy, corrupt):
    corrupt(base_copy)
    before = snapshot(base_copy)
    with pytest.raises(ValueError) as exc:
        load_model(base_copy)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(base_copy) in msg
    assert "pretrain" in msg  # says how to rebuild it
    assert snapshot(base_copy) == before


def test_load_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="no model directory"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError):
        load_model(tmp_path / "a_file")


def test_save_load_round_trip(tmp_path, base):
    save_model(tmp_path / "m", base.model, base.tok, {"note": "copy"})
    model, tok, cfg = load_model(tmp_path / "m")
    assert cfg["note"] == "copy"
    assert tok.chars == base.tok.chars
    sd, sd2 = base.model.state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    # no pickle anywhere in a model directory
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def _hostile(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "deep":
        path.write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    else:  # nan weights
        sd = load_file(base_dir() / "model.safetensors")
        key = sorted(sd)[0]
        sd[key] = torch.full_like(sd[key], float("nan"))
        save_file(sd, path)


HOSTILE = [
    (name, kind)
    for name in ("config.json", "tokenizer.json", "model.safetensors", "metrics.json")
    for kind in ("fifo", "devzero", "nan" if name.endswith(".safetensors") else "deep")
]


@pytest.mark.parametrize(("name", "kind"), HOSTILE)
def test_a_hostile_base_file_is_one_value_error(base_copy, name, kind):
    """issue 23, items 3-5 for the base model: a FIFO (was: a hang), a link to /dev/zero
    (was: memory until killed), 100,000-deep JSON or NaN weights in any file of the base
    directory is one ValueError line naming the file, at once."""
    _hostile(base_copy / name, kind)

    def hung(signum, frame):
        raise TimeoutError("loading the base model blocked for 30 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(ValueError) as exc:
            load_base(base_copy)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
