"""Saving and loading a model directory: model.safetensors + config.json + tokenizer.json.

No pickle: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from minituner.io import check_tensors, load_tensors, read_json, save_tensors, write_json
from minituner.minigpt.model import GPTConfig, MiniGPT
from minituner.minigpt.tokenizer import CharTokenizer
from minituner.paths import base_dir


def save_model(directory: str | os.PathLike, model: MiniGPT, tok: CharTokenizer, extra=None):
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(d / "tokenizer.json")
    write_json(d / "config.json", {"model": model.config.to_dict(), **(extra or {})})
    # tied weights: store the embedding once; lm_head is re-tied on load
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_tensors(d / "model.safetensors", sd)


def load_model(
    directory: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> tuple[MiniGPT, CharTokenizer, dict]:
    """Load a model directory written by :func:`save_model` (default: the shipped base
    model, :func:`minituner.paths.base_dir`).

    Returns (model in eval mode, tokenizer, config.json contents).

    Raises:
        ValueError: a missing or corrupt file, with what to do about it; no data folder.
    """
    d = Path(directory) if directory is not None else base_dir()
    hint = "run `python -m minituner pretrain` to rebuild it (or restore it with git)"
    if not d.is_dir():
        raise ValueError(f"no model directory at {d}: {hint}")
    try:
        cfg = read_json(d / "config.json")
        tok = CharTokenizer.load(d / "tokenizer.json")
        model_cfg = GPTConfig.from_dict(cfg["model"])
        if model_cfg.vocab_size != tok.vocab_size:
            raise ValueError(
                f"config vocab_size {model_cfg.vocab_size} != tokenizer's {tok.vocab_size}"
            )
        sd = check_tensors(load_tensors(d / "model.safetensors"), "model.safetensors")
        model = MiniGPT(model_cfg)
        # check shapes first: load_state_dict's own message spans many lines
        expected = model.state_dict()
        wrong = [k for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
        if wrong:
            k = wrong[0]
            raise ValueError(
                f"weights do not match the config ({k} has shape "
                f"{tuple(sd[k].shape)}, expected {tuple(expected[k].shape)}; "
                f"{len(wrong)} tensors differ)"
            )
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(
                f"weights do not match the config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"model in {d} cannot be loaded: {e}; {hint}") from None
    model.eval()
    return model.to(device), tok, cfg
