"""The PyTorch-ops backend (minituner.nf4.backends.torch_ops): plain tensors in, the codec's
values out, and its chunked half-precision CPU dequantize."""

from __future__ import annotations

import pytest
import torch
from nf4_util import randn

from minituner.nf4.backends import torch_ops as nf4_torch
from minituner.nf4.codec import dequantize_nf4, quantize_nf4
from minituner.nf4.format import ABSMAX_FLOOR, DQ_BLOCK_SIZE, NF4_CODEBOOK, dq_tables


def test_ops_take_plain_tensors_and_give_the_codecs_values(monkeypatch):
    monkeypatch.setenv("MINITUNER_NF4_KERNEL", "torch")  # the codec runs this backend too
    w = randn(33, 17)
    book = torch.tensor(NF4_CODEBOOK)  # sorted: the stored code is the sorted index
    mids = (book[:-1] + book[1:]) / 2
    codes, absmax = nf4_torch.quantize_packed(w.reshape(-1), 64, mids, None, ABSMAX_FLOOR)
    plain = quantize_nf4(w, 64)
    assert torch.equal(codes, plain.codes) and torch.equal(absmax, plain.absmax)
    grids, grid_mids = dq_tables(absmax.device)
    fields = nf4_torch.quantize_absmax(absmax, grids, grid_mids, DQ_BLOCK_SIZE, ABSMAX_FLOOR)
    dq = quantize_nf4(w, 64, double_quant=True)
    assert fields.keys() == dq.tensors().keys() - {"codes"}
    assert all(torch.equal(t, dq.tensors()[k]) for k, t in fields.items())
    for dtype in (torch.float32, torch.bfloat16):
        out = nf4_torch.dequantize_packed(
            codes, dq.absmax_float(), NF4_CODEBOOK, w.numel(), 64, dtype
        )
        assert out.shape == (w.numel(),) and torch.equal(
            out.view(w.shape), dequantize_nf4(dq, dtype)
        )


@pytest.mark.parametrize("block_size", [2, 6, 64])
def test_chunked_half_precision_dequantize_equals_one_pass(monkeypatch, block_size):
    w = randn(37, 29)
    q = quantize_nf4(w, block_size)
    full = dequantize_nf4(q)  # float32 output is built in one pass
    monkeypatch.setattr(nf4_torch, "_CPU_CHUNK", 100)  # force many chunks
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(dequantize_nf4(q, dtype), full.to(dtype))
