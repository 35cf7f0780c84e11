"""The fused Triton dequantize kernel equals the PyTorch path bit for bit.

On a CUDA machine with Triton the kernel runs for real (every output dtype). Where Triton
is installed but there is no GPU, the same kernel runs in Triton's interpreter on the CPU
(in a subprocess: the interpreter is chosen when the kernel is defined); the interpreter
rounds float32 -> bfloat16 toward zero, unlike the GPU, so that dtype is checked on the GPU
only. Without Triton (the CPU CI) only the fallback rules are checked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from minituner import nf4_kernels
from minituner.nf4 import dequantize_4bit, dequantize_nf4, quantize_nf4
from minituner.quant_compare import quantize_fp4, quantize_int4_absmax

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA_KERNEL = HAS_TRITON and torch.cuda.is_available()

CASES = [((7,), 2), ((3, 50), 64), ((64, 64), 64), ((33, 129), 128), ((1000,), 6)]


def _torch_path(q, dtype, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("MINITUNER_NF4_KERNEL", "torch")
        return dequantize_4bit(q, dtype)


def test_cpu_tensors_use_the_pytorch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = quantize_nf4(torch.randn(8))
    assert not nf4_kernels.available(q.codes, torch.float32)
    with pytest.raises(RuntimeError, match="cannot run on cpu|needs Triton"):
        nf4_kernels.dequantize_packed(q, torch.float32)


def test_float64_and_the_switch_use_the_pytorch_path(monkeypatch):
    codes = torch.zeros(4, dtype=torch.uint8, device="cuda" if CUDA_KERNEL else "cpu")
    assert not nf4_kernels.available(codes, torch.float64)
    monkeypatch.setenv("MINITUNER_NF4_KERNEL", "torch")
    assert not nf4_kernels.available(codes, torch.float32)


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("shape,block_size", CASES + [((4096, 4096), 64)])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kernel_equals_pytorch_path(shape, block_size, double_quant, dtype, monkeypatch):
    torch.manual_seed(0)
    w = torch.randn(shape, device="cuda") * 3
    q = quantize_nf4(w, block_size, double_quant=double_quant)
    assert nf4_kernels.available(q.codes, dtype)
    got = dequantize_nf4(q, dtype)
    want = _torch_path(q, dtype, monkeypatch)
    assert got.dtype == dtype and got.shape == w.shape
    assert torch.equal(got, want)
    assert torch.equal(got.cpu(), dequantize_nf4(q.to("cpu"), dtype))  # and the CPU path


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("quantize", [quantize_int4_absmax, quantize_fp4])
def test_cuda_kernel_other_formats(quantize, monkeypatch):
    w = torch.randn(333, 65, device="cuda")
    q = quantize(w, 64)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_4bit(q, dtype), _torch_path(q, dtype, monkeypatch))


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
def test_cuda_kernel_equals_bitsandbytes():
    bnbF = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(1000, 333, device="cuda")
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    q = quantize_nf4(w, 64)
    assert torch.equal(q.codes, packed.view(-1))
    assert torch.equal(dequantize_nf4(q), bnbF.dequantize_4bit(packed, state))


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="needs Triton, no GPU")
def test_interpreted_kernel_equals_pytorch_path():
    script = textwrap.dedent(
        f"""
        import os, torch
        from minituner import nf4_kernels
        from minituner.nf4 import dequantize_4bit, quantize_nf4
        from minituner.quant_compare import quantize_fp4
        torch.manual_seed(0)
        for shape, bs in {CASES!r}:
            for quantize, kw in ((quantize_nf4, {{"double_quant": True}}), (quantize_fp4, {{}})):
                q = quantize(torch.randn(shape) * 3, bs, **kw)
                for dtype in (torch.float32, torch.float16):
                    assert nf4_kernels.available(q.codes, dtype)
                    got = dequantize_4bit(q, dtype)
                    os.environ["MINITUNER_NF4_KERNEL"] = "torch"
                    want = dequantize_4bit(q, dtype)
                    del os.environ["MINITUNER_NF4_KERNEL"]
                    assert torch.equal(got, want), (shape, bs, dtype)
        print("kernel ok")
        """
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    env.pop("MINITUNER_NF4_KERNEL", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kernel ok" in out.stdout
