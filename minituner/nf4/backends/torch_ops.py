"""Blockwise 4-bit dequantization in plain PyTorch ops: the path for every device and dtype.

:func:`minituner.nf4.codec.dequantize_4bit` uses it wherever neither fused backend runs (the
Triton kernel of :mod:`minituner.nf4.backends.triton_dequant`, the C loop of :mod:`minituner.nf4.backends.cpu_c`),
and those two are tested bit-equal to it. It never unpacks nibbles one by one: on the CPU
each pair of packed bytes is looked up in a 65536-entry table of four float32 values; on a
GPU each byte in a 256-entry table of two values held as one 8-byte integer, the gather
GPUs do fastest. Then value = codebook[code] * absmax in float32, rounded once to the
output dtype.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from minituner.nf4.backends.triton_dequant import code_table

if TYPE_CHECKING:  # nf4 imports this module: the container is only named here
    from minituner.nf4.codec import NF4Tensor


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


def dequantize_packed(q: NF4Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize ``q`` into a flat ``(q.numel,)`` tensor of ``dtype`` on its device.

    ``dtype`` is one of :data:`minituner.nf4.codec.DEQUANT_DTYPES` (checked by the caller).
    """
    nb, bs = q.n_blocks, q.block_size
    absmax = q.absmax_float()  # (nb,)
    codes = q.codes
    need = 2 * -(-nb * bs // 4)  # bytes, even, covering every (padded) block
    if codes.numel() < need:
        codes = torch.cat([codes, codes.new_zeros(need - codes.numel())])
    elif codes.storage_offset() % 2:
        codes = codes.clone()
    if codes.device.type == "cpu":
        table = _pair_table(q.codebook, codes.device)  # (65536, 4)
        out = _dequantize_cpu(codes.view(torch.uint16), absmax, table, bs, dtype)
    else:  # GPUs gather 8-byte elements fastest: one byte -> its two float32 values
        table = _byte_table(q.codebook, codes.device)  # (256,) int64
        vals = table.index_select(0, codes.int()).view(torch.float32)[: nb * bs].view(nb, bs)
        if dtype == torch.float32:
            out = vals.mul_(absmax[:, None])
        else:
            out = torch.mul(vals, absmax[:, None], out=torch.empty_like(vals, dtype=dtype))
    return out.view(-1)[: q.numel]


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
