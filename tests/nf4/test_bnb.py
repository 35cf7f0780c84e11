"""minituner.nf4.bnb against bitsandbytes itself (issue 26): codes, absmax and dequantized
values bit-equal both ways, with and without double quantization, on the CPU and (where
present) on a GPU; a re-quantized absmax (our int8 grid) is reported with its error;
``Linear4bit`` built from an ``NF4Linear`` gives its output within bf16 tolerance.

bitsandbytes' CPU dequantize mis-reads blocks that straddle rows (tests/nf4/test_codec.py),
so 2-D inputs here have a last dimension that is a multiple of the block size.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nf4_util import SETTINGS, bnbF, needs_bnb

from minituner.nf4.bnb import BnbExport, from_bnb, to_bnb, to_linear4bit, to_params4bit
from minituner.nf4.codec import dequantize_nf4, quantize_4bit, quantize_nf4
from minituner.nf4.format import DQ_MAPS
from minituner.nf4.linear import NF4Linear

pytestmark = needs_bnb
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DYNAMIC = DQ_MAPS.index("dynamic")


@st.composite
def weights(draw):
    """A weight bitsandbytes takes: 1-D of any length, or rows of whole blocks; normal or
    heavy-tailed (which makes double quantization pick the dynamic map), any scale."""
    block = draw(st.sampled_from([32, 64, 128, 256]))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 3000)),)
    else:
        shape = (draw(st.integers(1, 40)), block * draw(st.integers(1, 4)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = torch.randn(shape, generator=g)
    if draw(st.booleans()):  # Cauchy-like: a few huge values among small ones
        w = w / torch.randn(shape, generator=g).abs().clamp(min=1e-3)
    w = (w * draw(st.sampled_from([1e-3, 0.02, 1.0, 50.0]))).clamp(-1e4, 1e4)  # float16's range
    return w.to(draw(st.sampled_from(DTYPES))), block


def bnb_dequantize(packed, state):
    # bitsandbytes reads a (1, 1) packed tensor (two elements at most) as an old transposed
    # layout and transposes its output: give it back its shape
    return bnbF.dequantize_4bit(packed, state).reshape(state.shape)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(wb=weights(), double_quant=st.booleans())
def test_ours_to_bitsandbytes_is_bit_equal_or_reports_its_error(device, wb, double_quant):
    w, block = wb
    q = quantize_nf4(w.to(device), block_size=block, double_quant=double_quant)
    packed, state, report = to_bnb(q)
    assert torch.equal(packed.reshape(-1), q.codes)  # the same bytes
    assert packed.shape == (q.codes.numel(), 1) and state.quant_type == "nf4"
    theirs, ours = bnb_dequantize(packed, state), dequantize_nf4(q, q.dtype)
    assert theirs.shape == ours.shape and theirs.dtype == ours.dtype
    if not double_quant:
        assert torch.equal(state.absmax, q.absmax) and report == BnbExport(False, 0.0, 0.0, 0.0)
        assert torch.equal(theirs, ours)
    elif int(q.absmax_map) == DYNAMIC:  # bitsandbytes' own map: the nested state as is
        assert torch.equal(state.absmax, q.absmax)
        assert torch.equal(state.state2.absmax, q.absmax_scale)
        assert not report.requantized and torch.equal(theirs, ours)
    else:  # our int8 grid, re-quantized with bitsandbytes' map: the error is reported
        assert report.requantized
        measured = (theirs.float() - ours.float()).abs().max().item()
        assert measured == report.weight_max_error  # the figure reported is the real one
        if q.dtype == torch.float32:
            assert report.weight_max_error <= report.absmax_max_error


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(wb=weights(), double_quant=st.booleans())
def test_bitsandbytes_to_ours_is_bit_equal(device, wb, double_quant):
    w, block = wb
    packed, state = bnbF.quantize_4bit(
        w.to(device), blocksize=block, compress_statistics=double_quant, quant_type="nf4"
    )
    q = from_bnb(packed, state)
    assert torch.equal(q.codes, packed.reshape(-1)) and q.shape == w.shape and q.dtype == w.dtype
    if double_quant:
        assert torch.equal(q.absmax, state.absmax) and int(q.absmax_map) == DYNAMIC
        assert torch.equal(q.absmax_scale, state.state2.absmax)
    else:
        assert torch.equal(q.absmax, state.absmax)
    assert torch.equal(dequantize_nf4(q, q.dtype), bnb_dequantize(packed, state))
    # and back: the same state, nothing re-quantized
    packed2, state2, report = to_bnb(q)
    assert torch.equal(packed2, packed) and not report.requantized
    assert torch.equal(bnb_dequantize(packed2, state2), bnb_dequantize(packed, state))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_a_params4bit_round_trips_to_the_same_nf4_tensor(device, double_quant):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    w = w * torch.logspace(-4, 1, 64)[:, None]  # rows of very different scales
    q = quantize_nf4(w.to(device), double_quant=double_quant)
    assert not double_quant or int(q.absmax_map) == DYNAMIC  # such absmax pick the dynamic map
    param, report = to_params4bit(q)
    assert param.quant_state is not None and param.bnb_quantized and not param.requires_grad
    assert not report.requantized
    back = from_bnb(param)
    for key, t in q.tensors().items():
        assert torch.equal(getattr(back, key), t), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_linear4bit_from_ours_gives_nf4linear_s_output(device, double_quant, x_dtype):
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(256, 192)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(192, 256, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(192, generator=g) * 0.1)
    ours = NF4Linear.from_linear(lin, double_quant=double_quant).to(device)
    theirs, report = to_linear4bit(ours)
    theirs = theirs.to(device).eval()
    x = torch.randn(5, 256, generator=g).to(device, x_dtype)
    with torch.no_grad():
        want, got = ours(x), theirs(x)
    assert got.dtype == want.dtype == x_dtype
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1.6e-2)  # bf16's


def test_the_re_quantization_is_said_and_measured(caplog):
    q = quantize_nf4(
        torch.randn(512, 512, generator=torch.Generator().manual_seed(2)), double_quant=True
    )
    assert int(q.absmax_map) == DQ_MAPS.index("int8")  # near-normal weights pick the int8 grid
    with caplog.at_level(logging.WARNING, logger="minituner.nf4.bnb"):
        _, _, report = to_bnb(q)
    assert report.requantized and 0 < report.absmax_max_error < 0.05 * q.absmax_float().max()
    assert "re-quantized with bitsandbytes' dynamic map" in caplog.text
    assert f"{report.absmax_max_error:.3g}" in caplog.text


def test_what_bitsandbytes_cannot_hold_is_refused():
    w = torch.randn(96, 96)
    with pytest.raises(ValueError, match="block size 48"):
        to_bnb(quantize_nf4(w, block_size=48))
    with pytest.raises(ValueError, match="dtype torch.float64"):
        to_bnb(quantize_nf4(w.double()))
    with pytest.raises(ValueError, match="quant_type 'int4'"):
        to_bnb(quantize_4bit(w, "int4"))
    with pytest.raises(TypeError, match="NF4Tensor"):
        to_bnb(w)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    with pytest.raises(ValueError, match="no QuantState"):
        from_bnb(packed)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="fp4")
    with pytest.raises(ValueError, match="quant_type='fp4'"):
        from_bnb(packed, state)


def _negative_absmax_weight() -> tuple[torch.Tensor, int]:
    """Heavy-tailed rows at a tiny scale (found by the round-trip property above): two of
    the 96 blocks' absmax are so small next to the others that bitsandbytes' nearest
    dynamic-map code decodes them below zero."""
    g = torch.Generator().manual_seed(281)
    rows = int(torch.randint(1, 40, (1,), generator=g))
    w = torch.randn(rows, 64 * int(torch.randint(1, 5, (1,), generator=g)), generator=g)
    w = w / torch.randn(w.shape, generator=g).abs().clamp(min=1e-3)
    return (w * 1e-3).clamp(-1e4, 1e4), 64


def test_a_bitsandbytes_state_with_a_negative_absmax_reads_exactly():
    """bitsandbytes decodes absmax as grid * scale + offset with no floor, and its weights
    then carry the negative scale; minituner decodes the same way, so the import is exact
    (it used to clamp at 0 and zero those blocks)."""
    w, block = _negative_absmax_weight()
    packed, state = bnbF.quantize_4bit(
        w, blocksize=block, compress_statistics=True, quant_type="nf4"
    )
    q = from_bnb(packed, state)
    assert bool((q.absmax_float() < 0).any())  # the case this test is about
    assert torch.equal(dequantize_nf4(q, q.dtype), bnb_dequantize(packed, state))
    packed2, state2, report = to_bnb(q)
    assert not report.requantized and report.weight_max_error == 0.0


def test_our_double_quantization_never_decodes_a_negative_absmax():
    """The same weight quantized by minituner: the nearest code of those blocks would
    decode below 0; the chosen code is the next one up, and decodes to >= 0."""
    from minituner.nf4.format import DQ_BLOCK_SIZE, dq_tables

    w, block = _negative_absmax_weight()
    q = quantize_nf4(w, block_size=block, double_quant=True)
    decoded = q.absmax_float()
    assert bool((decoded >= 0).all())
    grid = dq_tables(q.absmax.device)[0][int(q.absmax_map)]
    below = torch.where(q.absmax > 0, q.absmax.long() - 1, q.absmax.long())
    scale = q.absmax_scale.repeat_interleave(DQ_BLOCK_SIZE)[: q.absmax.numel()]
    one_down = grid[below] * scale + q.absmax_offset
    assert bool((one_down < 0).any())  # a code one step down would have decoded below 0
    true_absmax = w.reshape(-1, block).abs().amax(1)
    step = (grid[1:] - grid[:-1]).max() * scale
    assert bool(((decoded - true_absmax).abs() <= step).all())
