"""A fused Triton kernel for blockwise 4-bit quantization on CUDA GPUs.

The PyTorch path (:func:`minituner.nf4.backends.torch_ops.quantize_packed`) takes about ten
passes over the weight (upcast, pad, min/max, scale, bucketize, reorder, slice, pack). This
kernel reads each input element once and writes each packed byte and each block's absmax
once, with the same float32 arithmetic as the PyTorch path, so the two agree bit for bit
(``tests/nf4/backends/test_triton.py``):

    absmax[b] = max(max(x_b), -min(x_b)) + 0.0        (NaN if the block holds NaN or inf)
    scaled    = x * (1 / max(absmax[b], floor))       (x / max(absmax[b], floor) in a
                                                       ragged last block, as bitsandbytes)
    code      = #{midpoints m : m < scaled}           (torch.bucketize: a tie goes down)
    byte      = code[2i] << 4 | code[2i + 1]          (first element in the high nibble)

where ``floor`` is the codec's (:data:`minituner.nf4.format.ABSMAX_FLOOR`, passed in).
The division is IEEE round-to-nearest (``div_rn``) and nothing is fused into a
multiply-add, as in PyTorch. One program quantizes ``ELEMS_PER_PROGRAM`` elements as a
(blocks, block_size) tile, so a block's absmax is one row reduction in registers.

Triton is optional: :func:`available` says whether this path can run, and
:mod:`minituner.nf4.codec` falls back to PyTorch ops otherwise (or when
``MINITUNER_NF4_KERNEL=torch`` asks for them).
"""

from __future__ import annotations

import torch

from minituner.nf4.backends import fused_wanted, tl, triton, triton_runs_on

ELEMS_PER_PROGRAM = 2048  # input elements each program quantizes (bench_nf4 --quant-configs)
NUM_WARPS = 4
_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available(flat: torch.Tensor, block_size: int) -> bool:
    """Whether :func:`quantize_packed` can run for ``flat`` with this block size.

    True for a float32, bfloat16 or float16 CUDA tensor (any device under the Triton
    interpreter, ``TRITON_INTERPRET=1``) and a power-of-two block size up to
    :data:`ELEMS_PER_PROGRAM`, with Triton importable, unless ``MINITUNER_NF4_KERNEL=torch``.
    """
    if triton is None or not fused_wanted() or flat.dtype not in _IN_DTYPES:
        return False
    if block_size < 2 or block_size & (block_size - 1) or block_size > ELEMS_PER_PROGRAM:
        return False
    return triton_runs_on(flat)


if triton is not None:

    @triton.jit
    def _max_nan(a, b):
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _min_nan(a, b):
        return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _quant_kernel(
        x_ptr,  # (n,) float32, bfloat16 or float16
        mids_ptr,  # float32 (N_MIDS,), midpoints of the sorted codebook
        order_ptr,  # uint8 (N_MIDS + 1,), sorted index -> stored code (REORDER)
        codes_ptr,  # uint8 (n_bytes,), out
        absmax_ptr,  # float32 (n_blocks,), out
        n,
        n_bytes,
        n_blocks,
        ragged_block,  # index of a partial last block, or -1
        BLOCK: tl.constexpr,  # quantization block size (a power of two)
        ROWS: tl.constexpr,  # blocks per program (a power of two)
        N_MIDS: tl.constexpr,
        REORDER: tl.constexpr,
        EVEN: tl.constexpr,  # every program full: no masks, no ragged block
        TINY: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,) block indices
        offs = rows[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]  # (ROWS, BLOCK)
        if EVEN:
            x = tl.load(x_ptr + offs).to(tl.float32)
        else:  # zeros past the end change no absmax; their codes are dropped or kept as
            x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)  # torch pads
        hi = tl.reduce(x, 1, _max_nan)  # (ROWS,)
        lo = tl.reduce(x, 1, _min_nan)
        absmax = tl.maximum(hi, -lo, propagate_nan=tl.PropagateNan.ALL) + 0.0  # +0.0, not -0.0
        safe = tl.maximum(absmax, tl.full((ROWS,), TINY, tl.float32))  # float32, as torch
        inv = tl.math.div_rn(tl.full((ROWS,), 1.0, tl.float32), safe)
        scaled = x * inv[:, None]  # (ROWS, BLOCK), in [-1, 1]
        if not EVEN:  # the ragged last block divides, as bitsandbytes does
            ragged = (rows == ragged_block)[:, None]
            scaled = tl.where(ragged, tl.math.div_rn(x, safe[:, None]), scaled)
        idx = tl.zeros((ROWS, BLOCK), dtype=tl.int32)
        for i in tl.static_range(N_MIDS):  # the count of midpoints below: bucketize
            idx += (scaled > tl.load(mids_ptr + i)).to(tl.int32)
        if REORDER:
            idx = tl.load(order_ptr + idx).to(tl.int32)
        first, second = tl.split(tl.reshape(idx, (ROWS, BLOCK // 2, 2)))
        packed = ((first << 4) | second).to(tl.uint8)  # (ROWS, BLOCK // 2)
        boffs = rows[:, None] * (BLOCK // 2) + tl.arange(0, BLOCK // 2)[None, :]
        if EVEN:
            tl.store(codes_ptr + boffs, packed)
            tl.store(absmax_ptr + rows, absmax)
        else:
            tl.store(codes_ptr + boffs, packed, mask=boffs < n_bytes)
            tl.store(absmax_ptr + rows, absmax, mask=rows < n_blocks)

    @triton.jit
    def _dq_kernel(
        absmax_ptr,  # float32 (nb,), the per-block absmax values
        offset_ptr,  # float32 (), their mean
        grids_ptr,  # float32 (N_GRIDS, 256), the 8-bit grids, sorted
        mids_ptr,  # float32 (N_GRIDS, 255), midpoints of each grid
        scale_ptr,  # float32 (n2,), out: max |absmax - offset| per DQ block
        codes_ptr,  # uint8 (N_GRIDS, n2 * DQ), out: the codes on each grid
        err_ptr,  # float32 (N_GRIDS, n2 * DQ), out: grid value * scale - centred value
        nb,
        n2,
        DQ: tl.constexpr,  # absmax values per scale (256)
        ROWS: tl.constexpr,  # DQ blocks per program
        N_GRIDS: tl.constexpr,
        TINY: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,) DQ block indices
        offs = rows[:, None] * DQ + tl.arange(0, DQ)[None, :]  # (ROWS, DQ)
        inside = offs < nb
        a = tl.load(absmax_ptr + offs, mask=inside, other=0.0)
        c = tl.where(inside, a - tl.load(offset_ptr), 0.0)  # centred, zero-padded as torch
        scale = tl.max(tl.abs(c), axis=1)  # (ROWS,)
        safe = tl.maximum(scale, tl.full((ROWS,), TINY, tl.float32))
        scaled = c * tl.math.div_rn(tl.full((ROWS,), 1.0, tl.float32), safe)[:, None]
        total = n2 * DQ
        for g in tl.static_range(N_GRIDS):
            pos = tl.zeros((ROWS, DQ), dtype=tl.int32)  # lower bound: #midpoints < scaled
            for k in tl.static_range(8):  # steps 128, 64, ..., 1 over the 255 midpoints
                m = tl.load(mids_ptr + g * 255 + pos + ((128 >> k) - 1))
                pos = tl.where(m < scaled, pos + (128 >> k), pos)
            value = tl.load(grids_ptr + g * 256 + pos)
            tl.store(codes_ptr + g * total + offs, pos.to(tl.uint8), mask=rows[:, None] < n2)
            tl.store(
                err_ptr + g * total + offs, value * scale[:, None] - c, mask=rows[:, None] < n2
            )
        tl.store(scale_ptr + rows, scale, mask=rows < n2)


def quantize_packed(
    flat: torch.Tensor,
    block_size: int,
    mids: torch.Tensor,
    order: torch.Tensor | None,
    floor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a flat tensor blockwise in one kernel: (codes, absmax).

    codes: uint8 (ceil(n / 2),), first element in the high nibble; absmax: float32
    (ceil(n / block_size),), NaN or inf for a block holding NaN or inf (the caller
    checks). ``mids`` are the float32 midpoints of the sorted codebook on ``flat``'s
    device, ``order`` the uint8 map sorted index -> stored code (None: the identity),
    ``floor`` the least absmax divided by.

    Raises:
        RuntimeError: the kernel cannot run here (see :func:`available`).
    """
    if not available(flat, block_size):
        raise RuntimeError(
            f"the fused quantize kernel cannot run on {flat.device} for {flat.dtype} "
            f"in blocks of {block_size}"
        )
    flat = flat.contiguous()
    n = flat.numel()
    n_blocks = -(-n // block_size)
    n_bytes = -(-n // 2)
    rows = max(1, ELEMS_PER_PROGRAM // block_size)
    codes = torch.empty(n_bytes, dtype=torch.uint8, device=flat.device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=flat.device)
    _quant_kernel[(triton.cdiv(n_blocks, rows),)](
        flat, mids, mids if order is None else order, codes, absmax,
        n, n_bytes, n_blocks, n_blocks - 1 if n % block_size else -1,
        BLOCK=block_size, ROWS=rows, N_MIDS=mids.numel(), REORDER=order is not None,
        EVEN=n % (rows * block_size) == 0, TINY=floor, num_warps=NUM_WARPS,
        enable_fp_fusion=False,  # no fused multiply-add: round as the PyTorch path does
    )  # fmt: skip
    return codes, absmax


def dq_available(absmax: torch.Tensor) -> bool:
    """Whether :func:`quantize_absmax` can run for these float32 absmax values."""
    if triton is None or not fused_wanted() or absmax.dtype != torch.float32:
        return False
    return triton_runs_on(absmax)


def quantize_absmax(
    absmax: torch.Tensor, grids: torch.Tensor, mids: torch.Tensor, dq_block: int, floor: float
) -> dict[str, torch.Tensor]:
    """Double quantization in one kernel plus a few reductions, with no host sync.

    The same fields and values as :func:`minituner.nf4.backends.torch_ops.quantize_absmax`:
    the kernel centres, scales and rounds every 256-value block to each grid and writes
    each grid's codes and errors; the squared errors are summed by the same torch ops as
    there, and the grid with the smallest sum (the first on a tie) is chosen on the device.
    ``grids`` is float32 (n_grids, 256), ``mids`` (n_grids, 255), both sorted; ``floor``
    the least scale divided by.

    Raises:
        RuntimeError: the kernel cannot run here (see :func:`dq_available`).
    """
    if not dq_available(absmax):
        raise RuntimeError(f"the double-quantization kernel cannot run on {absmax.device}")
    absmax = absmax.contiguous()
    nb = absmax.numel()
    n2 = -(-nb // dq_block)
    n_grids = grids.shape[0]
    offset = absmax.double().mean().float()  # as torch_ops.quantize_absmax
    scale = torch.empty(n2, dtype=torch.float32, device=absmax.device)
    codes = torch.empty(n_grids, n2 * dq_block, dtype=torch.uint8, device=absmax.device)
    err = torch.empty(n_grids, n2 * dq_block, dtype=torch.float32, device=absmax.device)
    rows = 4
    _dq_kernel[(triton.cdiv(n2, rows),)](
        absmax, offset, grids.contiguous(), mids.contiguous(), scale, codes, err, nb, n2,
        DQ=dq_block, ROWS=rows, N_GRIDS=n_grids, TINY=floor, num_warps=4,
        enable_fp_fusion=False,
    )  # fmt: skip
    best_sse = err[0, :nb].double().square().sum()  # the reference's ops, in its order
    best_codes = codes[0, :nb]
    best_map = torch.zeros((), dtype=torch.uint8, device=absmax.device)
    for g in range(1, n_grids):
        sse = err[g, :nb].double().square().sum()
        better = sse < best_sse
        best_sse = torch.where(better, sse, best_sse)
        best_codes = torch.where(better, codes[g, :nb], best_codes)
        best_map = torch.where(better, g, best_map).to(torch.uint8)
    return {
        "absmax": best_codes,
        "absmax_scale": scale,
        "absmax_offset": offset,
        "absmax_map": best_map,
    }
