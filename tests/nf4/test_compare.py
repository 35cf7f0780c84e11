"""NF4 beside int4 and FP4 (minituner.nf4.compare): per-element errors and the report."""

from __future__ import annotations

import pytest
import torch
from nf4_util import randn

from minituner.nf4.codec import dequantize_nf4, quantize_nf4
from minituner.nf4.compare import (
    quantization_error_report,
    quantization_errors,
)

# ---------------------------------------------------------------------------- error analysis


def test_error_report_rows_and_ordering_on_gaussian_weights():
    weights = {"q": randn(128, 128, seed=1) * 0.02, "fc": randn(64, 256, seed=2) * 0.02}
    rows = quantization_error_report(weights)
    assert [(r["layer"], r["method"]) for r in rows] == [
        (n, m) for n in ("q", "fc") for m in ("nf4", "int4", "fp4")
    ]
    for r in rows:
        assert 0 < r["mean_abs"] <= r["rmse"] <= r["max_abs"]
        assert r["numel"] == weights[r["layer"]].numel()
    for name in weights:
        by = {r["method"]: r["rmse"] for r in rows if r["layer"] == name}
        assert by["nf4"] < by["int4"] and by["nf4"] < by["fp4"]  # NF4 fits normal data


def test_quantization_errors_are_per_element():
    w = randn(33, 17)
    for method in ("nf4", "nf4_dq", "int4", "fp4"):
        err = quantization_errors(w, method)
        assert err.shape == (w.numel(),) and err.dtype == torch.float32
    torch.testing.assert_close(
        quantization_errors(w, "nf4"), (dequantize_nf4(quantize_nf4(w)) - w).reshape(-1)
    )
    with pytest.raises(ValueError, match="unknown method"):
        quantization_errors(w, "nf3")
