"""Quantize to and dequantize from the 4-bit formats of :mod:`minituner.nf4.format`.

The one place that picks a backend. :func:`quantize_nf4` (and :func:`quantize_4bit`, the
same for any value set of :data:`~minituner.nf4.format.CODEBOOKS`) cuts the flattened
tensor into blocks, scales each by its absmax and stores the index of the nearest codebook
value, two per byte; with ``double_quant`` the absmax values are quantized again to 8 bits
(:mod:`minituner.nf4.format` says what every stored field means). :func:`dequantize_nf4`
and :func:`dequantize_4bit` undo it. Our codes and absmax equal bitsandbytes' on the same
input (``tests/nf4/test_codec.py``).

Everything is vectorized (no Python loop over blocks), so it runs on CPU or CUDA. This
module checks the input, chooses a backend for the device, dtype and installed tools, and
hands it plain tensors and settings (:mod:`minituner.nf4.backends` describes them):

* quantize and double quantization: one Triton kernel each on CUDA
  (:mod:`~minituner.nf4.backends.triton_quant`), otherwise PyTorch ops
  (:mod:`~minituner.nf4.backends.torch_ops`), with the arithmetic of bitsandbytes' CPU
  path (multiply by 1/absmax, compare with the midpoints between codebook values);
* dequantize: one fused pass where it can, a Triton kernel on CUDA
  (:mod:`~minituner.nf4.backends.triton_dequant`) or a C loop on the CPU
  (:mod:`~minituner.nf4.backends.cpu_c`, built with the system's compiler on first use),
  and otherwise PyTorch ops.

Every pair agrees bit for bit; ``MINITUNER_NF4_KERNEL=torch`` switches the fused ones off.
Storage accounting is in :mod:`minituner.nf4.storage`, the layers in
:mod:`minituner.nf4.linear`, the comparison of the three value sets in
:mod:`minituner.nf4.compare`.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import replace
from functools import lru_cache

import torch

from minituner.nf4.backends import cpu_c, fused_wanted, torch_ops, triton_dequant, triton_quant
from minituner.nf4.format import (
    ABSMAX_FLOOR,
    CODEBOOKS,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DOUBLE_QUANT,
    DQ_BLOCK_SIZE,
    NF4Tensor,
    check_block_size,
    check_dequantize_dtype,
    dq_tables,
)


def _check_weight(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise ValueError(f"can only quantize a floating-point tensor, got dtype {w.dtype}")
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")


@lru_cache(maxsize=32)
def _quantize_tables(quant_type: str, device: torch.device):
    """Sorted-codebook midpoints (15,) and the map sorted index -> stored code (or None)."""
    code = torch.tensor(CODEBOOKS[quant_type], dtype=torch.float32)
    order = torch.sort(code, stable=True).indices
    mids = (code[order[:-1]] + code[order[1:]]) / 2
    identity = torch.equal(order, torch.arange(len(code)))
    return mids.to(device), None if identity else order.to(torch.uint8).to(device)


# ---------------------------------------------------------------------------- quantize


def quantize_4bit(
    w: torch.Tensor, quant_type: str = "nf4", block_size: int = DEFAULT_BLOCK_SIZE
) -> NF4Tensor:
    """Blockwise absmax quantization of ``w`` to one of :data:`~minituner.nf4.format.CODEBOOKS`
    (no double quant).

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
    mids, order = _quantize_tables(quant_type, flat.device)
    backend = triton_quant if triton_quant.available(flat, block_size) else torch_ops
    codes, absmax = backend.quantize_packed(flat, block_size, mids, order, ABSMAX_FLOOR)
    if not bool(torch.isfinite(absmax).all()):  # NaN and inf propagate into absmax
        raise ValueError("cannot quantize a tensor containing NaN or inf")
    return NF4Tensor(codes, absmax, w.shape, w.dtype, block_size, quant_type=quant_type)


def _quantize_absmax(absmax: torch.Tensor) -> dict[str, torch.Tensor]:
    """Double quantization: the NF4Tensor fields absmax (uint8 codes), absmax_scale (one
    float32 per 256), absmax_offset (the float32 mean) and absmax_map (the grid index)."""
    grids, mids = dq_tables(absmax.device)
    backend = triton_quant if triton_quant.dq_available(absmax) else torch_ops
    fields = backend.quantize_absmax(absmax, grids, mids, DQ_BLOCK_SIZE, ABSMAX_FLOOR)
    fields["absmax"] = _never_negative(fields, grids)
    return fields


def _never_negative(fields: dict[str, torch.Tensor], grids: torch.Tensor) -> torch.Tensor:
    """The absmax codes, each moved up its (ascending) grid until it decodes to 0 or more.

    The nearest grid value to a tiny absmax next to large ones can decode below 0
    (grid[code] * scale + offset); decoded as it is (bitsandbytes' formula, which minituner
    follows so that bitsandbytes' own states read exactly) a negative absmax would flip the
    block's signs. The smallest code that decodes to >= 0 is at most one grid step from the
    nearest, which decoded below 0 while the true absmax is >= 0: the error stays within a
    step. Plain torch ops, the same on every device."""
    codes = fields["absmax"]
    grid = grids[fields["absmax_map"].long()]  # (256,) ascending
    scale = fields["absmax_scale"].repeat_interleave(DQ_BLOCK_SIZE)[: codes.numel()]
    for _ in range(256):
        decoded = grid[codes.long()] * scale + fields["absmax_offset"]
        low = (decoded < 0) & (codes < 255)
        if not bool(low.any()):
            break
        codes = torch.where(low, codes + 1, codes)
    return codes


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


def _dq_arguments(q: NF4Tensor) -> dict:
    """The double-quantization keyword arguments of a fused ``dequantize_packed``."""
    dq = {"dq_block_size": q.dq_block_size}
    if q.double_quant:
        dq.update(
            dq_grids=q.dq_grids(),
            dq_map=q.absmax_map,
            dq_scale=q.absmax_scale,
            dq_offset=q.absmax_offset,
        )
    return dq


# id(NF4Tensor) -> {dtype: triton_dequant.Launcher}; an entry leaves with its tensor
_LAUNCHERS: dict[int, dict] = {}


def _launcher(q: NF4Tensor, dtype: torch.dtype, rows_of: tuple[int, int] | None = None):
    """The prepared Triton dequantize of ``q`` into ``dtype`` (made on the first call; an
    NF4Tensor's fields never change), or None where the Triton kernel does not run.
    ``rows_of``: as :func:`~minituner.nf4.backends.triton_dequant.dequantize_packed`'s."""
    per = _LAUNCHERS.get(id(q))
    if per is not None and (dtype, rows_of) in per:
        return per[dtype, rows_of]
    if not triton_dequant.available(q.codes, dtype) or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    as_stored = (
        q.codes.is_contiguous()
        and q.absmax.is_contiguous()
        and (q.double_quant and q.absmax_scale.is_contiguous() or q.absmax.dtype == torch.float32)
    )
    if not as_stored:  # the launch would read copies made now, not q's tensors
        return None
    if per is None:
        per = _LAUNCHERS[id(q)] = {}
        weakref.finalize(q, _LAUNCHERS.pop, id(q), None)
    layout = (q.codebook, q.numel, q.block_size, dtype)
    shape = q.shape if rows_of is None else None  # a new output: in q's shape
    per[dtype, rows_of] = triton_dequant.Launcher(
        q.codes, q.absmax, *layout, **_dq_arguments(q), rows_of=rows_of, shape=shape
    )
    return per[dtype, rows_of]


def _out_rows(q: NF4Tensor, dtype: torch.dtype, out: torch.Tensor | None):
    """None for no ``out`` or a contiguous one; (row_length, row_stride) for a 2-D ``out``
    of q's shape whose rows are apart (a column slice of a wider matrix). Raises
    ValueError for anything else."""
    if out is None:
        return None
    fits = out.dtype == dtype and out.device == q.codes.device
    if fits and out.is_contiguous() and out.numel() == q.numel:
        return None
    if fits and out.dim() == 2 == len(q.shape) and tuple(out.shape) == tuple(q.shape):
        if out.stride(1) == 1 and out.stride(0) >= out.shape[1]:
            return out.shape[1], out.stride(0)
    raise ValueError(
        f"out must be a contiguous {dtype} tensor of {q.numel} elements, or a {dtype} "
        f"matrix of shape {tuple(q.shape)} with rows apart (unit column stride), on "
        f"{q.codes.device}; got {out.dtype} {tuple(out.shape)} strides {out.stride()} on "
        f"{out.device}"
    )


def dequantize_4bit(
    q: NF4Tensor, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Dequantize any :class:`NF4Tensor` (nf4, int4 or fp4) to ``dtype``, original shape.

    value = codebook[code] * absmax, computed in float32 and rounded once to ``dtype``.
    ``out`` (contiguous, ``dtype``, q's number of elements, on q's device; or a matrix of
    q's 2-D shape whose rows lie apart, such as the first columns of a wider matrix)
    receives the values instead of a new tensor (the Triton kernel writes it directly;
    elsewhere they are copied in) and is returned (a contiguous one viewed in q's shape).
    On CUDA the kernel's launch is prepared once per tensor, dtype and row layout
    (:class:`~minituner.nf4.backends.triton_dequant.Launcher`).

    Raises:
        TypeError: ``q`` is not an NF4Tensor.
        ValueError: ``dtype`` is not one of :data:`~minituner.nf4.format.DEQUANT_DTYPES`,
            or ``out`` does not fit.
    """
    per = _LAUNCHERS.get(id(q)) if out is None else None  # only live, checked NF4Tensors
    launch = per.get((dtype, None)) if per else None
    if launch is not None and fused_wanted():  # prepared before, for this q and dtype
        return launch()  # (q's shape): the host's work per call is what sets the pace
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"expected an NF4Tensor, got {type(q).__name__}")
    check_dequantize_dtype(dtype)
    rows_of = _out_rows(q, dtype, out)
    if rows_of is not None:  # into rows apart: the kernel writes them where it can
        fits = triton_dequant.strided_fits(q.numel, q.block_size, *rows_of)
        launch = _launcher(q, dtype, rows_of) if fits and fused_wanted() else None
        if launch is not None:
            launch(out)
            return out
        return out.copy_(dequantize_4bit(q, dtype))
    launch = _launcher(q, dtype) if fused_wanted() else None
    if launch is not None:  # one fused pass: Triton on CUDA
        return launch() if out is None else launch(out.view(-1)).view(q.shape)
    layout = (q.codebook, q.numel, q.block_size, dtype)
    if triton_dequant.available(q.codes, dtype):  # the interpreter, or q read via copies
        flat = None if out is None else out.view(-1)
        values = triton_dequant.dequantize_packed(
            q.codes, q.absmax, *layout, **_dq_arguments(q), out=flat
        )
        return values.view(q.shape)
    # one fused pass where it can run: the C loop on the CPU
    if cpu_c.available(q.codes, dtype):
        values = cpu_c.dequantize_packed(q.codes, q.absmax, *layout, **_dq_arguments(q))
    else:
        values = torch_ops.dequantize_packed(q.codes, q.absmax_float(), *layout)
    if out is None:
        return values.view(q.shape)
    return out.view(-1).copy_(values).view(q.shape)


def dequantize_nf4(
    q: NF4Tensor, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse of :func:`quantize_nf4` (float32, bfloat16, float16 or float64 out); ``out``
    as in :func:`dequantize_4bit`.

    Raises:
        TypeError: ``q`` is not an NF4Tensor.
        ValueError: ``q`` holds another 4-bit format, an unsupported ``dtype``, or an
            ``out`` that does not fit.
    """
    if isinstance(q, NF4Tensor) and q.quant_type != "nf4":
        raise ValueError(f"expected an nf4 tensor, got quant_type={q.quant_type!r}")
    return dequantize_4bit(q, dtype, out)
