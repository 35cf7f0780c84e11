"""NF4 beside the other 4-bit formats of the same block layout: uniform int4 and FP4.

All three scale each block by its absmax and store 4-bit codes (:func:`minituner.nf4.codec.
quantize_4bit`); only the 16 values differ. Uniform symmetric int4 spaces its levels
evenly (k/7, k = -7..7); bitsandbytes' FP4 (e2m1) bunches them near zero on a
power-of-two grid (codes in its bit-pattern order). :func:`quantization_errors` gives the
per-element error of one format (the NF4 page's histograms) and
:func:`quantization_error_report` summarizes every (layer, format) pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from minituner.nf4.codec import dequantize_4bit, quantize_4bit, quantize_nf4
from minituner.nf4.format import DEFAULT_BLOCK_SIZE, NF4Tensor

QUANT_METHODS: tuple[str, ...] = ("nf4", "int4", "fp4")


def quantize_int4_absmax(w: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> NF4Tensor:
    """Uniform symmetric 4-bit: each block scaled by its absmax, rounded to k/7.

    Raises:
        ValueError: as :func:`minituner.nf4.codec.quantize_4bit`.
    """
    return quantize_4bit(w, "int4", block_size)


def quantize_fp4(w: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> NF4Tensor:
    """bitsandbytes' FP4 (e2m1) value set with blockwise absmax; codes in its bit order.

    Raises:
        ValueError: as :func:`minituner.nf4.codec.quantize_4bit`.
    """
    return quantize_4bit(w, "fp4", block_size)


_QUANTIZERS: dict[str, Callable[[torch.Tensor, int], NF4Tensor]] = {
    "nf4": lambda w, bs: quantize_nf4(w, bs, double_quant=False),
    "nf4_dq": lambda w, bs: quantize_nf4(w, bs, double_quant=True),
    "int4": quantize_int4_absmax,
    "fp4": quantize_fp4,
}


def quantization_errors(
    w: torch.Tensor, method: str = "nf4", block_size: int = DEFAULT_BLOCK_SIZE
) -> torch.Tensor:
    """Per-element error dequant(quant(w)) - w, float32, flattened (for histograms).

    ``method``: "nf4", "nf4_dq" (with double quantization), "int4" or "fp4".

    Raises:
        ValueError: an unknown method, or as :func:`minituner.nf4.codec.quantize_4bit`.
    """
    if method not in _QUANTIZERS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(_QUANTIZERS)}")
    q = _QUANTIZERS[method](w, block_size)
    return (dequantize_4bit(q) - w.detach().float()).reshape(-1)


def quantization_error_report(
    weights: Mapping[str, torch.Tensor],
    block_size: int = DEFAULT_BLOCK_SIZE,
    methods: Sequence[str] = QUANT_METHODS,
) -> list[dict]:
    """One row per (layer, method): rmse, max_abs, mean_abs of the element errors.

    Rows also carry numel, the weight's std and rel_rmse = rmse / std.

    Raises:
        ValueError: as :func:`quantization_errors`.
    """
    rows = []
    for name, w in weights.items():
        std = w.detach().float().std().item() if w.numel() > 1 else 0.0
        for method in methods:
            err = quantization_errors(w, method, block_size).double()
            rmse = err.square().mean().sqrt().item()
            rows.append(
                {
                    "layer": name,
                    "method": method,
                    "rmse": rmse,
                    "max_abs": err.abs().max().item(),
                    "mean_abs": err.abs().mean().item(),
                    "numel": w.numel(),
                    "weight_std": std,
                    "rel_rmse": rmse / std if std > 0 else float("nan"),
                }
            )
    return rows
