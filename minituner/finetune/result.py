"""What a fine-tune starts from and what it leaves: the base model and the run's result.

:class:`Base` is the pretrained model (with its metrics, id and corpus config) that every
fine-tune copies; :func:`load_base` reads it from a base directory. :func:`prepare_model`
makes the trainable copy for a method (full, LoRA, QLoRA). :class:`FinetuneResult` is a
finished run; :func:`weight_delta` and :func:`full_delta` are its weight update, as the
run store (:mod:`minituner.store.runs`) saves and rebuilds it. The training loop itself is
:mod:`minituner.finetune.loop`; the store needs only this module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minituner.finetune.config import FinetuneConfig
from minituner.lora.inject import add_lora, lora_layers
from minituner.minigpt.checkpoint import load_model
from minituner.minigpt.corpus import CorpusConfig, build_corpus
from minituner.paths import base_dir


@dataclass
class Base:
    """The pretrained model a fine-tune starts from (kept on the CPU, never modified)."""

    model: torch.nn.Module
    tok: object
    config: dict
    metrics: dict
    model_id: str
    corpus_config: CorpusConfig = field(default_factory=CorpusConfig)

    @property
    def corpus(self):
        return build_corpus(self.corpus_config)


def load_base(directory: str | Path | None = None) -> Base:
    """Load the base model directory with its metrics (default: the shipped one,
    :func:`minituner.paths.base_dir`).

    Raises:
        ValueError: missing or corrupt files (the message says how to rebuild them).
    """
    import hashlib

    from minituner.io import MAX_TENSOR_BYTES, read_bytes, read_json

    d = Path(directory) if directory is not None else base_dir()
    model, tok, cfg = load_model(d)
    metrics = read_json(d / "metrics.json")
    try:
        corpus_cfg = CorpusConfig(**cfg.get("pretrain", {}).get("corpus", {}))
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{d}/config.json has an unreadable corpus config ({e})") from None
    h = hashlib.sha256(read_bytes(d / "model.safetensors", MAX_TENSOR_BYTES)).hexdigest()[:12]
    if metrics.get("corpus_version") != build_corpus(corpus_cfg).version:
        raise ValueError(
            f"{d}: the base model was trained on corpus {metrics.get('corpus_version')}, but "
            f"this code generates {build_corpus(corpus_cfg).version}; re-run "
            "`python -m minituner pretrain`"
        )
    return Base(model, tok, cfg, metrics, h, corpus_cfg)


@dataclass
class FinetuneResult:
    config: FinetuneConfig
    status: str  # completed | diverged | stopped
    message: str
    model: torch.nn.Module | None
    metrics: dict
    base: Base

    def ok(self) -> bool:
        return self.status == "completed"


def prepare_model(base: Base, cfg: FinetuneConfig, device: torch.device) -> torch.nn.Module:
    """A fresh copy of the base model set up for ``cfg.method`` (trainable parts only)."""
    from minituner.nf4.linear import quantize_model_nf4

    model = copy.deepcopy(base.model).to(device)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "qlora":
        quantize_model_nf4(model, block_size=cfg.nf4_block_size, double_quant=cfg.nf4_double_quant)
    add_lora(
        model, list(cfg.targets), r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, rslora=cfg.rslora
    )
    return model


def full_delta(result: FinetuneResult) -> dict[str, torch.Tensor]:
    """Every parameter's change after full fine-tuning (embeddings and norms too), so
    the fine-tuned model can be rebuilt from the base model."""
    base_sd = result.base.model.state_dict()
    return {
        name: (p.detach().cpu() - base_sd[name]).float()
        for name, p in result.model.named_parameters()
    }


def weight_delta(result: FinetuneResult) -> dict[str, torch.Tensor]:
    """ΔW of every adapted Linear (float32, CPU): W_ft - W_base for full fine-tuning,
    scaling·B·A for LoRA/QLoRA."""
    model = result.model
    if model is None:
        raise ValueError("the run did not complete: it has no weight update")
    if result.config.method == "full":
        base_sd = result.base.model.state_dict()
        out = {}
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("blocks."):
                out[name] = (mod.weight.detach().cpu() - base_sd[name + ".weight"]).float()
        return out
    return {
        p: layer.delta_weight().detach().float().cpu() for p, layer in lora_layers(model).items()
    }
