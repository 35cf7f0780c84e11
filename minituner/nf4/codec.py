"""NF4 (4-bit NormalFloat) quantization from scratch, as QLoRA stores its frozen base.

The pieces, in the order the QLoRA paper introduces them:

* **Codebook.** 16 values in [-1, 1] placed at quantiles of a standard normal, built
  asymmetrically (8 positive, 7 negative, and an exact 0) so that zero is representable.
  :func:`nf4_codebook_from_normal` computes it; :data:`NF4_CODEBOOK` is the published
  table (the one bitsandbytes hard-codes). The tests check the two agree.
* **Blockwise absmax.** The flattened weight is cut into blocks of ``block_size``
  (:data:`DEFAULT_BLOCK_SIZE`, 64); each block is divided by its largest magnitude and
  every element is replaced by the index of the nearest codebook value (a tie goes to
  the lower value).
* **Packing.** Two 4-bit codes per byte, the FIRST element in the HIGH nibble: the byte
  layout of ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")``. Our codes
  and absmax equal bitsandbytes' on the same input (``tests/test_nf4.py``).
* **Double quantization** (off unless asked, :data:`DEFAULT_DOUBLE_QUANT`; on in QLoRA
  runs, :data:`QLORA_DOUBLE_QUANT`). The per-block float32 absmax
  values cost 32/64 = 0.5 bit per parameter. Subtracting their mean and storing them as
  8-bit codes in blocks of 256 (one float32 scale per 256 blocks) cuts that to
  8/64 + 32/(64*256) = 0.127 bit. bitsandbytes rounds to its 8-bit "dynamic" map
  (log-spaced: fine near 0, coarse near the block maximum). For near-normal weights the
  centred absmax values are spread evenly, and a uniform grid (symmetric int8, levels
  k/127) has about 30% less error; for heavy-tailed weights the dynamic map wins. So each
  tensor is stored with whichever of the two grids reconstructs its absmax values with
  the smaller squared error (one byte, ``absmax_map``, records the choice), always by
  exact nearest rounding: the absmax error is never above that of bitsandbytes' nested
  quantization (checked in the tests).

The same container and block layout also hold two other 4-bit value sets, uniform int4
and bitsandbytes' FP4 (:func:`quantize_4bit`); :mod:`minituner.nf4.compare` compares
the three. Storage accounting is in :mod:`minituner.nf4.storage`, the layer and model
surgery in :mod:`minituner.nf4.linear`.

Everything is vectorized torch (no Python loop over blocks), so it runs on CPU or CUDA.
:func:`dequantize_4bit` runs one fused pass where it can, a C loop on the CPU
(:mod:`minituner.nf4.backends.cpu_c`, built with the system's compiler on first use) or a Triton
kernel on CUDA (:mod:`minituner.nf4.backends.triton_dequant`), and otherwise PyTorch ops
(:mod:`minituner.nf4.backends.torch_ops`); the three agree bit for bit. Quantization matches the
arithmetic of bitsandbytes' CPU path (multiply by 1/absmax, compare with the midpoints
between codebook values) so the codes agree bit for bit; on CUDA :func:`quantize_4bit`
runs it as one Triton kernel (:mod:`minituner.nf4.backends.triton_quant`, same arithmetic,
``MINITUNER_NF4_KERNEL=torch`` switches both kernels off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F

from minituner.nf4.backends import cpu_c as nf4_cpu
from minituner.nf4.backends import torch_ops as nf4_torch
from minituner.nf4.backends import triton_dequant as nf4_kernels
from minituner.nf4.backends import triton_quant as nf4_quant_kernels

DEFAULT_BLOCK_SIZE = 64  # elements per absmax block, everywhere a block size has a default
DEFAULT_DOUBLE_QUANT = False  # the codec and its layers: float32 absmax unless asked for
# QLoRA's recipe (the paper's): a QLoRA run double-quantizes its frozen base. The default of
# FinetuneConfig.nf4_double_quant (so part of every shipped qlora run id), of the 7B builder
# and of the QLoRA memory prediction; everything else takes DEFAULT_DOUBLE_QUANT.
QLORA_DOUBLE_QUANT = True

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

CODEBOOKS = {"nf4": NF4_CODEBOOK, "int4": INT4_CODEBOOK, "fp4": FP4_CODEBOOK}
DQ_BLOCK_SIZE = 256  # absmax values per float32 scale under double quantization
DQ_MAPS: tuple[str, ...] = ("int8", "dynamic")  # the 8-bit grids double quantization picks from
DEQUANT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_TINY = 1e-38  # the floor bitsandbytes puts under absmax (an all-zero block)


def nf4_codebook_from_normal(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values computed from standard-normal quantiles, float32, sorted.

    Positive half: the normal quantiles at 8 probabilities evenly spaced from ``offset``
    towards 0.5 (0.5 itself excluded); negative half: the same with 7 probabilities,
    mirrored; plus an exact 0. Everything is divided by the largest value, so the
    ends are exactly -1 and 1.

    Raises:
        ValueError: ``offset`` outside (0.5, 1).
    """
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be in (0.5, 1), got {offset}")
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return (values / values.max()).to(torch.float32)


# ---------------------------------------------------------------------------- validation


def check_block_size(block_size: int) -> None:
    """Raises ValueError unless ``block_size`` is a positive even integer."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise ValueError(f"block_size must be a positive even integer, got {block_size!r}")
    if block_size <= 0 or block_size % 2:
        raise ValueError(f"block_size must be a positive even integer, got {block_size}")


def check_dequantize_dtype(dtype: torch.dtype) -> None:
    """Raises ValueError unless ``dtype`` is one of :data:`DEQUANT_DTYPES`."""
    if dtype not in DEQUANT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in DEQUANT_DTYPES)
        raise ValueError(f"cannot dequantize to {dtype}; choose one of: {names}")


def _check_weight(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise ValueError(f"can only quantize a floating-point tensor, got dtype {w.dtype}")
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")


# ---------------------------------------------------------------------------- container

_DQ_FIELDS = ("absmax_scale", "absmax_offset", "absmax_map")


@dataclass(frozen=True)
class NF4Tensor:
    """A blockwise 4-bit quantized tensor (NF4 unless ``quant_type`` says otherwise).

    Checked once, when made: every field fits the others, so the dequantize paths trust it.

    codes: uint8 (ceil(numel / 2),), two codes per byte, first element in the high nibble.
    absmax: float32 (n_blocks,); or, double-quantized, uint8 (n_blocks,) codes k with
        absmax ~= DQ_MAPS[absmax_map][k] * absmax_scale[block // 256] + absmax_offset.
    absmax_scale: float32 (ceil(n_blocks / 256),) when double-quantized, else None.
    absmax_offset: float32 0-d tensor (the mean absmax) when double-quantized, else None.
    absmax_map: uint8 0-d tensor, the index in DQ_MAPS of the 8-bit grid used, else None.
    shape, dtype: the original tensor's (dtype is also the default dequantize dtype).

    Raises:
        ValueError: a block size that is not a positive even integer, an unknown
            ``quant_type``, or tensors whose sizes or dtypes do not fit (``inconsistent``).
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    block_size: int
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None
    absmax_map: torch.Tensor | None = None
    quant_type: str = "nf4"
    dq_block_size: ClassVar[int] = DQ_BLOCK_SIZE

    def __post_init__(self) -> None:
        check_block_size(self.block_size)
        if self.quant_type not in CODEBOOKS:
            raise ValueError(f"unknown quant_type {self.quant_type!r}; one of {list(CODEBOOKS)}")
        object.__setattr__(self, "shape", torch.Size(self.shape))
        dq = [getattr(self, k) is not None for k in _DQ_FIELDS]
        bad = []
        if self.codes.dtype != torch.uint8 or self.codes.numel() != -(-self.numel // 2):
            bad.append(f"{self.codes.numel()} {self.codes.dtype} code bytes")
        if self.absmax.numel() != self.n_blocks:
            bad.append(f"{self.absmax.numel()} absmax values")
        if any(dq) and not all(dq):
            bad.append("part of the double-quantization state")
        elif all(dq):
            if self.absmax.dtype != torch.uint8:
                bad.append(f"double quantization with {self.absmax.dtype} absmax codes")
            if self.absmax_scale.numel() != -(-self.n_blocks // DQ_BLOCK_SIZE):
                bad.append(f"{self.absmax_scale.numel()} double-quantization scales")
        elif not self.absmax.is_floating_point():
            bad.append(f"{self.absmax.dtype} absmax without double quantization")
        if bad:
            raise ValueError(
                f"inconsistent NF4Tensor: {', '.join(bad)} for {self.numel} elements in "
                f"blocks of {self.block_size}"
            )

    @classmethod
    def zeros(
        cls,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        block_size: int = DEFAULT_BLOCK_SIZE,
        double_quant: bool = DEFAULT_DOUBLE_QUANT,
        device: torch.device | str | None = None,
    ) -> NF4Tensor:
        """An all-zero tensor of this layout (a placeholder to load a state dict into)."""
        check_block_size(block_size)
        n = math.prod(shape)
        nb = -(-n // block_size)
        codes = torch.zeros(-(-n // 2), dtype=torch.uint8, device=device)
        if not double_quant:
            return cls(codes, torch.zeros(nb, device=device), shape, dtype, block_size)
        return cls(
            codes,
            torch.zeros(nb, dtype=torch.uint8, device=device),
            shape,
            dtype,
            block_size,
            absmax_scale=torch.zeros(-(-nb // DQ_BLOCK_SIZE), device=device),
            absmax_offset=torch.zeros((), device=device),
            absmax_map=torch.zeros((), dtype=torch.uint8, device=device),
        )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.block_size)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def codebook(self) -> tuple[float, ...]:
        return CODEBOOKS[self.quant_type]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (codes, absmax and the double-quant state)."""
        names = ("codes", "absmax", *_DQ_FIELDS)
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def to(self, device: torch.device | str) -> NF4Tensor:
        return replace(self, **{k: t.to(device) for k, t in self.tensors().items()})

    def dq_grids(self) -> torch.Tensor:
        """The DQ_MAPS grids as float32 (len(DQ_MAPS), 256) on this tensor's device."""
        return _dq_tables(self.device)[0]

    def absmax_float(self) -> torch.Tensor:
        """Per-block scales as float32 (n_blocks,), undoing double quantization."""
        if not self.double_quant:
            return self.absmax.float()
        return _dequantize_absmax(
            self.absmax, self.absmax_scale, self.absmax_offset, self.absmax_map
        )


# ---------------------------------------------------------------------------- tables


@lru_cache(maxsize=32)
def _quantize_tables(quant_type: str, device: torch.device):
    """Sorted-codebook midpoints (15,) and the map sorted index -> stored code (or None)."""
    code = torch.tensor(CODEBOOKS[quant_type], dtype=torch.float32)
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


@lru_cache(maxsize=32)
def _dq_tables(device: torch.device):
    """The DQ_MAPS grids (len(DQ_MAPS), 256) and their midpoints (len(DQ_MAPS), 255)."""
    grids = torch.stack([int8_map() if name == "int8" else dynamic_map_8bit() for name in DQ_MAPS])
    return grids.to(device), ((grids[:, :-1] + grids[:, 1:]) / 2).to(device)


# ---------------------------------------------------------------------------- quantize


def quantize_4bit(
    w: torch.Tensor, quant_type: str = "nf4", block_size: int = DEFAULT_BLOCK_SIZE
) -> NF4Tensor:
    """Blockwise absmax quantization of ``w`` to one of :data:`CODEBOOKS` (no double quant).

    Raises:
        TypeError: ``w`` is not a tensor.
        ValueError: non-float or empty tensor, NaN/inf in it, block_size not a positive
            even integer, an unknown ``quant_type``.
    """
    check_block_size(block_size)
    _check_weight(w)
    if quant_type not in CODEBOOKS:
        raise ValueError(f"unknown quant_type {quant_type!r}; choose one of {list(CODEBOOKS)}")
    flat = w.detach().reshape(-1)
    if nf4_quant_kernels.available(flat, block_size):  # one Triton kernel on CUDA
        mids, order = _quantize_tables(quant_type, flat.device)
        codes, absmax = nf4_quant_kernels.quantize_packed(flat, block_size, mids, order)
        if not bool(torch.isfinite(absmax).all()):
            raise ValueError("cannot quantize a tensor containing NaN or inf")
        return NF4Tensor(codes, absmax, w.shape, w.dtype, block_size, quant_type=quant_type)
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
    return NF4Tensor(codes, absmax, w.shape, w.dtype, block_size, quant_type=quant_type)


def _quantize_absmax(absmax: torch.Tensor) -> dict[str, torch.Tensor]:
    """Double quantization: the NF4Tensor fields absmax (uint8 codes), absmax_scale (one
    float32 per 256), absmax_offset (the float32 mean) and absmax_map (the grid index)."""
    if nf4_quant_kernels.dq_available(absmax):  # a Triton kernel on CUDA, the same values
        grids, mids = _dq_tables(absmax.device)
        return nf4_quant_kernels.quantize_absmax(absmax, grids, mids, DQ_BLOCK_SIZE)
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
    return {
        "absmax": codes,
        "absmax_scale": scale,
        "absmax_offset": offset,
        "absmax_map": torch.tensor(i, dtype=torch.uint8, device=absmax.device),
    }


def _dequantize_absmax(codes, scale, offset, map_index) -> torch.Tensor:
    nb = codes.numel()
    n2 = scale.numel()
    grid = _dq_tables(codes.device)[0][map_index.long()]  # indexed on the device: no sync
    vals = F.pad(grid[codes.long()], (0, n2 * DQ_BLOCK_SIZE - nb)).view(n2, DQ_BLOCK_SIZE)
    # an absmax is never negative; rounding a tiny one next to a huge one could make it so
    return ((vals * scale[:, None]).view(-1)[:nb] + offset).clamp_(min=0.0)


def quantize_nf4(
    w: torch.Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    double_quant: bool = DEFAULT_DOUBLE_QUANT,
) -> NF4Tensor:
    """Quantize a float tensor of any shape to NF4, blockwise over its flattened values.

    Raises:
        TypeError: ``w`` is not a tensor.
        ValueError: non-float or empty tensor, NaN/inf in it, block_size not a positive
            even integer.
    """
    q = quantize_4bit(w, "nf4", block_size)
    return replace(q, **_quantize_absmax(q.absmax)) if double_quant else q


# ---------------------------------------------------------------------------- dequantize


def dequantize_4bit(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize any :class:`NF4Tensor` (nf4, int4 or fp4) to ``dtype``, original shape.

    value = codebook[code] * absmax, computed in float32 and rounded once to ``dtype``.

    Raises:
        TypeError: ``q`` is not an NF4Tensor.
        ValueError: ``dtype`` is not one of :data:`DEQUANT_DTYPES`.
    """
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"expected an NF4Tensor, got {type(q).__name__}")
    check_dequantize_dtype(dtype)
    # one fused pass where it can run: Triton on CUDA, the C loop on the CPU
    for fused in (nf4_kernels, nf4_cpu):
        if fused.available(q.codes, dtype):
            return fused.dequantize_packed(q, dtype).view(q.shape)
    return nf4_torch.dequantize_packed(q, dtype).view(q.shape)


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_nf4` (float32, bfloat16, float16 or float64 out).

    Raises:
        TypeError: ``q`` is not an NF4Tensor.
        ValueError: ``q`` holds another 4-bit format, or an unsupported ``dtype``.
    """
    if isinstance(q, NF4Tensor) and q.quant_type != "nf4":
        raise ValueError(f"expected an nf4 tensor, got quant_type={q.quant_type!r}")
    return dequantize_4bit(q, dtype)
