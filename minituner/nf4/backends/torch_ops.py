"""Blockwise 4-bit quantize, double quantization and dequantize in plain PyTorch ops.

The backend for every device and dtype: :mod:`minituner.nf4.codec` runs it wherever neither
fused backend does (the Triton kernels of :mod:`~minituner.nf4.backends.triton_quant` and
:mod:`~minituner.nf4.backends.triton_dequant`, the C loop of
:mod:`~minituner.nf4.backends.cpu_c`), and those are tested bit-equal to it.

Quantization matches the arithmetic of bitsandbytes' CPU path (multiply by 1/absmax,
compare with the midpoints between codebook values), so the codes agree bit for bit.
Dequantization never unpacks nibbles one by one: on the CPU each pair of packed bytes is
looked up in a 65536-entry table of four float32 values; on a GPU each byte in a 256-entry
table of two values held as one 8-byte integer, the gather GPUs do fastest. Then
value = codebook[code] * absmax in float32, rounded once to the output dtype.
"""

from __future__ import annotations

import sys
from functools import lru_cache

import torch
import torch.nn.functional as F

from minituner.nf4.backends import code_table

# ---------------------------------------------------------------------------- quantize


def quantize_packed(
    flat: torch.Tensor,
    block_size: int,
    mids: torch.Tensor,
    order: torch.Tensor | None,
    floor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a flat tensor blockwise: (codes, absmax), as
    :func:`minituner.nf4.backends.triton_quant.quantize_packed` (which documents the
    arguments), on any device and for any float dtype."""
    flat = flat.float()
    n = flat.numel()
    n_blocks = -(-n // block_size)
    pad = n_blocks * block_size - n
    if pad:  # zeros never change a block's absmax, and their codes are dropped below
        flat = F.pad(flat, (0, pad))
    blocks = flat.view(n_blocks, block_size)
    lo, hi = torch.aminmax(blocks, dim=1)
    # (n_blocks,); NaN and inf propagate into it; + 0.0 makes an all-zero block's absmax +0.0
    # (max(+0.0, -0.0) is either, by vector or scalar code), as the GPU kernel stores it
    absmax = torch.maximum(hi, -lo) + 0.0
    safe = absmax.clamp(min=floor)
    scaled = blocks * (1.0 / safe)[:, None]  # (n_blocks, block_size), in [-1, 1]
    if pad:  # bitsandbytes divides in the ragged last block; do the same, bit for bit
        scaled[-1] = blocks[-1] / safe[-1]
    idx = torch.bucketize(scaled, mids, out_int32=True).to(torch.uint8).view(-1)
    if order is not None:
        idx = order[idx.long()]
    n_bytes = -(-n // 2)
    idx = idx[: 2 * n_bytes]
    codes = (idx[0::2] << 4) | idx[1::2]  # first element in the high nibble
    return codes, absmax


def quantize_absmax(
    absmax: torch.Tensor, grids: torch.Tensor, mids: torch.Tensor, dq_block: int, floor: float
) -> dict[str, torch.Tensor]:
    """Double quantization: the NF4Tensor fields absmax (uint8 codes), absmax_scale (one
    float32 per ``dq_block``), absmax_offset (the float32 mean) and absmax_map (the index
    of the grid in ``grids`` (n_grids, 256) that reconstructs the values with the smallest
    squared error; ``mids`` (n_grids, 255) are their midpoints)."""
    offset = absmax.double().mean().float()  # float64 sum: the same on every device
    centered = absmax - offset
    nb = centered.numel()
    n2 = -(-nb // dq_block)
    blocks = F.pad(centered, (0, n2 * dq_block - nb)).view(n2, dq_block)
    scale = blocks.abs().amax(dim=1)  # (n2,)
    scaled = blocks * (1.0 / scale.clamp(min=floor))[:, None]  # in [-1, 1]
    best = None
    for i in range(grids.shape[0]):
        codes = torch.bucketize(scaled, mids[i], out_int32=True).to(torch.uint8)
        err = (grids[i][codes.long()] * scale[:, None] - blocks).view(-1)[:nb]
        sse = err.double().square().sum().item()
        if best is None or sse < best[0]:
            best = (sse, codes.view(-1)[:nb], i)
    _, codes, i = best
    return {
        "absmax": codes,
        "absmax_scale": scale,
        "absmax_offset": offset,
        "absmax_map": torch.tensor(i, dtype=torch.uint8, device=absmax.device),
    }


# ---------------------------------------------------------------------------- dequantize


@lru_cache(maxsize=32)
def _byte_table(codebook: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(256,) int64: the bit patterns of the two float32 values each packed byte encodes."""
    code = code_table(codebook, torch.device("cpu"))
    b = torch.arange(256)
    return (
        torch.stack([code[b >> 4], code[b & 15]], dim=1)
        .contiguous()
        .view(torch.int64)
        .view(-1)
        .to(device)
    )


@lru_cache(maxsize=32)
def _pair_table(codebook: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(65536, 4) float32: the four values encoded by each pair of packed bytes.

    Indexed by the two bytes read as one native-endian 16-bit integer.
    """
    code = code_table(codebook, torch.device("cpu"))
    v = torch.arange(65536)
    first, second = (v & 0xFF, v >> 8) if sys.byteorder == "little" else (v >> 8, v & 0xFF)
    nibbles = [first >> 4, first & 15, second >> 4, second & 15]
    return torch.stack([code[i] for i in nibbles], dim=1).contiguous().to(device)


def dequantize_packed(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    codebook: tuple[float, ...],
    numel: int,
    block_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Dequantize packed 4-bit codes into a flat ``(numel,)`` tensor of ``dtype`` on their
    device. ``absmax`` is float32 (n_blocks,), double quantization already undone;
    ``dtype`` is one of :data:`minituner.nf4.format.DEQUANT_DTYPES` (checked by the caller).
    """
    nb, bs = -(-numel // block_size), block_size
    need = 2 * -(-nb * bs // 4)  # bytes, even, covering every (padded) block
    if codes.numel() < need:
        codes = torch.cat([codes, codes.new_zeros(need - codes.numel())])
    elif codes.storage_offset() % 2:
        codes = codes.clone()
    if codes.device.type == "cpu":
        table = _pair_table(codebook, codes.device)  # (65536, 4)
        out = _dequantize_cpu(codes.view(torch.uint16), absmax, table, bs, dtype)
    else:  # GPUs gather 8-byte elements fastest: one byte -> its two float32 values
        table = _byte_table(codebook, codes.device)  # (256,) int64
        vals = table.index_select(0, codes.int()).view(torch.float32)[: nb * bs].view(nb, bs)
        if dtype == torch.float32:
            out = vals.mul_(absmax[:, None])
        else:
            out = torch.mul(vals, absmax[:, None], out=torch.empty_like(vals, dtype=dtype))
    return out.view(-1)[:numel]


_CPU_CHUNK = 1 << 22  # elements per chunk of a half-precision CPU dequantize (16 MB scratch)


def _dequantize_cpu(pairs, absmax, table, bs, dtype):
    """Table lookup, then scale by absmax; in chunks when the output is not float32.

    Writing fresh memory costs a page fault per 4 KiB, so a half-precision output is built
    chunk by chunk through a small reused float32 buffer rather than via a full-size
    float32 intermediate. Chunks stay large: each op opens a parallel region, and on a busy
    machine each one can wait a scheduler slice for its threads. (Float32 output gains
    nothing from chunking.)
    """
    nb = absmax.numel()
    step = max(1, _CPU_CHUNK // bs)
    step += step % 2 if bs % 4 else 0  # chunks start on a whole pair of bytes
    if step >= nb or dtype == torch.float32:  # the lookup result can be the output itself
        vals = table.index_select(0, pairs.to(torch.int32)).view(-1)[: nb * bs].view(nb, bs)
        vals.mul_(absmax[:, None])
        return vals if dtype == torch.float32 else vals.to(dtype)
    out = torch.empty(nb, bs, dtype=dtype)
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        idx = pairs[b0 * bs // 4 : -(-b1 * bs // 4)].to(torch.int32)
        vals = table.index_select(0, idx).view(-1)[: (b1 - b0) * bs].view(b1 - b0, bs)
        # a mixed-dtype mul is slow on CPU: multiply in float32, then one converting copy
        out[b0:b1].copy_(vals.mul_(absmax[b0:b1, None]))
    return out
