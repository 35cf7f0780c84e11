"""The CPU C loop dequantizes bit for bit as the PyTorch path does, and falls back cleanly."""

from __future__ import annotations

import shutil

import pytest
import torch

from minituner.nf4.backends import cpu_c as nf4_cpu
from minituner.nf4.codec import dequantize_4bit, dequantize_nf4, quantize_nf4
from minituner.nf4.compare import quantize_fp4, quantize_int4_absmax

HAS_CC = nf4_cpu._library() is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no working C compiler here")


def _fields(q):
    """An NF4Tensor's fields as a backend takes them (no double quantization here)."""
    return q.codes, q.absmax, q.codebook, q.numel, q.block_size


def _torch_path(q, dtype, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("MINITUNER_NF4_KERNEL", "torch")
        assert not nf4_cpu.available(q.codes, dtype)
        return dequantize_4bit(q, dtype)


@needs_cc
@pytest.mark.parametrize(
    "shape,block_size",
    [((7,), 2), ((3, 50), 64), ((33, 129), 128), ((1000,), 6), ((301, 301), 64), ((257, 1025), 4)],
)
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_loop_equals_pytorch_path(shape, block_size, double_quant, dtype, monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(shape) * 3
    q = quantize_nf4(w, block_size, double_quant=double_quant)
    assert nf4_cpu.available(q.codes, dtype)
    got = dequantize_nf4(q, dtype)
    assert got.dtype == dtype and got.shape == w.shape
    assert torch.equal(got, _torch_path(q, dtype, monkeypatch))


@needs_cc
def test_portable_build_equals_pytorch_path(monkeypatch):
    """Built without -march=native (no vector path) the loop gives the same values."""
    monkeypatch.setattr(nf4_cpu, "_TRY_FLAGS", (["-fopenmp"], []))
    nf4_cpu._library.cache_clear()
    try:
        assert nf4_cpu._library() is not None
        for shape, bs in [((257, 1025), 64), ((7,), 2), ((333, 65), 6)]:
            q = quantize_nf4(torch.randn(shape), bs, double_quant=True)
            for dtype in (torch.float32, torch.bfloat16):
                assert torch.equal(dequantize_nf4(q, dtype), _torch_path(q, dtype, monkeypatch))
    finally:
        nf4_cpu._library.cache_clear()


@needs_cc
@pytest.mark.parametrize("quantize", [quantize_int4_absmax, quantize_fp4])
def test_c_loop_other_formats(quantize, monkeypatch):
    q = quantize(torch.randn(333, 65), 64)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_4bit(q, dtype), _torch_path(q, dtype, monkeypatch))


@needs_cc
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_c_loop_any_thread_count(threads, monkeypatch):
    """Ranges split over threads (more threads than blocks too) cover every block once."""
    q = quantize_nf4(torch.randn(70_001), 64)  # above the one-thread size, odd numel
    tiny = quantize_nf4(torch.randn(5), 2)  # 3 blocks
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for t in (q, tiny):
            want = _torch_path(t, torch.bfloat16, monkeypatch)
            assert torch.equal(dequantize_nf4(t, torch.bfloat16), want)
    finally:
        torch.set_num_threads(old)


@needs_cc
def test_c_loop_refuses_what_it_cannot_run():
    """Its input is an NF4Tensor's fields, checked when it was made (tests/nf4/test_format.py);
    only the device and the output dtype are left to refuse."""
    q = quantize_nf4(torch.randn(8), 4)
    with pytest.raises(RuntimeError, match="cannot run"):
        nf4_cpu.dequantize_packed(*_fields(q), torch.float16, dq_block_size=q.dq_block_size)
    with pytest.raises(RuntimeError, match="cannot run"):
        nf4_cpu.dequantize_packed(*_fields(q), torch.float64, dq_block_size=q.dq_block_size)


def test_other_dtypes_use_the_pytorch_path():
    codes = torch.zeros(4, dtype=torch.uint8)
    assert not nf4_cpu.available(codes, torch.float16)
    assert not nf4_cpu.available(codes, torch.float64)


@pytest.mark.parametrize("cc", ["no-such-compiler-xyz", "false"])
def test_no_compiler_or_a_failing_build_falls_back(cc, monkeypatch):
    if cc == "false" and shutil.which("false") is None:
        pytest.skip("no `false` command")
    q = quantize_nf4(torch.randn(40, 40), 64)
    want = _torch_path(q, torch.float32, monkeypatch)
    monkeypatch.setenv("CC", cc)
    nf4_cpu._library.cache_clear()
    try:
        if cc == "false":
            with pytest.warns(UserWarning, match="NF4 C loop not built"):
                assert not nf4_cpu.available(q.codes, torch.float32)
        else:
            assert not nf4_cpu.available(q.codes, torch.float32)
        assert torch.equal(dequantize_nf4(q), want)  # the PyTorch path, same values
    finally:
        nf4_cpu._library.cache_clear()  # the next caller builds again, with CC restored


@needs_cc
def test_c_loop_tiny_and_huge_scales(monkeypatch):
    """Blocks whose products are subnormal, or near float32's top, round as torch does."""
    torch.manual_seed(1)
    w = torch.randn(4, 256)
    w[0] *= 1e-39  # subnormal float32 values
    w[1] *= 1e-30
    w[2] *= 1e37
    w[3, :64] = 0.0  # an all-zero block
    q = quantize_nf4(w, 64)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_nf4(q, dtype), _torch_path(q, dtype, monkeypatch))
