"""Helpers shared by the tests of minituner.lora: tiny models, inputs, PEFT copies."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from minituner.lora.inject import lora_layers
from minituner.minigpt.model import MiniGPT, preset_config

VOCAB = 40
ALL_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"]


def tiny(seed: int = 0, **overrides) -> MiniGPT:
    torch.manual_seed(seed)
    return MiniGPT(preset_config("tiny", vocab_size=VOCAB, **overrides)).eval()


def tokens(seed: int = 1, batch: int = 3, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def randomize_lora(model: nn.Module, seed: int = 2, scale: float = 0.1) -> None:
    """Give every adapter a nonzero B (a fresh one is zero and would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * scale)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)


class Toy(nn.Module):
    """A model that is not MiniGPT, with PEFT-style names."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 24)
        self.v_proj = nn.Linear(24, 16, bias=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.v_proj(F.gelu(self.q_proj(x)))))


def peft_copy(model: nn.Module, targets: list[str], r: int, alpha: float, rslora: bool):
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, use_rslora=rslora
    )
    return inject_adapter_in_model(cfg, copy.deepcopy(model))


def copy_adapters_into_peft(ours: nn.Module, theirs: nn.Module) -> None:
    modules = dict(theirs.named_modules())
    with torch.no_grad():
        for path, layer in lora_layers(ours).items():
            modules[path].lora_A["default"].weight.copy_(layer.lora_A)
            modules[path].lora_B["default"].weight.copy_(layer.lora_B)


def grads_of(model: nn.Module, out: torch.Tensor, upstream: torch.Tensor, x: torch.Tensor):
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    names = sorted(params)
    got = torch.autograd.grad((out * upstream).sum(), [params[n] for n in names] + [x])
    return dict(zip(names, got[:-1], strict=True)), got[-1]
