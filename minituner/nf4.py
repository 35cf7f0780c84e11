"""NF4 (4-bit NormalFloat) quantization from scratch, as QLoRA stores its frozen base.

The pieces, in the order the QLoRA paper introduces them:

* **Codebook.** 16 values in [-1, 1] placed at quantiles of a standard normal, built
  asymmetrically (8 positive, 7 negative, and an exact 0) so that zero is representable.
  :func:`nf4_codebook_from_normal` computes it; :data:`NF4_CODEBOOK` is the published
  table (the one bitsandbytes hard-codes). The tests check the two agree.
* **Blockwise absmax.** The flattened weight is cut into blocks of ``block_size``
  (default 64); each block is divided by its largest magnitude and every element is
  replaced by the index of the nearest codebook value (a tie goes to the lower value).
* **Packing.** Two 4-bit codes per byte, the FIRST element in the HIGH nibble: the byte
  layout of ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")``. Our codes
  and absmax equal bitsandbytes' on the same input (``tests/test_nf4.py``).
* **Double quantization.** The per-block float32 absmax values cost 32/64 = 0.5 bit per
  parameter. Subtracting their mean and storing them as 8-bit codes in blocks of 256
  (one float32 scale per 256 blocks) cuts that to 8/64 + 32/(64*256) = 0.127 bit.
  bitsandbytes rounds to its 8-bit "dynamic" map (log-spaced: fine near 0, coarse near
  the block maximum). For near-normal weights the centred absmax values are spread
  evenly, and a uniform grid (symmetric int8, levels k/127) has about 30% less error; for
  heavy-tailed weights the dynamic map wins. So each tensor is stored with whichever of
  the two grids reconstructs its absmax values with the smaller squared error (one byte,
  ``absmax_map``, records the choice), always by exact nearest rounding: the absmax error
  is never above that of bitsandbytes' nested quantization (checked in the tests).

For the app's comparison there are two other 4-bit formats with the same block layout:
uniform symmetric int4 (levels k/7, k = -7..7) and the FP4 (e2m1) value set of
bitsandbytes (codes in its bit-pattern order). :func:`quantization_error_report` and
:func:`quantization_errors` measure them side by side.

Everything is vectorized torch (no Python loop over blocks), so it runs on CPU or CUDA.
Dequantization has fused paths where they can run: a C loop on the CPU
(:mod:`minituner.nf4_cpu`, built with the system's compiler on first use) and a Triton
kernel on CUDA (:mod:`minituner.nf4_kernels`), both bit-equal to the PyTorch path here.
That path never unpacks nibbles one by one: on CPU each pair of packed bytes is looked up
in a 65536-entry table of four values; on a GPU each byte in a 256-entry table of two
values held as one 8-byte integer, the gather GPUs do fastest. Quantization matches the
arithmetic of bitsandbytes' CPU path (multiply by 1/absmax, compare with the midpoints
between codebook values) so the codes agree bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from minituner import nf4_cpu, nf4_kernels

# The published NF4 table (the QLoRA paper's appendix; bitsandbytes' get_4bit_type("nf4")).
NF4_CODEBOOK: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# The outermost quantile: halfway between 1 - 1/(2*15) and 1 - 1/(2*16), the centres of the
# last of 15 and of 16 equal-probability bins (0.96770833...; bitsandbytes rounds it).
NF4_OFFSET = 0.9677083

# bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit) in its bit-pattern order,
# normalized by the largest magnitude (12).
FP4_CODEBOOK: tuple[float, ...] = tuple(
    v / 12.0 for v in (0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3)
)
# Uniform symmetric 4-bit absmax: 15 levels k/7; code k + 7 (code 15 is unused).
INT4_CODEBOOK: tuple[float, ...] = tuple(k / 7.0 for k in range(-7, 8))

_CODEBOOKS = {"nf4": NF4_CODEBOOK, "int4": INT4_CODEBOOK, "fp4": FP4_CODEBOOK}
QUANT_METHODS: tuple[str, ...] = ("nf4", "int4", "fp4")
DQ_BLOCK_SIZE = 256  # absmax values per float32 scale under double quantization
_DEQUANT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TINY = 1e-38  # the floor bitsandbytes puts under absmax (an all-zero block)


def nf4_codebook_from_normal(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values computed from standard-normal quantiles, float32, sorted.

    Positive half: the normal quantiles at 8 probabilities evenly spaced from ``offset``
    towards 0.5 (0.5 itself excluded); negative half: the same with 7 probabilities,
    mirrored; plus an exact 0. Everything is divided by the largest value, so the
    ends are exactly -1 and 1.
    """
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be in (0.5, 1), got {offset}")
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (values / values.max()).to(torch.float32)


# ---------------------------------------------------------------------------- containers


@dataclass
class NF4Tensor:
    """A blockwise 4-bit quantized tensor (NF4 unless ``quant_type`` says otherwise).

    codes: uint8 (ceil(numel / 2),), two codes per byte, first element in the high nibble.
    absmax: float32 (n_blocks,); or, double-quantized, uint8 (n_blocks,) codes k with
        absmax ~= DQ_MAPS[absmax_map][k] * absmax_scale[block // 256] + absmax_offset.
    absmax_scale: float32 (ceil(n_blocks / 256),) when double-quantized, else None.
    absmax_offset: float32 0-d tensor (the mean absmax) when double-quantized, else None.
    absmax_map: uint8 0-d tensor, the index in DQ_MAPS of the 8-bit grid used, else None.
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    block_size: int
    numel: int
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None
    absmax_map: torch.Tensor | None = None
    quant_type: str = "nf4"

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.block_size)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: torch.device | str) -> NF4Tensor:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            codes=move(self.codes),
            absmax=move(self.absmax),
            absmax_scale=move(self.absmax_scale),
            absmax_offset=move(self.absmax_offset),
            absmax_map=move(self.absmax_map),
        )

    def absmax_float(self) -> torch.Tensor:
        """Per-block scales as float32 (n_blocks,), undoing double quantization."""
        if not self.double_quant:
            return self.absmax.float()
        return _dequantize_absmax(
            self.absmax, self.absmax_scale, self.absmax_offset, self.absmax_map
        )


# ---------------------------------------------------------------------------- validation


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise ValueError(f"block_size must be a positive even integer, got {block_size!r}")
    if block_size <= 0 or block_size % 2:
        raise ValueError(f"block_size must be a positive even integer, got {block_size}")


def _check_weight(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise ValueError(f"can only quantize a floating-point tensor, got dtype {w.dtype}")
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _DEQUANT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _DEQUANT_DTYPES)
        raise ValueError(f"cannot dequantize to {dtype}; choose one of: {names}")


# ---------------------------------------------------------------------------- tables


@lru_cache(maxsize=32)
def _quantize_tables(quant_type: str, device: torch.device):
    """Sorted-codebook midpoints (15,) and the map sorted index -> stored code (or None)."""
    code = torch.tensor(_CODEBOOKS[quant_type], dtype=torch.float32)
    order = torch.sort(code, stable=True).indices
    mids = (code[order[:-1]] + code[order[1:]]) / 2
    identity = torch.equal(order, torch.arange(len(code)))
    return mids.to(device), None if identity else order.to(torch.uint8).to(device)


def dynamic_map_8bit() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" map (256 sorted float32 values in [-1, 1]).

    Each of 7 decades 1e-6 .. 1 holds 2**i evenly spaced values (i = 0..6), mirrored for
    the negative side, plus 0 and 1: log-spaced resolution, like a float's exponent.
    """
    values = [torch.tensor([0.0, 1.0])]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        values += [mids, -mids]
    return torch.cat(values).sort().values


def int8_map() -> torch.Tensor:
    """Symmetric int8 absmax as a 256-entry grid: k/127 for k = -128..127 (-128 unused)."""
    return torch.arange(-128, 128, dtype=torch.float32) / 127


DQ_MAPS: tuple[str, ...] = ("int8", "dynamic")  # the 8-bit grids double quantization picks from


@lru_cache(maxsize=32)
def _dq_tables(device: torch.device):
    """The DQ_MAPS grids (len(DQ_MAPS), 256) and their midpoints (len(DQ_MAPS), 255)."""
    grids = torch.stack([int8_map() if name == "int8" else dynamic_map_8bit() for name in DQ_MAPS])
    return grids.to(device), ((grids[:, :-1] + grids[:, 1:]) / 2).to(device)


@lru_cache(maxsize=32)
def _byte_table(quant_type: str, device: torch.device) -> torch.Tensor:
    """(256,) int64: the bit patterns of the two float32 values each packed byte encodes."""
    code = nf4_kernels.code_table(_CODEBOOKS[quant_type], torch.device("cpu"))
    b = torch.arange(256)
    return (
        torch.stack([code[b >> 4], code[b & 15]], dim=1)
        .contiguous()
        .view(torch.int64)
        .view(-1)
        .to(device)
    )


@lru_cache(maxsize=32)
def _pair_table(quant_type: str, device: torch.device) -> torch.Tensor:
    """(65536, 4) float32: the four values encoded by each pair of packed bytes.

    Indexed by the two bytes read as one native-endian 16-bit integer.
    """
    code = nf4_kernels.code_table(_CODEBOOKS[quant_type], torch.device("cpu"))
    v = torch.arange(65536)
    first, second = (v & 0xFF, v >> 8) if sys.byteorder == "little" else (v >> 8, v & 0xFF)
    nibbles = [first >> 4, first & 15, second >> 4, second & 15]
    return torch.stack([code[i] for i in nibbles], dim=1).contiguous().to(device)


# ---------------------------------------------------------------------------- quantize


def _quantize_blockwise(w: torch.Tensor, quant_type: str, block_size: int) -> NF4Tensor:
    _check_block_size(block_size)
    _check_weight(w)
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // block_size)
    pad = n_blocks * block_size - n
    if pad:  # zeros never change a block's absmax, and their codes are dropped below
        flat = F.pad(flat, (0, pad))
    blocks = flat.view(n_blocks, block_size)
    lo, hi = torch.aminmax(blocks, dim=1)
    absmax = torch.maximum(hi, -lo)  # (n_blocks,); NaN and inf propagate into it
    if not bool(torch.isfinite(absmax).all()):
        raise ValueError("cannot quantize a tensor containing NaN or inf")
    safe = absmax.clamp(min=_TINY)
    scaled = blocks * (1.0 / safe)[:, None]  # (n_blocks, block_size), in [-1, 1]
    if pad:  # bitsandbytes divides in the ragged last block; do the same, bit for bit
        scaled[-1] = blocks[-1] / safe[-1]
    mids, order = _quantize_tables(quant_type, flat.device)
    idx = torch.bucketize(scaled, mids, out_int32=True).to(torch.uint8).view(-1)
    if order is not None:
        idx = order[idx.long()]
    n_bytes = -(-n // 2)
    idx = idx[: 2 * n_bytes]
    codes = (idx[0::2] << 4) | idx[1::2]  # first element in the high nibble
    return NF4Tensor(
        codes=codes,
        absmax=absmax,
        shape=w.shape,
        dtype=w.dtype,
        block_size=block_size,
        numel=n,
        quant_type=quant_type,
    )


def _quantize_absmax(absmax: torch.Tensor):
    """Double quantization -> (uint8 codes, float32 scale per 256, float32 mean, map index)."""
    offset = absmax.double().mean().float()  # float64 sum: the same on every device
    centered = absmax - offset
    nb = centered.numel()
    n2 = -(-nb // DQ_BLOCK_SIZE)
    blocks = F.pad(centered, (0, n2 * DQ_BLOCK_SIZE - nb)).view(n2, DQ_BLOCK_SIZE)
    scale = blocks.abs().amax(dim=1)  # (n2,)
    scaled = blocks * (1.0 / scale.clamp(min=_TINY))[:, None]  # in [-1, 1]
    best = None
    grids, mids = _dq_tables(absmax.device)
    for i in range(len(DQ_MAPS)):
        codes = torch.bucketize(scaled, mids[i], out_int32=True).to(torch.uint8)
        err = (grids[i][codes.long()] * scale[:, None] - blocks).view(-1)[:nb]
        sse = err.double().square().sum().item()
        if best is None or sse < best[0]:
            best = (sse, codes.view(-1)[:nb], i)
    _, codes, i = best
    return codes, scale, offset, torch.tensor(i, dtype=torch.uint8, device=absmax.device)


def _dequantize_absmax(codes, scale, offset, map_index) -> torch.Tensor:
    nb = codes.numel()
    n2 = scale.numel()
    grid = _dq_tables(codes.device)[0][map_index.long()]  # indexed on the device: no sync
    vals = F.pad(grid[codes.long()], (0, n2 * DQ_BLOCK_SIZE - nb)).view(n2, DQ_BLOCK_SIZE)
    # an absmax is never negative; rounding a tiny one next to a huge one could make it so
    return ((vals * scale[:, None]).view(-1)[:nb] + offset).clamp_(min=0.0)


def quantize_nf4(w: torch.Tensor, block_size: int = 64, double_quant: bool = False) -> NF4Tensor:
    """Quantize a float tensor of any shape to NF4, blockwise over its flattened values.

    Raises:
        ValueError: non-float or empty tensor, NaN/inf in it, block_size not a positive
            even integer.
    """
    q = _quantize_blockwise(w, "nf4", block_size)
    if double_quant:
        q.absmax, q.absmax_scale, q.absmax_offset, q.absmax_map = _quantize_absmax(q.absmax)
    return q


def quantize_int4_absmax(w: torch.Tensor, block_size: int = 64) -> NF4Tensor:
    """Uniform symmetric 4-bit: each block scaled by its absmax, rounded to k/7."""
    return _quantize_blockwise(w, "int4", block_size)


def quantize_fp4(w: torch.Tensor, block_size: int = 64) -> NF4Tensor:
    """bitsandbytes' FP4 (e2m1) value set with blockwise absmax; codes in its bit order."""
    return _quantize_blockwise(w, "fp4", block_size)


# ---------------------------------------------------------------------------- dequantize


def dequantize_4bit(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize any :class:`NF4Tensor` (nf4, int4 or fp4) to ``dtype``, original shape.

    value = codebook[code] * absmax, computed in float32 and rounded once to ``dtype``.
    """
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"expected an NF4Tensor, got {type(q).__name__}")
    _check_dtype(dtype)
    nb, bs = q.n_blocks, q.block_size
    if q.codes.numel() != -(-q.numel // 2) or q.absmax.numel() != nb:
        raise ValueError(
            f"inconsistent NF4Tensor: {q.codes.numel()} code bytes and {q.absmax.numel()} "
            f"absmax values for {q.numel} elements in blocks of {bs}"
        )
    # one fused pass where it can run: Triton on CUDA, the C loop on the CPU
    fused = next((m for m in (nf4_kernels, nf4_cpu) if m.available(q.codes, dtype)), None)
    if fused is not None:
        dq = None
        if q.double_quant:
            dq = (_dq_tables(q.codes.device)[0], q.absmax_map, q.absmax_scale, q.absmax_offset)
        flat = fused.dequantize_packed(
            q.codes, q.absmax, _CODEBOOKS[q.quant_type], bs, q.numel, dtype, dq, DQ_BLOCK_SIZE
        )
        return flat.view(q.shape)
    absmax = q.absmax_float()  # (nb,)
    codes = q.codes
    need = 2 * -(-nb * bs // 4)  # bytes, even, covering every (padded) block
    if codes.numel() < need:
        codes = torch.cat([codes, codes.new_zeros(need - codes.numel())])
    elif codes.storage_offset() % 2:
        codes = codes.clone()
    if codes.device.type == "cpu":
        table = _pair_table(q.quant_type, codes.device)  # (65536, 4)
        out = _dequantize_cpu(codes.view(torch.uint16), absmax, table, bs, dtype)
    else:  # GPUs gather 8-byte elements fastest: one byte -> its two float32 values
        table = _byte_table(q.quant_type, codes.device)  # (256,) int64
        vals = table.index_select(0, codes.int()).view(torch.float32)[: nb * bs].view(nb, bs)
        if dtype == torch.float32:
            out = vals.mul_(absmax[:, None])
        else:
            out = torch.mul(vals, absmax[:, None], out=torch.empty_like(vals, dtype=dtype))
    return out.view(-1)[: q.numel].view(q.shape)


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


def _dequantize_checked(q: NF4Tensor, dtype: torch.dtype, quant_type: str) -> torch.Tensor:
    if isinstance(q, NF4Tensor) and q.quant_type != quant_type:
        raise ValueError(f"expected a {quant_type} tensor, got quant_type={q.quant_type!r}")
    return dequantize_4bit(q, dtype)


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_nf4` (float32, bfloat16, float16 or float64 out)."""
    return _dequantize_checked(q, dtype, "nf4")


def dequantize_int4_absmax(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _dequantize_checked(q, dtype, "int4")


def dequantize_fp4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _dequantize_checked(q, dtype, "fp4")


def unpack_codes(q: NF4Tensor) -> torch.Tensor:
    """The 4-bit code of every element, uint8 (numel,), in flattened order."""
    both = torch.stack([q.codes >> 4, q.codes & 15], dim=1)  # (n_bytes, 2)
    return both.view(-1)[: q.numel]


# ---------------------------------------------------------------------------- bit accounting


def bits_per_param(block_size: int = 64, double_quant: bool = False) -> float:
    """Storage bits per parameter, ignoring padding and the few bytes fixed per tensor.

    4 + 32/block_size; with double quantization 4 + 8/block_size + 32/(block_size*256).
    """
    _check_block_size(block_size)
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * DQ_BLOCK_SIZE)


def nf4_numel_bytes(numel: int, block_size: int = 64, double_quant: bool = False) -> int:
    """Exact bytes :func:`quantize_nf4` stores for a tensor of ``numel`` elements."""
    _check_block_size(block_size)
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
    tensors = (q.codes, q.absmax, q.absmax_scale, q.absmax_offset, q.absmax_map)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def nf4_model_bytes(
    shapes: Iterable[Sequence[int]], block_size: int = 64, double_quant: bool = True
) -> dict:
    """Bytes of a set of weights stored as fp32, bf16 and NF4 (exact, per tensor).

    Returns {"n_params", "fp32", "bf16", "nf4", "nf4_bits_per_param"}.
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


# ---------------------------------------------------------------------------- modules


class NF4Linear(nn.Module):
    """A frozen Linear whose weight (out_features, in_features) is stored as NF4 buffers.

    Build one with :meth:`from_linear`; the constructor makes zero-filled buffers of the
    right shapes for ``load_state_dict``. The bias stays in full precision as a frozen
    Parameter. forward(x) = F.linear(x, dequantized weight in x.dtype, bias).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        block_size: int = 64,
        double_quant: bool = True,
        device: torch.device | str | None = None,
        weight_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        _check_block_size(block_size)
        _check_dtype(weight_dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.double_quant = double_quant
        self.weight_dtype = weight_dtype
        n = in_features * out_features
        nb = -(-n // block_size)
        self.register_buffer(
            "weight_codes", torch.zeros(-(-n // 2), dtype=torch.uint8, device=device)
        )
        if double_quant:
            self.register_buffer("weight_absmax", torch.zeros(nb, dtype=torch.uint8, device=device))
            n2 = -(-nb // DQ_BLOCK_SIZE)
            self.register_buffer("weight_absmax_scale", torch.zeros(n2, device=device))
            self.register_buffer("weight_absmax_offset", torch.zeros((), device=device))
            self.register_buffer(
                "weight_absmax_map", torch.zeros((), dtype=torch.uint8, device=device)
            )
        else:
            self.register_buffer("weight_absmax", torch.zeros(nb, device=device))
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=weight_dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True
    ) -> NF4Linear:
        w = linear.weight.detach()
        m = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=block_size,
            double_quant=double_quant,
            device=w.device,
            weight_dtype=w.dtype,
        )
        q = quantize_nf4(w, block_size=block_size, double_quant=double_quant)
        m.weight_codes = q.codes
        m.weight_absmax = q.absmax
        if double_quant:
            m.weight_absmax_scale = q.absmax_scale
            m.weight_absmax_offset = q.absmax_offset
            m.weight_absmax_map = q.absmax_map
        if linear.bias is not None:
            m.bias.data = linear.bias.detach().clone()
        return m

    @property
    def quantized_weight(self) -> NF4Tensor:
        return NF4Tensor(
            codes=self.weight_codes,
            absmax=self.weight_absmax,
            absmax_scale=getattr(self, "weight_absmax_scale", None),
            absmax_offset=getattr(self, "weight_absmax_offset", None),
            absmax_map=getattr(self, "weight_absmax_map", None),
            shape=torch.Size((self.out_features, self.in_features)),
            dtype=self.weight_dtype,
            block_size=self.block_size,
            numel=self.out_features * self.in_features,
        )

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight (out_features, in_features), in ``dtype`` (default: the original's)."""
        return dequantize_nf4(self.quantized_weight, dtype or self.weight_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize_weight(x.dtype), bias)

    def storage_bytes(self) -> int:
        return nf4_storage_bytes(self.quantized_weight)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() cast every floating buffer; the float32 block scales
        # must keep their precision, so they pass through `fn` disguised as int32 (only
        # moved between devices). The default dequantize dtype follows the cast.
        stats = [
            k
            for k in ("weight_absmax", "weight_absmax_scale", "weight_absmax_offset")
            if k in self._buffers and self._buffers[k].dtype == torch.float32
        ]
        for k in stats:
            self._buffers[k] = self._buffers[k].view(torch.int32)
        try:
            super()._apply(fn, recurse)
        finally:
            for k in stats:
                self._buffers[k] = self._buffers[k].view(torch.float32)
        cast = fn(torch.empty(0, dtype=self.weight_dtype)).dtype
        if cast in _DEQUANT_DTYPES:
            self.weight_dtype = cast
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, block_size={self.block_size}, "
            f"double_quant={self.double_quant}"
        )


def _tied_linears(model: nn.Module) -> set[str]:
    """Names of Linears whose weight is shared with another parameter (tied embeddings)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return {
        name
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, nn.Linear) and len(set(owners[id(m.weight)])) > 1
    }


def quantize_model_nf4(
    model: nn.Module,
    block_size: int = 64,
    double_quant: bool = True,
    module_filter: Callable[[str, nn.Linear], bool] | None = None,
) -> list[str]:
    """Replace nn.Linear layers of ``model`` by NF4Linear in place; return their names.

    ``module_filter(name, linear) -> bool`` picks the layers. By default: every Linear
    whose weight is not tied to another parameter, and, when the model has a ``blocks``
    attribute (MiniGPT), only those inside ``blocks`` (lm_head and embeddings stay).
    """
    _check_block_size(block_size)
    if module_filter is None:
        tied = _tied_linears(model)
        prefix = "blocks." if hasattr(model, "blocks") else ""

        def module_filter(name: str, module: nn.Linear) -> bool:
            return name.startswith(prefix) and name not in tied

    targets = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name and module_filter(name, m)
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        setattr(parent, child, NF4Linear.from_linear(linear, block_size, double_quant))
    return targets


# ---------------------------------------------------------------------------- error analysis

_QUANTIZERS: dict[str, Callable[[torch.Tensor, int], NF4Tensor]] = {
    "nf4": lambda w, bs: quantize_nf4(w, bs),
    "nf4_dq": lambda w, bs: quantize_nf4(w, bs, double_quant=True),
    "int4": quantize_int4_absmax,
    "fp4": quantize_fp4,
}


def quantization_errors(w: torch.Tensor, method: str = "nf4", block_size: int = 64) -> torch.Tensor:
    """Per-element error dequant(quant(w)) - w, float32, flattened (for histograms).

    ``method``: "nf4", "nf4_dq" (with double quantization), "int4" or "fp4".
    """
    if method not in _QUANTIZERS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(_QUANTIZERS)}")
    q = _QUANTIZERS[method](w, block_size)
    return (dequantize_4bit(q) - w.detach().float()).reshape(-1)


def quantization_error_report(
    weights: Mapping[str, torch.Tensor],
    block_size: int = 64,
    methods: Sequence[str] = QUANT_METHODS,
) -> list[dict]:
    """One row per (layer, method): rmse, max_abs, mean_abs of the element errors.

    Rows also carry numel, the weight's std and rel_rmse = rmse / std.
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


def gaussian_weights(
    shapes: Mapping[str, Sequence[int]] | None = None, std: float = 0.02, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded normal float32 tensors by name (default: one 256x256 "gaussian" matrix)."""
    if shapes is None:
        shapes = {"gaussian": (256, 256)}
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tuple(s), generator=g) * std for name, s in shapes.items()}
