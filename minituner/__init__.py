"""minituner: LoRA and QLoRA from scratch in PyTorch, on a small character-level GPT.

The names below are the ones a user calls; everything else is reachable through its
module (``minituner.analysis``, ``minituner.memory``, ...) but may change.

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

from .config import FinetuneConfig
from .lora import LoRALinear, add_lora, load_adapter, merge_lora, save_adapter
from .model import GPTConfig, MiniGPT
from .nf4 import dequantize_nf4, quantize_nf4
from .nf4_linear import NF4Linear
from .runs import RunStore
from .train import finetune, load_base

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
