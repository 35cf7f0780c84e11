"""MiniGPT and its adapters for transformers and PEFT (the optional ``hf`` extra).

``pip install minituner[hf]`` adds transformers and PEFT; this package is the only one that
imports transformers, and nothing else in minituner imports it. Importing it registers
MiniGPT with ``AutoConfig`` / ``AutoModelForCausalLM`` (:func:`modeling.register`).

* :mod:`~minituner.hf.modeling`: :class:`MiniGPTConfig` + :class:`MiniGPTForCausalLM`
  (MiniGPT's modules under MiniGPT's names, transformers' loading and ``generate``).
* :mod:`~minituner.hf.tokenizer`: :class:`MiniGPTTokenizer` (the character tokenizer, for
  ``AutoTokenizer``).
* :mod:`~minituner.hf.convert`: :func:`conv1d_to_linear` (GPT-2's Conv1D layers as Linears,
  so LoRA and PEFT adapters fit them).
* :mod:`~minituner.hf.export`: :func:`export_base` (config.json + model.safetensors +
  tokenizer.json) and :func:`export_run` (a stored run as base/ + adapter/ that plain
  transformers + PEFT load).
"""

from __future__ import annotations

from minituner.hf.convert import TransposedLinear, conv1d_to_linear
from minituner.hf.modeling import MiniGPTConfig, MiniGPTForCausalLM, register
from minituner.hf.tokenizer import MiniGPTTokenizer

register()

__all__ = [
    "MiniGPTConfig",
    "MiniGPTForCausalLM",
    "MiniGPTTokenizer",
    "TransposedLinear",
    "conv1d_to_linear",
    "register",
]
