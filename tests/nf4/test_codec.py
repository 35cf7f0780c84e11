"""NF4 quantization (minituner.nf4.codec) against bitsandbytes (a test-only reference) and
against its own promises.

bitsandbytes' quantize_4bit defaults to FP4: every call here passes quant_type explicitly.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from nf4_util import NF4, SETTINGS, bnbF, needs_bnb, randn

from minituner.nf4.codec import dequantize_4bit, dequantize_nf4, quantize_4bit, quantize_nf4
from minituner.nf4.compare import (
    quantize_fp4,
    quantize_int4_absmax,
)
from minituner.nf4.format import (
    DQ_MAPS,
    FP4_CODEBOOK,
    INT4_CODEBOOK,
    NF4_CODEBOOK,
    NF4Tensor,
)
from minituner.nf4.linear import NF4Linear
from minituner.nf4.storage import (
    bits_per_param,
    nf4_model_bytes,
    nf4_numel_bytes,
    nf4_storage_bytes,
)


def _student_t3(*shape, seed=0):
    """Heavy-tailed data (Student's t, 3 degrees of freedom)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g)
    chi2 = torch.randn(3, *shape, generator=g).square().sum(0)
    return z / (chi2 / 3).sqrt()


def _codes(q: NF4Tensor) -> torch.Tensor:
    """The 4-bit code of every element, int64 (numel,), read from the packed bytes."""
    return torch.stack([q.codes >> 4, q.codes & 15], dim=1).view(-1)[: q.numel].long()


def _bnb_nf4(w, **kw):
    return bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", **kw)


# ---------------------------------------------------------------------------- vs bitsandbytes


def _assert_codes_match(w, ours: NF4Tensor, theirs_packed, absmax, boundary_tol=None):
    """Codes equal, or (boundary_tol given) differ only next to a decision midpoint.

    bitsandbytes may round an element that sits within float error of the midpoint
    between two codebook values to the other neighbour; allow exactly that.
    """
    theirs = NF4Tensor(theirs_packed.reshape(-1), absmax, w.shape, w.dtype, block_size=64)
    a, b = _codes(ours), _codes(theirs)
    bad = (a != b).nonzero().view(-1)
    if boundary_tol is None or bad.numel() == 0:
        assert bad.numel() == 0, f"{bad.numel()} codes differ"
        assert torch.equal(ours.codes, theirs_packed.reshape(-1))
        return
    assert bad.numel() <= 16, f"{bad.numel()} codes differ"
    assert torch.all((a[bad] - b[bad]).abs() == 1), "a mismatch that is not a neighbour"
    scaled = w.reshape(-1).float()[bad] / absmax[bad // 64]
    mid = (NF4[a[bad]] + NF4[b[bad]]) / 2
    assert torch.all((scaled - mid).abs() <= boundary_tol), (scaled - mid).abs().max()


@needs_bnb
@pytest.mark.parametrize(
    "shape", [(64,), (4096,), (33, 17), (128, 96), (3, 5, 7), (1,), (2, 1000, 3)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_codes_and_absmax_equal_bitsandbytes(shape, dtype):
    w = randn(*shape, seed=sum(shape), dtype=dtype) * 3
    q = quantize_nf4(w)
    packed, state = _bnb_nf4(w)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == -(-w.numel() // 2)
    assert q.shape == w.shape and q.dtype == dtype and q.numel == w.numel()
    assert torch.equal(q.absmax, state.absmax)
    _assert_codes_match(w, q, packed, state.absmax)


@needs_bnb
def test_codes_equal_bitsandbytes_on_a_large_matrix():
    w = randn(4096, 4096, seed=1)
    q = quantize_nf4(w)
    packed, state = _bnb_nf4(w)
    assert torch.equal(q.absmax, state.absmax)
    _assert_codes_match(w, q, packed, state.absmax, boundary_tol=1e-6)


def test_first_element_is_in_the_high_nibble():
    # values at exact codebook points: codes 15, 0, 7, 8 -> bytes 0xF0, 0x78
    w = torch.tensor([1.0, -1.0, 0.0, NF4_CODEBOOK[8]])
    q = quantize_nf4(w, block_size=4)
    assert q.codes.tolist() == [0xF0, 0x78]
    assert _codes(q).tolist() == [15, 0, 7, 8]
    odd = quantize_nf4(torch.tensor([1.0, -1.0, 0.5]), block_size=4)
    assert odd.codes.numel() == 2 and odd.codes[1] & 0xF == 7  # padding codes a zero


@needs_bnb
@pytest.mark.parametrize("shape", [(64,), (33, 18), (128, 96), (4, 32), (2, 1000, 3)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_equals_bitsandbytes(shape, out_dtype):
    w = randn(*shape, seed=7)
    # bitsandbytes' CPU dequant kernel mis-reads blocks that straddle rows (last dim not a
    # multiple of the block, e.g. (128, 96)), so give it the flat tensor: same codes.
    packed, state = _bnb_nf4(w.reshape(-1))
    state.dtype = out_dtype
    theirs = bnbF.dequantize_4bit(packed, state).reshape(shape)
    ours = dequantize_nf4(quantize_nf4(w), out_dtype)
    assert ours.shape == shape and ours.dtype == out_dtype
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@needs_bnb
def test_fp4_dequantized_values_equal_bitsandbytes():
    w = randn(96, 64, seed=3)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="fp4")
    torch.testing.assert_close(
        dequantize_4bit(quantize_fp4(w)), bnbF.dequantize_4bit(packed, state)
    )


@needs_bnb
@pytest.mark.parametrize(
    "kind", ["normal", "small_std", "heavy_tailed", "row_scales", "few_blocks"]
)
def test_double_quant_absmax_error_not_above_bitsandbytes(kind):
    g = torch.Generator().manual_seed(5)
    w = {
        "normal": lambda: torch.randn(1024, 1024, generator=g),
        "small_std": lambda: torch.randn(256, 1024, generator=g) * 0.02,
        "heavy_tailed": lambda: _student_t3(1024, 512, seed=5),
        "row_scales": lambda: (
            torch.randn(512, 512, generator=g) * torch.logspace(-3, 1, 512)[:, None]
        ),
        "few_blocks": lambda: torch.randn(300, generator=g),
    }[kind]()
    exact = quantize_nf4(w).absmax
    ours = quantize_nf4(w, double_quant=True).absmax_float() - exact
    packed, state = _bnb_nf4(w, compress_statistics=True)
    theirs = bnbF.dequantize_blockwise(state.absmax, state.state2) + state.offset - exact
    rmse = lambda e: e.double().square().mean().sqrt().item()  # noqa: E731
    assert rmse(ours) <= rmse(theirs) * (1 + 1e-6) + 1e-12
    if kind != "heavy_tailed":  # where the dynamic map is chosen the two are level
        assert ours.abs().max() <= theirs.abs().max()


def test_double_quant_picks_the_grid_that_fits():
    normal = quantize_nf4(randn(512, 512), double_quant=True)
    heavy = quantize_nf4(_student_t3(512, 512), double_quant=True)
    assert DQ_MAPS[int(normal.absmax_map)] == "int8"
    assert DQ_MAPS[int(heavy.absmax_map)] == "dynamic"
    for q in (normal, heavy):
        assert q.absmax.dtype == torch.uint8 and q.absmax_scale.numel() == -(-q.n_blocks // 256)
        assert torch.all(q.absmax_float() >= 0)


# ---------------------------------------------------------------------------- error bounds

finite_values = st.lists(
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
    min_size=1,
    max_size=300,
)


@SETTINGS
@given(
    values=finite_values,
    exponent=st.integers(-20, 20),
    block_size=st.sampled_from([2, 4, 6, 64, 128]),
    method=st.sampled_from(["nf4", "int4", "fp4"]),
)
def test_every_element_rounds_to_a_nearest_codebook_value(values, exponent, block_size, method):
    w = torch.tensor(values, dtype=torch.float32) * 10.0**exponent
    quant = {"nf4": quantize_nf4, "int4": quantize_int4_absmax, "fp4": quantize_fp4}[method]
    book = torch.tensor({"nf4": NF4_CODEBOOK, "int4": INT4_CODEBOOK, "fp4": FP4_CODEBOOK}[method])
    q = quant(w, block_size)
    absmax = q.absmax[torch.arange(w.numel()) // block_size]
    err = (dequantize_4bit(q) - w).abs()
    sorted_book = book.sort().values
    half_gap = (sorted_book[1:] - sorted_book[:-1]).max() / 2
    slack = 1e-6 * absmax + 1e-30
    assert torch.all(err <= half_gap * absmax + slack)
    # and no other codebook value would have been closer
    best = (w[:, None] - book[None, :] * absmax[:, None]).abs().min(dim=1).values
    assert torch.all(err <= best + slack)


@SETTINGS
@given(values=finite_values, exponent=st.integers(-15, 15))
def test_double_quant_error_is_bounded(values, exponent):
    w = torch.tensor(values, dtype=torch.float32) * 10.0**exponent
    exact = quantize_nf4(w, block_size=4)
    dq = quantize_nf4(w, block_size=4, double_quant=True)
    assert torch.equal(_codes(dq), _codes(exact))  # only the scales change
    blocks = torch.arange(w.numel()) // 4
    a, a_dq = exact.absmax[blocks], dq.absmax_float()[blocks]
    scale = dq.absmax_scale.max()
    half, tol = scale / 2 * 0.0157, 1e-6 * a.abs().max() + 1e-30  # half the widest grid step
    # the nearest code, or (codec._never_negative) the next one up where the nearest
    # decoded below 0: only a true absmax within half a step of 0 can be moved that way
    moved = a <= half + tol
    off = (a_dq - a).abs()
    assert torch.all(torch.where(moved, off <= 2 * half + tol, off <= half + tol))
    assert torch.all(a_dq >= 0)
    err = (dequantize_nf4(dq) - w).abs()
    assert torch.all(err <= 0.1520 * a + (a_dq - a).abs() + 1e-6 * a + 1e-30)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    block_size=st.sampled_from([2, 8, 64]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    double_quant=st.booleans(),
)
def test_round_trip_keeps_shape_and_dtype(shape, block_size, dtype, double_quant):
    w = randn(*shape, seed=len(shape), dtype=dtype)
    q = quantize_nf4(w, block_size, double_quant)
    assert q.double_quant == double_quant
    out = dequantize_nf4(q, dtype)
    assert out.shape == w.shape and out.dtype == dtype
    assert nf4_storage_bytes(q) == nf4_numel_bytes(w.numel(), block_size, double_quant)
    expected = nf4_model_bytes([shape], block_size, double_quant)
    assert expected["nf4"] == nf4_storage_bytes(q)
    assert expected["fp32"] == 4 * w.numel() and expected["bf16"] == 2 * w.numel()


def test_all_zero_and_constant_blocks():
    w = torch.zeros(130)
    w[64:128] = -2.5
    for dq in (False, True):
        out = dequantize_nf4(quantize_nf4(w, double_quant=dq))
        torch.testing.assert_close(out, w, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "w",
    [
        torch.arange(64),
        torch.ones(64, dtype=torch.bool),
        torch.ones(64, dtype=torch.uint8),
        torch.ones(8, dtype=torch.complex64),
        torch.empty(0),
    ],
)
def test_rejects_non_float_or_empty(w):
    with pytest.raises(ValueError):
        quantize_nf4(w)


@SETTINGS
@given(
    n=st.integers(1, 200),
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    data=st.data(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_rejects_nan_and_inf_anywhere(n, bad, data, dtype):
    w = randn(n).to(dtype)
    w[data.draw(st.integers(0, n - 1))] = bad
    for fn in (quantize_nf4, quantize_int4_absmax, quantize_fp4):
        with pytest.raises(ValueError, match="NaN or inf"):
            fn(w)


@SETTINGS
@given(block_size=st.one_of(st.integers(-1000, 1000).filter(lambda b: b <= 0 or b % 2),
                            st.sampled_from([64.0, True, "64", None])))  # fmt: skip
def test_rejects_bad_block_sizes(block_size):
    with pytest.raises(ValueError, match="block_size"):
        quantize_nf4(torch.ones(64), block_size=block_size)
    with pytest.raises(ValueError, match="block_size"):
        bits_per_param(block_size)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.bool])
def test_rejects_unsupported_dequantize_dtype(dtype):
    with pytest.raises(ValueError, match="dequantize"):
        dequantize_nf4(quantize_nf4(torch.ones(64)), dtype)


def test_rejects_the_wrong_format():
    for q in (quantize_fp4(torch.ones(64)), quantize_int4_absmax(torch.ones(64))):
        with pytest.raises(ValueError, match="expected an nf4 tensor"):
            dequantize_nf4(q)
    with pytest.raises(TypeError, match="NF4Tensor"):
        dequantize_4bit(torch.ones(4))
    with pytest.raises(ValueError, match="quant_type"):
        quantize_4bit(torch.ones(64), "nf3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    w = randn(300, 70)
    for dq in (False, True):
        cpu = quantize_nf4(w, double_quant=dq)
        gpu = quantize_nf4(w.cuda(), double_quant=dq)
        assert torch.equal(gpu.codes.cpu(), cpu.codes)
        if dq:  # a reduction may round differently on the GPU: allow one absmax code step
            step = cpu.absmax_scale.max() / 64
            torch.testing.assert_close(
                gpu.absmax_float().cpu(), cpu.absmax_float(), rtol=0, atol=step
            )
        for dtype in (torch.float32, torch.bfloat16):
            ours, ref = dequantize_nf4(gpu, dtype).cpu(), dequantize_nf4(cpu, dtype)
            if dq:
                torch.testing.assert_close(ours.float(), ref.float(), rtol=0.01, atol=step)
            else:
                assert torch.equal(ours, ref)
        fp4 = quantize_fp4(w)
        assert torch.equal(dequantize_4bit(fp4.to("cuda")).cpu(), dequantize_4bit(fp4))
    m = NF4Linear.from_linear(nn.Linear(70, 30)).cuda()
    assert m.weight_codes.is_cuda and m(torch.randn(2, 70, device="cuda")).is_cuda
    assert m.quantized_weight.codes is m.weight_codes


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ],
)
@pytest.mark.parametrize("double_quant", [False, True])
def test_dequantize_into_out_writes_those_rows_only(device, double_quant):
    """``out=``: the values land in the given rows of a larger buffer (how a q, k, v group
    builds its one weight), bit-equal to a fresh dequantize; the other rows stay."""
    q = quantize_nf4(randn(96, 64).to(device), double_quant=double_quant)
    for dtype in (torch.float32, torch.bfloat16):
        buf = torch.full((200, 64), 7.0, dtype=dtype, device=device)
        got = dequantize_nf4(q, dtype, out=buf[40:136])
        assert got.data_ptr() == buf[40].data_ptr() and got.shape == (96, 64)
        assert torch.equal(buf[40:136], dequantize_nf4(q, dtype))
        assert torch.all(buf[:40] == 7) and torch.all(buf[136:] == 7)
        for bad in (buf[40:135], buf[40:136, :32], buf.to(torch.float16)[40:136]):
            with pytest.raises(ValueError, match="out must be"):
                dequantize_nf4(q, dtype, out=bad)


def test_the_codec_keeps_one_prepared_launch_per_tensor_and_dtype(monkeypatch):
    """codec._launcher (the CUDA path's prepared Triton launch), with a stand-in launcher:
    made once per tensor and dtype and then reused, not made under the interpreter or
    where the launch would read a copy (a bfloat16 absmax), the torch switch bypasses it,
    and an entry leaves with its tensor. The real launcher's GPU test is in
    tests/nf4/backends/test_triton.py."""
    import gc

    from minituner.nf4 import codec
    from minituner.nf4.backends import fused_wanted, triton_dequant

    made = []

    class FakeLauncher:
        def __init__(self, codes, absmax, codebook, numel, block_size, dtype, **dq):
            made.append((codes, absmax, dtype, dq.get("dq_scale"), dq.get("rows_of")))
            self.calls, self.shape = [], dq.get("shape") or (numel,)

        def __call__(self, out=None):  # a new output in the shape it was told, as the real one
            self.calls.append(out)
            return torch.full(self.shape, 7.0) if out is None else out.fill_(7.0)

    monkeypatch.setattr(triton_dequant, "available", lambda codes, dtype: True)
    monkeypatch.setattr(triton_dequant, "Launcher", FakeLauncher)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MINITUNER_NF4_KERNEL", raising=False)
    q = quantize_nf4(torch.randn(8, 16), 16, double_quant=True)
    assert torch.equal(dequantize_nf4(q), torch.full((8, 16), 7.0))
    assert torch.equal(dequantize_nf4(q), torch.full((8, 16), 7.0))
    assert len(made) == 1 and made[0][0] is q.codes and made[0][3] is q.absmax_scale
    launcher = codec._LAUNCHERS[id(q)][torch.float32, None]
    out = torch.zeros(8, 16)
    assert dequantize_nf4(q, out=out) is not None and torch.equal(out, torch.full((8, 16), 7.0))
    assert len(launcher.calls) == 3 and launcher.calls[2].data_ptr() == out.data_ptr()
    with pytest.raises(ValueError, match="cannot dequantize to torch.int8"):
        dequantize_nf4(q, torch.int8)  # a launcher kept for q: a bad dtype is still refused
    dequantize_nf4(q, torch.bfloat16)  # another dtype: another launcher
    assert [m[2] for m in made] == [torch.float32, torch.bfloat16]
    wide = torch.zeros(8, 24)  # rows 24 apart: another launcher, told the row layout
    assert dequantize_nf4(q, out=wide[:, :16]).data_ptr() == wide.data_ptr()
    assert torch.all(wide[:, :16] == 7.0) and torch.all(wide[:, 16:] == 0)
    assert made[-1][2:] == (torch.float32, q.absmax_scale, (16, 24))
    assert len(made) == 3
    made.pop()
    # the switch: the kept launcher does not run (available() follows it, as the real one)
    monkeypatch.setattr(triton_dequant, "available", lambda codes, dtype: fused_wanted())
    monkeypatch.setenv("MINITUNER_NF4_KERNEL", "torch")
    assert not torch.equal(dequantize_nf4(q), torch.full((8, 16), 7.0))
    assert len(launcher.calls) == 3
    monkeypatch.delenv("MINITUNER_NF4_KERNEL")
    key = id(q)
    del q, launcher
    gc.collect()
    assert key not in codec._LAUNCHERS  # the entry left with its tensor
    # a bfloat16 absmax would be read through a float32 copy made now: no launcher
    q16 = quantize_nf4(torch.randn(8, 16), 16)
    q16 = replace(q16, absmax=q16.absmax.to(torch.bfloat16))
    assert codec._launcher(q16, torch.float32) is None
    q32 = quantize_nf4(torch.randn(8, 16), 16)  # made first: quantize reads the switch too
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter takes the general path
    assert codec._launcher(q32, torch.float32) is None
    assert len(made) == 2
