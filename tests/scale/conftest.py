"""Fixtures of the 7B-path tests: the two settings that are off until a GPU run times them."""

from __future__ import annotations

import pytest

from minituner.lora.qlora_group import LoRAInK
from minituner.scale.llama_layers import LlamaDecoderLayer


@pytest.fixture(params=[False, True], ids=["default", "lora_in_k+norm_residual"])
def new_paths(request, monkeypatch):
    """The LoRA products inside the base GEMMs' K and the norms' residual gradients, both
    at their default (off) or both on."""
    monkeypatch.setattr(LoRAInK, "on", request.param)
    monkeypatch.setattr(LlamaDecoderLayer, "norm_residual", request.param)
    return request.param
