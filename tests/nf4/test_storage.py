"""What NF4 storage costs (minituner.nf4.storage): bits per parameter and exact bytes."""

from __future__ import annotations

import math

import pytest

from minituner.nf4.storage import (
    bits_per_param,
    nf4_model_bytes,
)

# ---------------------------------------------------------------------------- bit accounting


def test_bits_per_param():
    assert bits_per_param() == 4.5
    assert bits_per_param(double_quant=True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert round(bits_per_param(double_quant=True), 3) == 4.127
    assert bits_per_param(128) == 4.25


def test_model_bytes_for_a_list_of_shapes():
    shapes = [(4096, 4096), (11008, 4096), (4096,)]
    n = sum(math.prod(s) for s in shapes)
    plain = nf4_model_bytes(shapes, double_quant=False)
    assert plain["n_params"] == n and plain["fp32"] == 4 * n and plain["bf16"] == 2 * n
    assert plain["nf4_bits_per_param"] == pytest.approx(4.5, abs=1e-6)
    dq = nf4_model_bytes(shapes, double_quant=True)
    assert dq["nf4_bits_per_param"] == pytest.approx(bits_per_param(double_quant=True), abs=1e-4)
    assert nf4_model_bytes([])["nf4"] == 0
