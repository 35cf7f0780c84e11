"""Kernels behind the NF4 codec, one module per backend, and the few helpers they share.

One op, a kernel per backend (the shape of bitsandbytes' ``_ops.py`` + ``backends/*/ops.py``):
:mod:`minituner.nf4.codec` is the only module that imports a backend, and it alone decides
which one runs. A backend takes plain tensors and settings, never an
:class:`~minituner.nf4.format.NF4Tensor`, and never imports the codec or another backend.
The codec hands over the fields of a checked NF4Tensor, so a backend trusts their sizes.

The arguments every ``dequantize_packed`` takes:

    codes          uint8 (ceil(numel / 2),), two codes per byte, first in the high nibble
    absmax         float32 (n_blocks,); or uint8 (n_blocks,) codes under double quantization
                   (the PyTorch backend takes the float32 values, already decoded)
    codebook       the 16 (int4: 15) values of the 4-bit format, a tuple of floats
    numel, block_size, dtype   the element count, the absmax block size (even), the output
    dq_block_size  absmax values per double-quantization scale
    dq_grids, dq_map, dq_scale, dq_offset   the double-quantization state, or all None:
                   absmax = dq_grids[dq_map][code] * dq_scale[block // dq_block_size]
                   + dq_offset, float32 (n_maps, 256), uint8 (), float32 (n2,), float32 ()

and every ``quantize_packed`` a flat float tensor, the block size, the midpoints of the
sorted codebook, the map sorted index -> stored code (None: the identity) and the floor
under absmax. The fused backends say with ``available`` whether they run for an input.

Shared here: :data:`triton` / :data:`tl` (the optional Triton import, None without it),
:func:`fused_wanted` (the ``MINITUNER_NF4_KERNEL`` switch), :func:`triton_runs_on` and
:func:`code_table` (a codebook as a float32 lookup table).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU builds and CI have none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def fused_wanted() -> bool:
    """False when ``MINITUNER_NF4_KERNEL=torch`` asks for the PyTorch path everywhere."""
    return os.environ.get("MINITUNER_NF4_KERNEL", "auto").lower() != "torch"


def triton_runs_on(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can take ``t``'s device: CUDA, or any device under the
    Triton interpreter (``TRITON_INTERPRET=1``)."""
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=32)
def code_table(codebook: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The codebook as float32 (16,) on ``device``, zero-padded (int4 has 15 values)."""
    t = torch.zeros(16, dtype=torch.float32)
    t[: len(codebook)] = torch.tensor(codebook, dtype=torch.float32)
    return t.to(device)
