"""The NF4 storage format: the value sets, the constants, and the container that holds it.

What the stored bytes mean, in the order the QLoRA paper introduces them (how they are
produced and read fast is :mod:`minituner.nf4.codec`'s business):

* **Codebook.** 16 values in [-1, 1] placed at quantiles of a standard normal, built
  asymmetrically (8 positive, 7 negative, and an exact 0) so that zero is representable.
  :func:`nf4_codebook_from_normal` computes it; :data:`NF4_CODEBOOK` is the published
  table (the one bitsandbytes hard-codes). The tests check the two agree. The same layout
  also holds two other 4-bit value sets, uniform int4 and bitsandbytes' FP4
  (:data:`CODEBOOKS`).
* **Blockwise absmax.** The flattened weight is cut into blocks of ``block_size``
  (:data:`DEFAULT_BLOCK_SIZE`, 64); each block is divided by its largest magnitude (never
  less than :data:`ABSMAX_FLOOR`) and every element is stored as the index of the nearest
  codebook value (a tie goes to the lower value).
* **Packing.** Two 4-bit codes per byte, the FIRST element in the HIGH nibble: the byte
  layout of ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")``.
* **Double quantization** (off unless asked, :data:`DEFAULT_DOUBLE_QUANT`; on in QLoRA
  runs, :data:`QLORA_DOUBLE_QUANT`). The per-block float32 absmax values cost 32/64 = 0.5
  bit per parameter. Subtracting their mean and storing them as 8-bit codes in blocks of
  256 (:data:`DQ_BLOCK_SIZE`, one float32 scale per 256 blocks) cuts that to
  8/64 + 32/(64*256) = 0.127 bit. bitsandbytes rounds to its 8-bit "dynamic" map
  (log-spaced: fine near 0, coarse near the block maximum). For near-normal weights the
  centred absmax values are spread evenly, and a uniform grid (symmetric int8, levels
  k/127) has about 30% less error; for heavy-tailed weights the dynamic map wins. So each
  tensor is stored with whichever of the two grids (:data:`DQ_MAPS`) reconstructs its
  absmax values with the smaller squared error (one byte, ``absmax_map``, records the
  choice), always by exact nearest rounding: the absmax error is never above that of
  bitsandbytes' nested quantization (checked in the tests).

:class:`NF4Tensor` holds one such tensor and checks, once, that its fields fit together;
every reader (the codec and its backends) trusts it after that. This module imports only
torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F

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
# The floor bitsandbytes puts under absmax before dividing by it (an all-zero block), for
# the 4-bit codes and for the 8-bit absmax codes of double quantization alike.
ABSMAX_FLOOR = 1e-38


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
def dq_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The DQ_MAPS grids (len(DQ_MAPS), 256) and their midpoints (len(DQ_MAPS), 255)."""
    grids = torch.stack([int8_map() if name == "int8" else dynamic_map_8bit() for name in DQ_MAPS])
    return grids.to(device), ((grids[:, :-1] + grids[:, 1:]) / 2).to(device)


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
        return dq_tables(self.device)[0]

    def absmax_float(self) -> torch.Tensor:
        """Per-block scales as float32 (n_blocks,), undoing double quantization."""
        if not self.double_quant:
            return self.absmax.float()
        return _dequantize_absmax(
            self.absmax, self.absmax_scale, self.absmax_offset, self.absmax_map
        )


def _dequantize_absmax(codes, scale, offset, map_index) -> torch.Tensor:
    """absmax = grid[code] * scale[block // 256] + offset, float32 (n_blocks,): bitsandbytes'
    formula. (minituner's own double quantization never picks a code that decodes below 0;
    a bitsandbytes state may, and its weights then use that negative scale.)"""
    nb = codes.numel()
    n2 = scale.numel()
    grid = dq_tables(codes.device)[0][map_index.long()]  # indexed on the device: no sync
    vals = F.pad(grid[codes.long()], (0, n2 * DQ_BLOCK_SIZE - nb)).view(n2, DQ_BLOCK_SIZE)
    return (vals * scale[:, None]).view(-1)[:nb] + offset
