"""What NF4 storage costs: bits per parameter and exact bytes, per tensor or per model.

The formulas follow the layout of :class:`minituner.nf4.format.NF4Tensor`: 4 bits per element
plus one float32 absmax per block, or, double-quantized, one 8-bit absmax code per block,
a float32 scale per 256 blocks, the float32 mean and one byte naming the 8-bit grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from minituner.nf4.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DOUBLE_QUANT,
    DQ_BLOCK_SIZE,
    NF4Tensor,
    check_block_size,
)


def bits_per_param(
    block_size: int = DEFAULT_BLOCK_SIZE, double_quant: bool = DEFAULT_DOUBLE_QUANT
) -> float:
    """Storage bits per parameter, ignoring padding and the few bytes fixed per tensor.

    4 + 32/block_size; with double quantization 4 + 8/block_size + 32/(block_size*256).

    Raises:
        ValueError: block_size is not a positive even integer.
    """
    check_block_size(block_size)
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * DQ_BLOCK_SIZE)


def nf4_numel_bytes(
    numel: int, block_size: int = DEFAULT_BLOCK_SIZE, double_quant: bool = DEFAULT_DOUBLE_QUANT
) -> int:
    """Exact bytes :func:`~minituner.nf4.codec.quantize_nf4` stores for ``numel`` elements.

    Raises:
        ValueError: block_size is not a positive even integer.
    """
    check_block_size(block_size)
    if numel <= 0:
        return 0
    n_blocks = -(-numel // block_size)
    codes = -(-numel // 2)
    if not double_quant:
        return codes + 4 * n_blocks
    # codes, 8-bit absmax codes, a float32 scale per 256 blocks, the mean, the map index
    return codes + n_blocks + 4 * -(-n_blocks // DQ_BLOCK_SIZE) + 4 + 1


def nf4_storage_bytes(q: NF4Tensor) -> int:
    """Bytes actually held by a quantized tensor."""
    return sum(t.numel() * t.element_size() for t in q.tensors().values())


def nf4_model_bytes(
    shapes: Iterable[Sequence[int]],
    block_size: int = DEFAULT_BLOCK_SIZE,
    double_quant: bool = DEFAULT_DOUBLE_QUANT,
) -> dict:
    """Bytes of a set of weights stored as fp32, bf16 and NF4 (exact, per tensor).

    Returns {"n_params", "fp32", "bf16", "nf4", "nf4_bits_per_param"}.

    Raises:
        ValueError: block_size is not a positive even integer.
    """
    numels = [math.prod(s) for s in shapes]
    n = sum(numels)
    nf4 = sum(nf4_numel_bytes(k, block_size, double_quant) for k in numels)
    return {
        "n_params": n,
        "fp32": 4 * n,
        "bf16": 2 * n,
        "nf4": nf4,
        "nf4_bits_per_param": 8 * nf4 / n if n else 0.0,
    }
