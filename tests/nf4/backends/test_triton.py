"""The fused Triton kernels (dequantize and quantize) equal the PyTorch path bit for bit.

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

from minituner.nf4.backends import triton_dequant as nf4_kernels
from minituner.nf4.backends import triton_quant as nf4_quant_kernels
from minituner.nf4.codec import dequantize_4bit, dequantize_nf4, quantize_4bit, quantize_nf4
from minituner.nf4.compare import quantize_fp4, quantize_int4_absmax
from minituner.nf4.format import ABSMAX_FLOOR

ROOT = Path(__file__).resolve().parents[3]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA_KERNEL = HAS_TRITON and torch.cuda.is_available()

CASES = [((7,), 2), ((3, 50), 64), ((64, 64), 64), ((33, 129), 128), ((1000,), 6)]


STRIDED_CASES = [((7, 128), 64), ((33, 192), 64), ((300, 128), 128), ((5, 8), 2), ((3, 50), 64)]


def check_strided_out(device: str, dtypes) -> None:
    """Dequantizing into the first columns of a wider matrix (rows apart, as a weight
    with spare columns) gives the contiguous values there and leaves the other columns
    alone; sizes whose rows do not hold whole blocks ((3, 50) with block 64) take the
    copy path."""
    g = torch.Generator(device="cpu").manual_seed(3)
    for (rows, cols), bs in STRIDED_CASES:
        for dq in (False, True):
            q = quantize_nf4((torch.randn(rows, cols, generator=g) * 3).to(device), bs, dq)
            for dtype in dtypes:
                want = dequantize_nf4(q, dtype)
                for extra in (8, 40):
                    wide = torch.full((rows, cols + extra), 5.0, dtype=dtype, device=device)
                    got = dequantize_nf4(q, dtype, out=wide[:, :cols])
                    assert got.data_ptr() == wide.data_ptr() and got.stride(0) == cols + extra
                    assert torch.equal(wide[:, :cols], want), ((rows, cols), bs, dq, dtype)
                    assert torch.all(wide[:, cols:] == 5.0), ((rows, cols), bs, dq, dtype)
    q = quantize_nf4(torch.randn(4, 64).to(device), 64)
    for bad in (torch.empty(80, 4, device=device)[8:72].t(), torch.empty(4, 128)[:, ::2]):
        with pytest.raises(ValueError, match="out must be"):
            dequantize_nf4(q, out=bad)


def test_strided_out_on_the_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_strided_out("cpu", (torch.float32, torch.bfloat16))


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
def test_cuda_strided_out():
    check_strided_out("cuda", (torch.float32, torch.bfloat16, torch.float16))


def _torch_path(q, dtype, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("MINITUNER_NF4_KERNEL", "torch")
        return dequantize_4bit(q, dtype)


def test_cpu_tensors_use_the_pytorch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = quantize_nf4(torch.randn(8))
    assert not nf4_kernels.available(q.codes, torch.float32)
    with pytest.raises(RuntimeError, match="cannot run on cpu|needs Triton"):
        nf4_kernels.dequantize_packed(
            q.codes, q.absmax, q.codebook, q.numel, q.block_size, torch.float32,
            dq_block_size=q.dq_block_size,
        )  # fmt: skip


def test_cpu_quantize_uses_the_pytorch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    flat = torch.randn(128)
    assert not nf4_quant_kernels.available(flat, 64)
    with pytest.raises(RuntimeError, match="cannot run"):
        nf4_quant_kernels.quantize_packed(flat, 64, torch.zeros(15), None, ABSMAX_FLOOR)


def test_quantize_kernel_rules(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so that only these rules can say no
    flat = torch.randn(128)
    assert nf4_quant_kernels.available(flat, 64) == HAS_TRITON
    for block_size in (6, 1, 2 * nf4_quant_kernels.ELEMS_PER_PROGRAM):  # not a power of two,
        assert not nf4_quant_kernels.available(flat, block_size)  # too small, too big
    assert not nf4_quant_kernels.available(flat.double(), 64)  # float64 takes torch ops
    monkeypatch.setenv("MINITUNER_NF4_KERNEL", "torch")
    assert not nf4_quant_kernels.available(flat, 64)


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


def _quantize_torch(quantize, w, monkeypatch, *args, **kw):
    with monkeypatch.context() as m:
        m.setenv("MINITUNER_NF4_KERNEL", "torch")
        return quantize(w, *args, **kw)


def _assert_same_state(got, want):
    """Every stored tensor equal bit for bit (float tensors compared as int32 bits)."""
    assert got.tensors().keys() == want.tensors().keys()
    for name, t in got.tensors().items():
        u = want.tensors()[name]
        assert t.dtype == u.dtype and t.shape == u.shape, name
        if t.dtype == torch.float32:
            t, u = t.view(torch.int32), u.view(torch.int32)
        assert torch.equal(t, u), name


def _awkward(shape, dtype, device="cuda"):
    """Normal values with an all-zero block and an all-negative one (where there is room)."""
    w = torch.randn(shape, device=device) * 3
    flat = w.view(-1)
    if flat.numel() >= 3 * 128:
        flat[:128] = 0.0
        flat[128:256] = -flat[128:256].abs()
    return w.to(dtype)


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("shape,block_size", CASES + [((4096, 4096), 64), ((1025, 3), 2)])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_quantize_equals_pytorch_path(shape, block_size, double_quant, dtype, monkeypatch):
    torch.manual_seed(1)
    w = _awkward(shape, dtype)
    power_of_two = block_size & (block_size - 1) == 0
    assert nf4_quant_kernels.available(w.view(-1), block_size) == power_of_two
    got = quantize_nf4(w, block_size, double_quant=double_quant)
    want = _quantize_torch(quantize_nf4, w, monkeypatch, block_size, double_quant=double_quant)
    _assert_same_state(got, want)
    _assert_same_state(got.to("cpu"), quantize_nf4(w.cpu(), block_size, double_quant=double_quant))
    for out in (torch.float32, torch.bfloat16):
        a, b = dequantize_nf4(got, out), _torch_path(want, out, monkeypatch)
        assert torch.equal(a.view(torch.int16 if out == torch.bfloat16 else torch.int32),
                           b.view(torch.int16 if out == torch.bfloat16 else torch.int32))  # fmt: skip


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("quant_type", ["fp4", "int4"])
def test_cuda_quantize_other_formats(quant_type, monkeypatch):
    w = _awkward((333, 65), torch.float32)
    got = quantize_4bit(w, quant_type, 64)
    _assert_same_state(got, _quantize_torch(quantize_4bit, w, monkeypatch, quant_type, 64))


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("n_blocks", [1, 5, 256, 1000, 70000])
@pytest.mark.parametrize("spread", [0.1, 3.0])  # near-normal absmax: int8; heavy tail: dynamic
def test_cuda_double_quant_equals_pytorch_path(n_blocks, spread, monkeypatch):
    torch.manual_seed(n_blocks)
    w = torch.randn(n_blocks, 64, device="cuda") * torch.exp(
        torch.randn(n_blocks, 1, device="cuda") * spread
    )
    got = quantize_nf4(w, 64, double_quant=True)
    want = _quantize_torch(quantize_nf4, w, monkeypatch, 64, double_quant=True)
    _assert_same_state(got, want)
    if n_blocks >= 1000:  # the test means both grids to be chosen somewhere
        assert int(got.absmax_map) == (0 if spread < 1 else 1)


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
def test_cuda_quantize_tiny_blocks(monkeypatch):
    w = torch.randn(64, 64, device="cuda")
    w[:8] *= 1e-39  # subnormal float32 blocks: 1 / absmax is huge, x / absmax is not
    w[8:16] *= 1e-30
    _assert_same_state(quantize_nf4(w), _quantize_torch(quantize_nf4, w, monkeypatch))


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_cuda_quantize_rejects_non_finite(bad):
    w = torch.randn(1000, device="cuda")
    w[777] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_nf4(w)


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
def test_cuda_quantize_equals_bitsandbytes():
    bnbF = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(2)
    for w in (torch.randn(1000, 333, device="cuda"), torch.randn(77, 64, device="cuda")):
        packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
        q = quantize_nf4(w, 64)
        assert torch.equal(q.codes, packed.view(-1))
        assert torch.equal(q.absmax, state.absmax)


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="needs Triton, no GPU")
def test_interpreted_kernel_equals_pytorch_path():
    script = textwrap.dedent(
        f"""
        import os, torch
        from minituner.nf4.backends import triton_dequant as nf4_kernels
        from minituner.nf4.codec import dequantize_4bit, quantize_4bit, quantize_nf4
        from minituner.nf4.compare import quantize_fp4
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
            for quant_type in ("nf4", "fp4"):
                w = torch.randn(shape) * 3
                q = quantize_4bit(w, quant_type, bs)
                os.environ["MINITUNER_NF4_KERNEL"] = "torch"
                r = quantize_4bit(w, quant_type, bs)
                del os.environ["MINITUNER_NF4_KERNEL"]
                assert torch.equal(q.codes, r.codes), (shape, bs, quant_type)
                assert torch.equal(q.absmax.view(torch.int32), r.absmax.view(torch.int32))
        for spread in (0.1, 3.0):  # double quantization: both grids get chosen
            w = torch.randn(1000, 64) * torch.exp(torch.randn(1000, 1) * spread)
            q = quantize_nf4(w, 64, double_quant=True)
            os.environ["MINITUNER_NF4_KERNEL"] = "torch"
            r = quantize_nf4(w, 64, double_quant=True)
            del os.environ["MINITUNER_NF4_KERNEL"]
            assert int(q.absmax_map) == int(r.absmax_map) == (spread > 1)
            for name, t in r.tensors().items():
                u = q.tensors()[name]
                if t.dtype == torch.float32:
                    t, u = t.view(torch.int32), u.view(torch.int32)
                assert torch.equal(t, u), name
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_triton
        test_triton.check_strided_out("cpu", (torch.float32,))
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


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("shape", [(4096, 11008), (11008, 4096)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_cuda_kernel_at_the_7b_layer_shapes(shape, double_quant, monkeypatch):
    w = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    q = quantize_nf4(w, 64, double_quant=double_quant)
    for dtype in (torch.float32, torch.bfloat16):
        got = dequantize_nf4(q, dtype)
        got_again = dequantize_nf4(q, dtype)  # the second call takes the direct launch
        want = _torch_path(q, dtype, monkeypatch)
        assert torch.equal(got, want) and torch.equal(got_again, want)


def _count_direct_launches(monkeypatch) -> list:
    """Records the result of every launch through a compiled kernel's own launcher
    (``_call``: True where it ran); the generic path through Triton never calls it."""
    made, real = [], nf4_kernels._call
    monkeypatch.setattr(nf4_kernels, "_call", lambda *a: made.append(real(*a)) or made[-1])
    return made


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
def test_cuda_direct_launch_is_taken_and_keeps_specializations(monkeypatch):
    """After the first launch of a specialization the compiled kernel's own launcher runs
    it; a misaligned codes view, a ragged size or another dtype is a new specialization
    (a kernel compiled for 16-byte aligned pointers must never get an odd address)."""
    w = torch.randn(129, 64, device="cuda")
    q = quantize_nf4(w, 64, double_quant=True)
    want = _torch_path(q, torch.float32, monkeypatch)
    assert torch.equal(dequantize_nf4(q), want)  # compiles and caches
    direct = _count_direct_launches(monkeypatch)
    assert torch.equal(dequantize_nf4(q), want)
    assert direct == [True]
    # the same codes at an odd address: another key, so Triton compiles for it
    buf = torch.empty(q.codes.numel() + 1, dtype=torch.uint8, device="cuda")
    buf[1:].copy_(q.codes)
    shifted = nf4_kernels.dequantize_packed(
        buf[1:], q.absmax, q.codebook, q.numel, q.block_size, torch.float32,
        **{"dq_block_size": q.dq_block_size, "dq_grids": q.dq_grids(), "dq_map": q.absmax_map,
           "dq_scale": q.absmax_scale, "dq_offset": q.absmax_offset},
    )  # fmt: skip
    assert torch.equal(shifted.view(q.shape), want)
    for shape in ((7, 33), (1000, 65)):  # ragged sizes (ints that are not multiples of 16)
        qr = quantize_nf4(torch.randn(shape, device="cuda"), 64)
        for _ in range(2):
            for dtype in (torch.float32, torch.bfloat16):
                assert torch.equal(dequantize_nf4(qr, dtype), _torch_path(qr, dtype, monkeypatch))


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_prepared_launch_equals_the_torch_path(double_quant, dtype, monkeypatch):
    """The codec's prepared launch (one Launcher per tensor and dtype) gives the general
    path's values: a new output or an ``out`` (aligned, or a view 2 bytes off), after the
    codes change in place, with the torch switch on in between, and it launches directly
    once compiled."""
    from minituner.nf4 import codec

    q = quantize_nf4(torch.randn(300, 128, device="cuda"), 64, double_quant=double_quant)
    want = _torch_path(q, dtype, monkeypatch)
    assert torch.equal(dequantize_nf4(q, dtype), want)  # compiles; the launcher is kept
    launcher = codec._LAUNCHERS[id(q)][dtype, None]
    assert isinstance(launcher, nf4_kernels.Launcher)
    direct = _count_direct_launches(monkeypatch)
    assert torch.equal(dequantize_nf4(q, dtype), want)
    assert direct == [True]  # the direct launch, not Triton's generic path
    out = torch.full((q.numel,), float("nan"), dtype=dtype, device="cuda")
    assert torch.equal(dequantize_nf4(q, dtype, out=out), want) and torch.equal(
        out.view(q.shape), want
    )
    buf = torch.zeros(q.numel + 1, dtype=dtype, device="cuda")  # out at a 2- or 4-byte offset
    assert torch.equal(dequantize_nf4(q, dtype, out=buf[1:]), want) and buf[0] == 0
    with monkeypatch.context() as m:  # the switch still holds with a launcher kept
        m.setenv("MINITUNER_NF4_KERNEL", "torch")
        m.setattr(nf4_kernels.Launcher, "__call__", lambda *a: pytest.fail("launched"))
        assert torch.equal(dequantize_nf4(q, dtype), want)
    q.codes.copy_(q.codes.flip(0))  # in place: the launcher reads the tensor, not a copy
    assert torch.equal(dequantize_nf4(q, dtype), _torch_path(q, dtype, monkeypatch))
    key = id(q)
    del q, launcher
    import gc

    gc.collect()
    assert key not in codec._LAUNCHERS  # an entry leaves with its tensor


@pytest.mark.skipif(not CUDA_KERNEL, reason="needs CUDA and Triton")
def test_cuda_dequantize_replays_in_a_cuda_graph(monkeypatch):
    q = quantize_nf4(torch.randn(256, 320, device="cuda"), 64, double_quant=True)
    for _ in range(2):  # warm: compiled and cached before the capture
        dequantize_nf4(q, torch.bfloat16)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dequantize_nf4(q, torch.bfloat16)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, _torch_path(q, torch.bfloat16, monkeypatch))
