"""GPT-2's Conv1D layers as Linear layers, so that LoRA (and PEFT adapters) fit them.

transformers' ``Conv1D`` (GPT-2 and its kin) is a Linear that stores its weight
transposed, (in_features, out_features), and computes ``x @ W + b``.
:class:`~minituner.lora.layer.LoRALinear` wraps ``nn.Linear``, so :func:`conv1d_to_linear`
swaps each Conv1D for a :class:`TransposedLinear`: an ``nn.Linear`` holding Wᵀ (the same
numbers, moved, not rounded) that remembers where it came from (``fan_in_fan_out = True``,
PEFT's name for the transposed layout). A LoRA adapter has the same A (r, in) and B (out, r)
either way, so an adapter trained on the converted model loads into the original GPT-2
with PEFT (the saved config says ``fan_in_fan_out``), and a PEFT adapter of the original
loads into the converted model. The converted model's state dict holds Wᵀ under the
same keys, so save the original (unconverted) model as the base, not this one.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class TransposedLinear(nn.Linear):
    """An ``nn.Linear`` converted from a GPT-2 ``Conv1D`` (``fan_in_fan_out`` is True)."""

    fan_in_fan_out = True


def _is_conv1d(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(w, torch.Tensor)
        and getattr(module, "nf", None) == w.shape[-1]
    )


def _swap(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


@torch.no_grad()
def conv1d_to_linear(model: nn.Module) -> list[str]:
    """Replace every transformers ``Conv1D`` of ``model`` by an equal
    :class:`TransposedLinear`, in place; return the paths replaced (none: an empty list)."""
    done = []
    for path, module in list(model.named_modules()):
        if not _is_conv1d(module):
            continue
        w = module.weight  # (in, out)
        lin = TransposedLinear(
            w.shape[0], w.shape[1], bias=module.bias is not None, device=w.device, dtype=w.dtype
        )
        lin.weight.copy_(w.t())
        if module.bias is not None:
            lin.bias.copy_(module.bias)
        lin.requires_grad_(w.requires_grad)
        _swap(model, path, lin)
        done.append(path)
    return done
