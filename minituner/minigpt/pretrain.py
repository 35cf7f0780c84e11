"""Pretraining MiniGPT on the verb corpus and shipping the result in precomputed/base/.

The base model must really hold the corpus' regular-form prior: on the irregular
past it over-regularizes ("goed") while it handles regular verbs well. Its figures on
the held-out splits go into ``metrics.json`` beside the weights.

Writing a base model never deletes what the user did not ask to delete: a folder that
already holds something (the shipped base model included, which every shipped run was
trained from) is replaced only with ``force=True`` (the CLI's ``--force``);
:func:`check_out_dir` says so before any training starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from minituner.io import atomic_directory, write_json
from minituner.minigpt.checkpoint import save_model
from minituner.minigpt.corpus import CorpusConfig, build_corpus
from minituner.minigpt.data import IGNORE, encode_lines
from minituner.minigpt.evaluate import evaluate
from minituner.minigpt.model import MiniGPT, preset_config
from minituner.minigpt.tokenizer import CharTokenizer
from minituner.minigpt.trainutil import (
    check_seed,
    device_name,
    lr_at,
    resolve_device,
    seed_everything,
)


@dataclass
class PretrainConfig:
    preset: str = "default"
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        check_seed(self.seed)


def pretrain(cfg: PretrainConfig, on_step: Callable[[dict], None] | None = None):
    """Pretrain a MiniGPT; returns (model, tokenizer, info dict).

    ``on_step`` receives {"step", "steps", "loss", "lr"} after every step.
    Deterministic for a seed on the CPU.
    """
    corpus = build_corpus(cfg.corpus)
    tok = CharTokenizer.from_text(corpus.all_text())
    mcfg = preset_config(cfg.preset, vocab_size=tok.vocab_size, block_size=128)
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    model = MiniGPT(mcfg).to(device)
    data = encode_lines(tok, corpus.pretrain)
    if data.max_len > mcfg.block_size + 1:
        raise ValueError(f"corpus line of {data.max_len} tokens exceeds block_size")
    data.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen).to(device)
        x, y = data.batch(idx)
        logits = model(x)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if on_step is not None:
            on_step({"step": step + 1, "steps": cfg.steps, "loss": loss.item(), "lr": lr})
    if device.type == "cuda":
        torch.cuda.synchronize()
    info = {
        "train_time_s": time.perf_counter() - t0,
        "device": device_name(device),
        "final_loss": loss.item(),
    }
    model.eval()
    return model, tok, info


def base_metrics(model, tok, corpus) -> dict:
    """The figures stored in metrics.json (no per-answer lists)."""
    return evaluate(model, tok, corpus)


def check_out_dir(out_dir: str | os.PathLike, force: bool = False, shipped: bool = False) -> Path:
    """``out_dir`` as a Path, if a base model may be written there.

    ``shipped`` marks the data folder's own base model (the default output), named as such
    in the message.

    Raises:
        ValueError: ``out_dir`` (or a folder above it) is a file; or, without ``force``,
            ``out_dir`` is a folder that already holds something.
    """
    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"cannot be made: {p} is a file"
                raise ValueError(f"--out {out} {what}, not a folder")
            break
    if force or not out.is_dir() or not any(out.iterdir()):
        return out
    if shipped:
        raise ValueError(
            f"pretrain would replace the shipped base model in {out}, which every shipped run "
            "was trained from; write to a new folder with --out DIR, or pass --force to "
            "replace it"
        )
    raise ValueError(
        f"--out {out} is not empty; pretrain would delete what it holds: choose a new or "
        "empty folder, or pass --force to replace it"
    )


def write_base(
    out_dir: str | os.PathLike,
    model: MiniGPT,
    tok: CharTokenizer,
    cfg: PretrainConfig,
    info: dict,
    force: bool = False,
) -> dict:
    """Write the base model directory atomically: everything goes to a temporary
    directory first, which then replaces ``out_dir`` in one rename.

    Raises:
        ValueError: as :func:`check_out_dir` (a non-empty ``out_dir`` needs ``force``).
    """
    out = check_out_dir(out_dir, force)
    corpus = build_corpus(cfg.corpus)
    model = model.to("cpu").eval()
    metrics = base_metrics(model, tok, corpus)
    metrics.update(
        num_params=model.num_params(),
        corpus_version=corpus.version,
        pretrain=_config_dict(cfg),
        **info,
    )
    with atomic_directory(out) as tmp:
        save_model(
            tmp, model, tok, {"corpus_version": corpus.version, "pretrain": _config_dict(cfg)}
        )
        write_json(tmp / "metrics.json", metrics)
    return metrics


def _config_dict(cfg: PretrainConfig) -> dict:
    d = asdict(cfg)
    d["device"] = cfg.device
    return d
