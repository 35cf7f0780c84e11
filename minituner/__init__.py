"""minituner: LoRA and QLoRA from scratch in PyTorch, on a small character-level GPT.

The names below are the ones a user calls; everything else is reachable through its
module (``minituner.analysis.spectrum``, ``minituner.memory.predict``, ...) but may change.

LoRA and NF4 work on any ``nn.Module`` (see "Using it on your own model" in the README)::

    from minituner import NF4Linear, add_lora, merge_lora

    add_lora(model, targets=["q", "v"], r=8, alpha=16)  # Linear attributes named q and v
    ...  # train: only the LoRA matrices require grad
    merge_lora(model)  # plain nn.Linear layers holding W + (alpha/r)·B·A
    layer4 = NF4Linear.from_linear(linear)  # the weight in 4 bits (NF4)

The MiniGPT experiment: :func:`load_base` the shipped base model, :func:`finetune` it
with a :class:`FinetuneConfig`, keep the result in a :class:`RunStore`. Its data (the
base model and the shipped runs) is found in ``$MINITUNER_DATA`` or, in a checkout, in
``precomputed/`` (:func:`minituner.paths.data_dir`); the command line is
``python -m minituner`` (or ``minituner``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minituner.finetune.config import FinetuneConfig
    from minituner.finetune.loop import finetune
    from minituner.finetune.result import load_base
    from minituner.lora.adapter_io import load_adapter, save_adapter
    from minituner.lora.inject import add_lora, merge_lora
    from minituner.lora.layer import LoRALinear
    from minituner.minigpt.model import GPTConfig, MiniGPT
    from minituner.nf4.codec import dequantize_nf4, quantize_nf4
    from minituner.nf4.linear import NF4Linear
    from minituner.store.runs import RunStore

# Imported on first use (PEP 562), so ``import minituner`` does not import torch: the
# command line starts fast and a Ctrl-C while torch loads lands in its main().
_HOME = {
    "FinetuneConfig": "finetune.config",
    "LoRALinear": "lora.layer", "add_lora": "lora.inject", "merge_lora": "lora.inject",
    "load_adapter": "lora.adapter_io", "save_adapter": "lora.adapter_io",
    "GPTConfig": "minigpt.model", "MiniGPT": "minigpt.model",
    "dequantize_nf4": "nf4.codec", "quantize_nf4": "nf4.codec",
    "NF4Linear": "nf4.linear",
    "RunStore": "store.runs",
    "finetune": "finetune.loop", "load_base": "finetune.result",
}  # fmt: skip


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'minituner' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "FinetuneConfig",
    "GPTConfig",
    "LoRALinear",
    "MiniGPT",
    "NF4Linear",
    "RunStore",
    "add_lora",
    "dequantize_nf4",
    "finetune",
    "load_adapter",
    "load_base",
    "merge_lora",
    "quantize_nf4",
    "save_adapter",
]
