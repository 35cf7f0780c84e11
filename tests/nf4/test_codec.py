"""NF4 quantization against bitsandbytes (a test-only reference) and against its own promises.

bitsandbytes' quantize_4bit defaults to FP4: every call here passes quant_type explicitly.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minituner.nf4.backends import torch_ops as nf4_torch
from minituner.nf4.codec import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DOUBLE_QUANT,
    DQ_MAPS,
    FP4_CODEBOOK,
    INT4_CODEBOOK,
    NF4_CODEBOOK,
    NF4Tensor,
    dequantize_4bit,
    dequantize_nf4,
    dynamic_map_8bit,
    nf4_codebook_from_normal,
    quantize_4bit,
    quantize_nf4,
)
from minituner.nf4.compare import (
    quantization_error_report,
    quantization_errors,
    quantize_fp4,
    quantize_int4_absmax,
)
from minituner.nf4.linear import NF4Linear, quantize_model_nf4
from minituner.nf4.storage import (
    bits_per_param,
    nf4_model_bytes,
    nf4_numel_bytes,
    nf4_storage_bytes,
)

try:
    import bitsandbytes.functional as bnbF
except Exception:  # pragma: no cover - the reference is optional where it cannot install
    bnbF = None

needs_bnb = pytest.mark.skipif(bnbF is None, reason="bitsandbytes is not installed")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NF4 = torch.tensor(NF4_CODEBOOK)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


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


# ---------------------------------------------------------------------------- codebook


def test_computed_codebook_equals_published_table():
    computed = nf4_codebook_from_normal()
    assert computed.shape == (16,)
    torch.testing.assert_close(computed, NF4, rtol=0, atol=1e-6)
    assert computed[7] == 0 and computed[0] == -1 and computed[-1] == 1
    assert (computed > 0).sum() == 8 and (computed < 0).sum() == 7
    assert torch.all(computed[1:] > computed[:-1])


@needs_bnb
def test_codebook_equals_bitsandbytes_table():
    theirs = bnbF.get_4bit_type("nf4", device="cpu")
    torch.testing.assert_close(NF4, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(nf4_codebook_from_normal(), theirs, rtol=0, atol=1e-6)
    pytest.importorskip("scipy")  # bitsandbytes' own construction needs scipy
    normal_map = bnbF.create_normal_map()  # 256 entries: the 15 non-zero values and zeros
    built = torch.cat([normal_map[normal_map != 0], torch.zeros(1)]).sort().values
    torch.testing.assert_close(nf4_codebook_from_normal(), built, rtol=0, atol=1e-6)


@needs_bnb
def test_fp4_and_dynamic_maps_equal_bitsandbytes():
    torch.testing.assert_close(
        torch.tensor(FP4_CODEBOOK), bnbF.get_4bit_type("fp4", device="cpu"), rtol=0, atol=0
    )
    assert torch.equal(dynamic_map_8bit(), bnbF.create_dynamic_map())


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
    w = _randn(*shape, seed=sum(shape), dtype=dtype) * 3
    q = quantize_nf4(w)
    packed, state = _bnb_nf4(w)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == -(-w.numel() // 2)
    assert q.shape == w.shape and q.dtype == dtype and q.numel == w.numel()
    assert torch.equal(q.absmax, state.absmax)
    _assert_codes_match(w, q, packed, state.absmax)


@needs_bnb
def test_codes_equal_bitsandbytes_on_a_large_matrix():
    w = _randn(4096, 4096, seed=1)
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
    w = _randn(*shape, seed=7)
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
    w = _randn(96, 64, seed=3)
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
    normal = quantize_nf4(_randn(512, 512), double_quant=True)
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
    assert torch.all((a_dq - a).abs() <= scale / 2 * 0.0157 + 1e-6 * a.abs().max() + 1e-30)
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
    w = _randn(*shape, seed=len(shape), dtype=dtype)
    q = quantize_nf4(w, block_size, double_quant)
    assert q.double_quant == double_quant
    out = dequantize_nf4(q, dtype)
    assert out.shape == w.shape and out.dtype == dtype
    assert nf4_storage_bytes(q) == nf4_numel_bytes(w.numel(), block_size, double_quant)
    expected = nf4_model_bytes([shape], block_size, double_quant)
    assert expected["nf4"] == nf4_storage_bytes(q)
    assert expected["fp32"] == 4 * w.numel() and expected["bf16"] == 2 * w.numel()


@pytest.mark.parametrize("block_size", [2, 6, 64])
def test_chunked_half_precision_dequantize_equals_one_pass(monkeypatch, block_size):
    w = _randn(37, 29)
    q = quantize_nf4(w, block_size)
    full = dequantize_nf4(q)  # float32 output is built in one pass
    monkeypatch.setattr(nf4_torch, "_CPU_CHUNK", 100)  # force many chunks
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(dequantize_nf4(q, dtype), full.to(dtype))


def test_all_zero_and_constant_blocks():
    w = torch.zeros(130)
    w[64:128] = -2.5
    for dq in (False, True):
        out = dequantize_nf4(quantize_nf4(w, double_quant=dq))
        torch.testing.assert_close(out, w, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- bit accounting


def test_bits_per_param():
    assert bits_per_param() == 4.5
    assert bits_per_param(double_quant=True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert round(bits_per_param(double_quant=True), 3) == 4.127
    assert bits_per_param(128) == 4.25


def test_model_bytes_for_a_list_of_shapes():
    shapes = [(4096, 4096), (11008, 4096), (4096,)]
    n = sum(math.prod(s) for s in shapes)
    plain = nf4_model_bytes(shapes, double_quant=False)
    assert plain["n_params"] == n and plain["fp32"] == 4 * n and plain["bf16"] == 2 * n
    assert plain["nf4_bits_per_param"] == pytest.approx(4.5, abs=1e-6)
    dq = nf4_model_bytes(shapes, double_quant=True)
    assert dq["nf4_bits_per_param"] == pytest.approx(bits_per_param(double_quant=True), abs=1e-4)
    assert nf4_model_bytes([])["nf4"] == 0


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
    w = _randn(n).to(dtype)
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


def test_an_inconsistent_nf4tensor_cannot_be_made():
    """Every path that reads an NF4Tensor (C loop, Triton, PyTorch) trusts its fields."""
    q = quantize_nf4(torch.ones(128))
    dq = quantize_nf4(torch.ones(128), double_quant=True)
    with pytest.raises(ValueError, match="inconsistent.*code bytes"):
        replace(q, codes=q.codes[:10])
    with pytest.raises(ValueError, match="inconsistent.*code bytes"):
        replace(q, codes=q.codes.to(torch.int8))
    with pytest.raises(ValueError, match="inconsistent.*3 absmax values"):
        replace(q, absmax=torch.ones(3))
    with pytest.raises(ValueError, match="inconsistent.*float32 absmax codes"):
        replace(dq, absmax=q.absmax)
    with pytest.raises(ValueError, match="inconsistent.*uint8 absmax without"):
        replace(q, absmax=dq.absmax)
    with pytest.raises(ValueError, match="inconsistent.*3 double-quantization scales"):
        replace(dq, absmax_scale=torch.ones(3))
    with pytest.raises(ValueError, match="inconsistent.*part of the double"):
        replace(dq, absmax_map=None)
    with pytest.raises(ValueError, match="block_size"):
        replace(q, block_size=7)
    with pytest.raises(ValueError, match="quant_type"):
        replace(q, quant_type="nf3")
    with pytest.raises(ValueError, match="inconsistent.*code bytes"):
        replace(q, shape=(129,))  # the shape decides numel
    for t in (q, dq):
        z = NF4Tensor.zeros(t.shape, t.dtype, t.block_size, t.double_quant)
        assert {k: v.shape for k, v in z.tensors().items()} == {
            k: v.shape for k, v in t.tensors().items()
        }


# ---------------------------------------------------------------------------- NF4Linear


@SETTINGS
@given(
    in_f=st.integers(1, 48),
    out_f=st.integers(1, 48),
    batch=st.lists(st.integers(1, 4), max_size=2),
    bias=st.booleans(),
    double_quant=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_nf4linear_forward_is_linear_with_the_dequantized_weight(
    in_f, out_f, batch, bias, double_quant, dtype
):
    torch.manual_seed(in_f * 100 + out_f)
    lin = nn.Linear(in_f, out_f, bias=bias)
    m = NF4Linear.from_linear(lin, block_size=64, double_quant=double_quant)
    x = torch.randn(*batch, in_f).to(dtype)
    w = m.dequantize_weight(dtype)
    assert w.shape == (out_f, in_f) and w.dtype == dtype
    expected = F.linear(x, w, None if lin.bias is None else lin.bias.to(dtype))
    assert torch.equal(m(x), expected)
    ref = dequantize_nf4(quantize_nf4(lin.weight, 64, double_quant))
    assert torch.equal(m.dequantize_weight(), ref)


def test_nf4linear_is_frozen_and_keeps_the_bias():
    lin = nn.Linear(96, 40)
    m = NF4Linear.from_linear(lin, double_quant=True)
    assert (m.in_features, m.out_features) == (96, 40)
    assert not any(p.requires_grad for p in m.parameters())
    assert torch.equal(m.bias, lin.bias) and m.bias.dtype == torch.float32
    assert {n for n, _ in m.named_buffers()} >= {"weight_codes", "weight_absmax"}
    x = torch.randn(3, 96, requires_grad=True)
    m(x).sum().backward()  # gradients reach the input (LoRA and earlier layers need it)
    assert x.grad is not None and x.grad.abs().sum() > 0
    err = (m.dequantize_weight() - lin.weight).abs().max()
    assert err <= 0.16 * lin.weight.abs().max()
    assert m.storage_bytes() == nf4_numel_bytes(96 * 40, 64, True)


def test_nf4linear_dtype_casts_keep_float32_scales():
    m = NF4Linear.from_linear(nn.Linear(64, 64), double_quant=True)
    before = m.dequantize_weight()
    m.to(torch.bfloat16)
    assert m.weight_absmax_scale.dtype == torch.float32
    assert m.weight_absmax_offset.dtype == torch.float32
    assert m.bias.dtype == torch.bfloat16 and m.weight_dtype == torch.bfloat16
    assert torch.equal(m.dequantize_weight(torch.float32), before)
    m.float()
    assert m.dequantize_weight().dtype == torch.float32
    plain = NF4Linear.from_linear(nn.Linear(64, 8), double_quant=False).half()
    assert plain.weight_absmax.dtype == torch.float32


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_nf4linear_state_dict_round_trips_through_safetensors(tmp_path, double_quant, bias):
    from safetensors.torch import load_file, save_file

    lin = nn.Linear(70, 30, bias=bias)
    m = NF4Linear.from_linear(lin, block_size=64, double_quant=double_quant)
    path = tmp_path / "nf4.safetensors"
    save_file(m.state_dict(), str(path))
    fresh = NF4Linear(70, 30, bias=bias, block_size=64, double_quant=double_quant)
    fresh.load_state_dict(load_file(str(path)))
    assert torch.equal(fresh.dequantize_weight(), m.dequantize_weight())
    x = torch.randn(5, 70)
    assert torch.equal(fresh(x), m(x))


def test_nf4linear_holds_one_nf4tensor_and_forward_makes_none(monkeypatch):
    lin = nn.Linear(70, 30)
    m = NF4Linear.from_linear(lin, double_quant=True)
    q = m.quantized_weight
    assert isinstance(q, NF4Tensor) and q.shape == (30, 70)
    assert torch.equal(m.dequantize_weight(), dequantize_nf4(quantize_nf4(lin.weight, 64, True)))
    buffers = dict(m.named_buffers())
    assert all(buffers[f"weight_{k}"] is t for k, t in q.tensors().items())  # no copies
    made = []
    init = NF4Tensor.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(NF4Tensor, "__init__", counting_init)
    x = torch.randn(4, 70)
    y = m(x)
    m.dequantize_weight()
    assert made == [] and m.quantized_weight is q  # nothing re-packed per call
    assert torch.equal(y, F.linear(x, dequantize_nf4(q), lin.bias))


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4linear_weight_follows_its_buffers(double_quant):
    """Moves, casts, loads (in place or assigned) and assignments keep the NF4Tensor and
    the buffers the same tensors."""

    def same(m):
        q, buffers = m.quantized_weight, dict(m.named_buffers())
        assert buffers.keys() == {f"weight_{k}" for k in q.tensors()}
        return all(buffers[f"weight_{k}"] is t for k, t in q.tensors().items())

    src = NF4Linear.from_linear(nn.Linear(70, 30), double_quant=double_quant)
    x = torch.randn(3, 70)
    want = src(x)
    m = NF4Linear(70, 30, double_quant=double_quant)
    m.load_state_dict(src.state_dict())
    assert same(m) and torch.equal(m(x), want)
    m = NF4Linear(70, 30, double_quant=double_quant)
    m.load_state_dict(src.state_dict(), assign=True)
    assert same(m) and torch.equal(m(x), want)
    m.to(torch.bfloat16)
    assert same(m) and m.quantized_weight.dtype == torch.bfloat16
    assert torch.equal(m(x.bfloat16()), F.linear(x.bfloat16(), src.dequantize_weight(
        torch.bfloat16), src.bias.bfloat16()))  # fmt: skip
    m.weight_codes = src.weight_codes.clone()
    assert same(m)
    with pytest.raises(ValueError, match="inconsistent"):
        m.weight_codes = src.weight_codes[:-1]
    with pytest.raises(ValueError, match="shape"):
        m.quantized_weight = quantize_nf4(torch.randn(30, 71))


def test_layers_and_the_codec_share_one_default():
    w = nn.Linear(70, 30)
    q = quantize_nf4(w.weight)
    assert (q.block_size, q.double_quant) == (DEFAULT_BLOCK_SIZE, DEFAULT_DOUBLE_QUANT)
    for m in (NF4Linear(70, 30), NF4Linear.from_linear(w)):
        assert (m.block_size, m.double_quant) == (DEFAULT_BLOCK_SIZE, DEFAULT_DOUBLE_QUANT)
    model = nn.Sequential(nn.Linear(8, 8))
    quantize_model_nf4(model)
    assert model[0].double_quant == DEFAULT_DOUBLE_QUANT
    n = 96 * 40
    assert (
        nf4_model_bytes([(96, 40)])["nf4"]
        == nf4_numel_bytes(n)
        == nf4_storage_bytes(quantize_nf4(torch.randn(96, 40)))
    )
    assert bits_per_param() == bits_per_param(DEFAULT_BLOCK_SIZE, DEFAULT_DOUBLE_QUANT)


# ---------------------------------------------------------------------------- whole models


def test_quantize_minigpt_replaces_block_linears_only():
    from minituner.minigpt.model import GPTConfig, MiniGPT

    torch.manual_seed(0)
    model = MiniGPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(0, 40, (2, 16))
    before = model(idx)
    names = quantize_model_nf4(model)
    suffixes = [
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "mlp.fc_in",
        "mlp.fc_out",
    ]
    assert sorted(names) == sorted(f"blocks.{i}.{s}" for i in range(2) for s in suffixes)
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.tok_emb.weight  # the tie survives
    assert all(isinstance(model.get_submodule(n), NF4Linear) for n in names)
    after = model(idx)
    assert after.shape == before.shape
    assert (after - before).norm() / before.norm() < 0.2


def test_quantize_model_generic_filter_and_ties():
    emb = nn.Embedding(10, 8)
    head = nn.Linear(8, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict(
        {"emb": emb, "a": nn.Linear(8, 8), "b": nn.Sequential(nn.Linear(8, 8)), "head": head}
    )
    assert sorted(quantize_model_nf4(model)) == ["a", "b.0"]  # the tied head stays
    assert isinstance(model["head"], nn.Linear)
    model2 = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    assert quantize_model_nf4(model2, module_filter=lambda name, m: m.out_features == 4) == ["2"]
    assert isinstance(model2[0], nn.Linear) and isinstance(model2[2], NF4Linear)


# ---------------------------------------------------------------------------- error analysis


def test_error_report_rows_and_ordering_on_gaussian_weights():
    weights = {"q": _randn(128, 128, seed=1) * 0.02, "fc": _randn(64, 256, seed=2) * 0.02}
    rows = quantization_error_report(weights)
    assert [(r["layer"], r["method"]) for r in rows] == [
        (n, m) for n in ("q", "fc") for m in ("nf4", "int4", "fp4")
    ]
    for r in rows:
        assert 0 < r["mean_abs"] <= r["rmse"] <= r["max_abs"]
        assert r["numel"] == weights[r["layer"]].numel()
    for name in weights:
        by = {r["method"]: r["rmse"] for r in rows if r["layer"] == name}
        assert by["nf4"] < by["int4"] and by["nf4"] < by["fp4"]  # NF4 fits normal data


def test_quantization_errors_are_per_element():
    w = _randn(33, 17)
    for method in ("nf4", "nf4_dq", "int4", "fp4"):
        err = quantization_errors(w, method)
        assert err.shape == (w.numel(),) and err.dtype == torch.float32
    torch.testing.assert_close(
        quantization_errors(w, "nf4"), (dequantize_nf4(quantize_nf4(w)) - w).reshape(-1)
    )
    with pytest.raises(ValueError, match="unknown method"):
        quantization_errors(w, "nf3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    w = _randn(300, 70)
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
