"""NF4 to and from bitsandbytes: ``NF4Tensor`` <-> ``Params4bit`` + ``QuantState``, and
``NF4Linear`` -> ``bnb.nn.Linear4bit``.

The two libraries store NF4 the same way (:mod:`minituner.nf4.format`): the same 16-value
codebook, blockwise absmax in float32, two codes per byte with the first element in the
high nibble. So a tensor moves across as it is: the packed bytes become the ``Params4bit``
data (shape (n/2, 1)), absmax becomes ``QuantState.absmax``; both ways, bit for bit, and
bitsandbytes' dequantization gives our values exactly.

Double quantization is where the two can differ. bitsandbytes always stores the centred
absmax values as 8-bit codes of its signed "dynamic" map (blocks of 256, the mean as
``offset``); so do we when that map fits a tensor better, and then the nested state moves
across unchanged too. Where we chose the uniform int8 grid (``absmax_map`` = "int8"; the
usual choice for near-normal weights), bitsandbytes has no counterpart: :func:`to_bnb`
re-quantizes the absmax values we store with bitsandbytes' own ``quantize_blockwise`` and
says so, returning the error this adds (:class:`BnbExport`, also logged as a warning).
:func:`from_bnb` always reads bitsandbytes' state exactly (it becomes our "dynamic" map).

bitsandbytes takes block sizes 32..4096 (powers of two), the dtypes float16, bfloat16 and
float32, and NF4 here (its default is FP4: every call passes ``quant_type="nf4"``). It is
imported only when these functions run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from minituner.nf4.codec import dequantize_nf4
from minituner.nf4.format import DQ_BLOCK_SIZE, DQ_MAPS, NF4_CODEBOOK, NF4Tensor, dq_tables

BNB_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
BNB_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DYNAMIC = DQ_MAPS.index("dynamic")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BnbExport:
    """What crossing to bitsandbytes cost a tensor: nothing (``requantized`` False, the
    errors 0.0) unless its absmax had to be re-quantized to bitsandbytes' map; then the
    largest absolute and relative change of an absmax value, and the largest change of a
    dequantized weight in its own dtype (in float32 never above the absmax change: every
    NF4 value is in [-1, 1]; a 16-bit dtype adds its rounding)."""

    requantized: bool
    absmax_max_error: float
    absmax_max_rel_error: float
    weight_max_error: float


def _bnb():
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnbF
    except ImportError as e:
        raise ValueError(f"this needs bitsandbytes (pip install bitsandbytes): {e}") from None
    return bitsandbytes, bnbF


def _check(q: NF4Tensor) -> None:
    if not isinstance(q, NF4Tensor):
        raise TypeError(f"expected an NF4Tensor, got {type(q).__name__}")
    problems = []
    if q.quant_type != "nf4":
        problems.append(f"quant_type {q.quant_type!r} (only nf4 crosses here)")
    if q.block_size not in BNB_BLOCK_SIZES:
        problems.append(f"block size {q.block_size} (bitsandbytes takes {BNB_BLOCK_SIZES})")
    if q.dtype not in BNB_DTYPES:
        problems.append(f"dtype {q.dtype} (bitsandbytes stores float16, bfloat16, float32)")
    if problems:
        raise ValueError("cannot hand this NF4 tensor to bitsandbytes: " + "; ".join(problems))


def _bnb_absmax(bnbF, state) -> torch.Tensor:
    """The absmax values bitsandbytes dequantizes with (float32, (n_blocks,))."""
    if not state.nested:
        return state.absmax.float()
    return bnbF.dequantize_blockwise(state.absmax, state.state2) + state.offset


def to_bnb(q: NF4Tensor) -> tuple[torch.Tensor, object, BnbExport]:
    """(packed codes (n/2, 1) uint8, bitsandbytes ``QuantState``, :class:`BnbExport`) for
    ``q``, on ``q``'s device. The codes are ``q``'s own bytes; see the module docstring
    for the absmax.

    Raises:
        TypeError: ``q`` is not an NF4Tensor.
        ValueError: bitsandbytes is missing, or ``q`` has a block size, dtype or value set
            it does not take.
    """
    _check(q)
    _, bnbF = _bnb()
    device = q.device
    code = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=device)
    packed = q.codes.reshape(-1, 1)
    common = dict(shape=q.shape, dtype=q.dtype, blocksize=q.block_size, code=code, quant_type="nf4")
    requantized = q.double_quant and int(q.absmax_map) != _DYNAMIC
    if not q.double_quant:
        state = bnbF.QuantState(absmax=q.absmax.float(), **common)
    elif not requantized:
        state2 = bnbF.QuantState(
            absmax=q.absmax_scale.float(),
            code=dq_tables(device)[0][_DYNAMIC].clone(),
            blocksize=DQ_BLOCK_SIZE,
            dtype=torch.float32,
        )
        offset = q.absmax_offset.float().reshape(())
        state = bnbF.QuantState(absmax=q.absmax, offset=offset, state2=state2, **common)
    else:  # our uniform int8 grid: bitsandbytes' nested quantization of our absmax values
        ours = q.absmax_float()
        offset = ours.mean()
        qabsmax, state2 = bnbF.quantize_blockwise(ours - offset, blocksize=DQ_BLOCK_SIZE)
        state = bnbF.QuantState(absmax=qabsmax, offset=offset, state2=state2, **common)
    report = _report(q, _bnb_absmax(bnbF, state), requantized)
    return packed, state, report


def _report(q: NF4Tensor, theirs: torch.Tensor, requantized: bool) -> BnbExport:
    ours = q.absmax_float()
    diff = (theirs.float() - ours).abs()
    if not bool(diff.any()):
        return BnbExport(requantized, 0.0, 0.0, 0.0)
    rel = float((diff / ours.clamp(min=torch.finfo(torch.float32).tiny)).max())
    # bitsandbytes' values: our codes times its absmax (its formula, float32)
    as_bnb = replace(
        q, absmax=theirs.float(), absmax_scale=None, absmax_offset=None, absmax_map=None
    )
    weight = (dequantize_nf4(as_bnb, q.dtype).float() - dequantize_nf4(q, q.dtype).float()).abs()
    weight = weight.max()
    out = BnbExport(requantized, float(diff.max()), rel, float(weight))
    why = (
        "its absmax used minituner's uniform int8 grid, which bitsandbytes lacks, and was "
        "re-quantized with bitsandbytes' dynamic map"
        if requantized
        else "bitsandbytes does not clamp a negative absmax to zero as minituner does"
    )
    log.warning(
        "NF4 tensor %s handed to bitsandbytes: %s; absmax max error %.3g (%.3g relative), "
        "weight max error %.3g",
        tuple(q.shape), why, out.absmax_max_error, out.absmax_max_rel_error, out.weight_max_error,
    )  # fmt: skip
    return out


def to_params4bit(q: NF4Tensor):
    """(``bitsandbytes.nn.Params4bit`` holding ``q``, :class:`BnbExport`); see :func:`to_bnb`."""
    bnb, _ = _bnb()
    packed, state, report = to_bnb(q)
    param = bnb.nn.Params4bit(
        data=packed,
        requires_grad=False,
        quant_state=state,
        blocksize=q.block_size,
        compress_statistics=q.double_quant,
        quant_type="nf4",
        quant_storage=torch.uint8,
        bnb_quantized=True,
    )
    return param, report


def from_bnb(packed: torch.Tensor, state=None) -> NF4Tensor:
    """The :class:`NF4Tensor` of a bitsandbytes NF4 tensor: ``packed`` (a ``Params4bit``,
    whose ``quant_state`` is used, or the packed uint8 codes with ``state``), exactly.

    Raises:
        ValueError: no state, FP4 or another storage, a nested state that is not
            bitsandbytes' dynamic map in blocks of 256, or sizes that do not fit.
    """
    state = state if state is not None else getattr(packed, "quant_state", None)
    if state is None:
        raise ValueError("no QuantState: pass a Params4bit or the state from quantize_4bit")
    if state.quant_type != "nf4":
        raise ValueError(f"expected an nf4 QuantState, got quant_type={state.quant_type!r}")
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError(
            "this weight was repacked for bitsandbytes' CPU kernel; read it before use"
        )
    codes = packed.data if hasattr(packed, "data") else packed
    if codes.dtype != torch.uint8:
        raise ValueError(f"expected uint8 packed codes, got {codes.dtype}")
    codes = codes.reshape(-1).clone()
    fields = dict(shape=torch.Size(state.shape), dtype=state.dtype, block_size=state.blocksize)
    if not state.nested:
        return NF4Tensor(codes, state.absmax.float().clone(), **fields)
    s2 = state.state2
    grid = dq_tables(s2.code.device)[0][_DYNAMIC]
    if s2.blocksize != DQ_BLOCK_SIZE or not torch.equal(s2.code.float(), grid):
        raise ValueError(
            "the nested absmax state is not bitsandbytes' dynamic map in blocks of 256; "
            "minituner cannot read it exactly"
        )
    return NF4Tensor(
        codes,
        state.absmax.clone(),
        **fields,
        absmax_scale=s2.absmax.float().clone(),
        absmax_offset=torch.as_tensor(state.offset, dtype=torch.float32).reshape(()).clone(),
        absmax_map=torch.tensor(_DYNAMIC, dtype=torch.uint8, device=codes.device),
    )


def to_linear4bit(layer, compute_dtype: torch.dtype | None = None):
    """(``bitsandbytes.nn.Linear4bit`` computing what ``layer`` (an :class:`NF4Linear`)
    computes, :class:`BnbExport`). The bias is copied; nothing is shared with ``layer``."""
    bnb, _ = _bnb()
    q = layer.quantized_weight
    weight, report = to_params4bit(q)
    out = bnb.nn.Linear4bit(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=q.double_quant,
        quant_type="nf4",
        device=q.device,
    )
    weight.module = out
    out.weight = weight
    if layer.bias is not None:
        out.bias = torch.nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    return out, report
