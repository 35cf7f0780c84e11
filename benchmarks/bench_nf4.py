"""NF4 quantize / dequantize speed: minituner.nf4.codec against bitsandbytes, in one run.

    python benchmarks/bench_nf4.py                  # CPU, 4096 x 4096 float32
    python benchmarks/bench_nf4.py --device cuda    # adds copy bandwidth and GB/s
    python benchmarks/bench_nf4.py --device cuda --shapes 4096x4096 4096x11008 11008x4096 \
        --graph --json nf4.json    # the 7B layer shapes; + our kernel's time inside a CUDA graph

Both implementations run on the same normal tensor, interleaved (ours, bnb, bnb, ours,
...) after a warm-up, and the table prints the median of the repeats and the ratio
ours / bnb. On the CPU each call is timed by the host clock; on CUDA by a pair of CUDA
events around ``--calls`` calls (10) issued back to back after one more, with no host
synchronization between them, divided by their number: the time per call in a stream of
calls (host work that keeps the GPU waiting, such as Python and launch costs larger than
the kernel's time or a sync inside the call, stays inside the pair). A window of one call
(``--calls 1``) at the 7B shapes, where a kernel takes 15-40 us, is mostly the jitter of
when the events land: medians swung 2x between passes of the same run. On CUDA it also measures device-to-device copy bandwidth (a
clone of a 1 GiB tensor, timed the same way) and our dequantize's achieved GB/s (bytes
read + bytes written) against it. Nothing here asserts a time: shared machines are
noisy, read the ratios.

On the CPU, writing fresh memory costs a page fault per 4 KiB, often more than the
arithmetic, and whether a 64 MiB output lands on fresh pages or on memory freed a moment
ago is up to glibc's malloc, which moves its mmap threshold as the run goes: run it
twice and a ratio can flip. Pin the regime with glibc's variables:

    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/bench_nf4.py    # every output fresh
    MALLOC_MMAP_THRESHOLD_=4294967295 MALLOC_TRIM_THRESHOLD_=4294967295 \
        python benchmarks/bench_nf4.py                                # outputs reuse memory

Where a fused dequantize runs (the Triton kernel on CUDA, the C loop of
minituner/nf4/backends/cpu_c.py on the CPU when a C compiler is there), "ours" is that and an
extra column, "torch", is our plain PyTorch path (MINITUNER_NF4_KERNEL=torch) on the same data.
``--graph`` (CUDA) also times 20 of our dequantize calls captured in one CUDA graph: the
device's time per call with no host work at all, which says how much of a stream-of-calls
time is the kernel and how much the host.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minituner.nf4 import codec  # noqa: E402
from minituner.nf4.backends import cpu_c as nf4_cpu  # noqa: E402
from minituner.nf4.backends import triton_dequant as nf4_kernels  # noqa: E402
from minituner.nf4.backends import triton_quant as nf4_quant_kernels  # noqa: E402
from minituner.nf4.codec import _dq_arguments, dequantize_nf4, quantize_nf4  # noqa: E402
from minituner.nf4.storage import nf4_storage_bytes  # noqa: E402

MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def torch_path(fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with the fused kernel switched off (our plain PyTorch dequantize)."""

    def run() -> object:
        old = os.environ.get("MINITUNER_NF4_KERNEL")
        os.environ["MINITUNER_NF4_KERNEL"] = "torch"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["MINITUNER_NF4_KERNEL"]
            else:
                os.environ["MINITUNER_NF4_KERNEL"] = old

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


STREAM = {"calls": 10}  # calls per CUDA-event window (--calls)


def _timer(fn: Callable[[], object], device: torch.device) -> Callable[[], float]:
    """Run fn now; the returned function gives its seconds per call (on CUDA: after a sync).

    On CUDA fn runs once untimed and then ``STREAM["calls"]`` times inside the window: the
    first call keeps the device busy while the host issues the rest, so the window holds
    the device's time per call in a stream of calls, or the host's where that is longer
    (as in a training step).
    """
    if device.type != "cuda":
        secs = _time_once(fn, device)
        return lambda: secs
    calls = STREAM["calls"]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    return lambda: start.elapsed_time(end) / 1e3 / calls


def measure(pairs: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """pairs: {op: {impl: fn}} -> {op: {impl: median seconds}}, implementations interleaved."""
    timers: dict = {op: {impl: [] for impl in impls} for op, impls in pairs.items()}
    for _ in range(warmup):
        for impls in pairs.values():
            for fn in impls.values():
                _time_once(fn, device)
    for r in range(repeats):
        for op, impls in pairs.items():
            names = list(impls)
            for impl in names if r % 2 == 0 else reversed(names):
                timers[op][impl].append(_timer(impls[impl], device))
    _sync(device)
    return {
        op: {k: statistics.median(t() for t in v) for k, v in d.items()} for op, d in timers.items()
    }


def copy_bandwidth(device: torch.device, nbytes: int, warmup: int, repeats: int) -> float:
    """GB/s of a device-to-device clone (read + write counted), timed as :func:`measure`."""
    big = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    secs = measure({"copy": {"clone": big.clone}}, device, warmup, repeats)["copy"]["clone"]
    return 2 * nbytes / secs / 1e9


def _load_bnb(device: torch.device):
    try:
        import bitsandbytes.functional as bnbF

        probe = torch.randn(128, device=device)
        bnbF.quantize_4bit(probe, blocksize=64, quant_type="nf4")
        return bnbF, None
    except Exception as exc:  # missing package, or no kernel for this device
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


def _shape(text: str) -> tuple[int, int]:
    rows, _, cols = text.lower().partition("x")
    try:
        shape = int(rows), int(cols or rows)
    except ValueError:
        msg = f"expected ROWSxCOLS such as 4096x11008, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs positive sizes, got {text!r}")
    return shape


def graph_seconds(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Device seconds per call of ``fn`` with ``calls`` of them captured in one CUDA graph
    and replayed (median of 5 replays): the kernels' own time, no host work in it."""
    for _ in range(2):
        fn()
    _sync(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    del graph
    return statistics.median(times)


def host_microseconds(device: torch.device, bnbF, calls: int = 2000) -> dict:
    """Host time per dequantize call (microseconds): ``calls`` calls on a 64 x 64 tensor,
    whose kernel takes far less than the host's work, then one synchronize. Below this
    time per call, back-to-back calls measure the host, not the GPU. "ours" is the codec
    (its launch prepared once per tensor: triton_dequant.Launcher), "ours (general launch
    path)" the same kernel through triton_dequant.dequantize_packed, bnb bitsandbytes;
    "+DQ" the same with double quantization."""
    w = torch.randn(64, 64, device=device)
    q, q_dq = quantize_nf4(w, 64), quantize_nf4(w, 64, double_quant=True)
    fns = {
        "ours": lambda: dequantize_nf4(q, torch.bfloat16),
        "ours +DQ": lambda: dequantize_nf4(q_dq, torch.bfloat16),
    }
    if nf4_kernels.available(q.codes, torch.bfloat16):  # the same kernel, unprepared
        args = (q.codes, q.absmax, q.codebook, q.numel, q.block_size, torch.bfloat16)
        fns["ours (general launch path)"] = lambda: nf4_kernels.dequantize_packed(
            *args, **_dq_arguments(q)
        )
    if bnbF is not None:
        bq, st = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
        st_bf16 = copy.copy(st)
        st_bf16.dtype = torch.bfloat16
        fns["bnb"] = lambda: bnbF.dequantize_4bit(bq, st_bf16)
        bq_dq, st_dq = bnbF.quantize_4bit(
            w, blocksize=64, quant_type="nf4", compress_statistics=True
        )
        st_dq_bf16 = copy.copy(st_dq)
        st_dq_bf16.dtype = torch.bfloat16
        fns["bnb +DQ"] = lambda: bnbF.dequantize_4bit(bq_dq, st_dq_bf16)
    out = {}
    for name, fn in fns.items():
        for _ in range(50):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        out[name] = (time.perf_counter() - t0) / calls * 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--size", type=int, default=4096, help="the tensor is size x size")
    ap.add_argument(
        "--shapes", nargs="+", type=_shape, default=None, metavar="ROWSxCOLS",
        help="measure these shapes instead of --size (e.g. 4096x4096 4096x11008 11008x4096)",
    )  # fmt: skip
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument(
        "--calls", type=int, default=10,
        help="CUDA: back-to-back calls per timed window (default 10; 1 = the old single call)",
    )  # fmt: skip
    ap.add_argument("--graph", action="store_true", help="also time ours inside a CUDA graph")
    ap.add_argument(
        "--kernel-configs", nargs="*", default=[], metavar="BYTES:WARPS",
        help="also time the dequantize kernel with these packed bytes per program and warps",
    )  # fmt: skip
    ap.add_argument(
        "--quant-configs", nargs="*", default=[], metavar="ELEMS:WARPS",
        help="also time the quantize kernel with these elements per program and warps",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error("--calls must be at least 1")
    STREAM["calls"] = args.calls

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch.cuda.is_available() is False")
    bnb = _load_bnb(device)
    clone_gbs = None
    if device.type == "cuda":
        clone_gbs = copy_bandwidth(device, 1 << 30, args.warmup, args.repeats)
    records = [
        bench_shape(shape, args, device, bnb, clone_gbs)
        for shape in (args.shapes or [(args.size, args.size)])
    ]
    host = host_microseconds(device, bnb[0]) if device.type == "cuda" else None
    if host:
        print("host time per dequantize call (64x64 bf16, 2000 calls, one sync): "
              + ", ".join(f"{k} {v:.1f} us" for k, v in host.items()))  # fmt: skip
    if args.json:
        record = records[0] if args.shapes is None else {"shapes": records, "host_us": host}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


def _bnb_pairs(bnbF, w: torch.Tensor, bs: int, pairs: dict) -> None:
    """bitsandbytes' quantize and dequantize on the same tensor, next to ours in ``pairs``."""
    bq, st = bnbF.quantize_4bit(w, blocksize=bs, quant_type="nf4")
    bq_dq, st_dq = bnbF.quantize_4bit(w, blocksize=bs, quant_type="nf4", compress_statistics=True)
    st_bf16, st_dq_bf16 = copy.copy(st), copy.copy(st_dq)
    st_bf16.dtype = st_dq_bf16.dtype = torch.bfloat16
    pairs["quantize"]["bnb"] = lambda: bnbF.quantize_4bit(w, blocksize=bs, quant_type="nf4")
    pairs["quantize +DQ"]["bnb"] = lambda: bnbF.quantize_4bit(
        w, blocksize=bs, quant_type="nf4", compress_statistics=True
    )
    pairs["dequantize fp32"]["bnb"] = lambda: bnbF.dequantize_4bit(bq, st)
    pairs["dequantize bf16"]["bnb"] = lambda: bnbF.dequantize_4bit(bq, st_bf16)
    pairs["dequantize +DQ fp32"]["bnb"] = lambda: bnbF.dequantize_4bit(bq_dq, st_dq)
    pairs["dequantize +DQ bf16"]["bnb"] = lambda: bnbF.dequantize_4bit(bq_dq, st_dq_bf16)


def bench_shape(shape, args, device, bnb, clone_gbs) -> dict:
    """Every operation on one (rows, cols) float32 normal tensor; prints the table and
    returns the record written to --json."""
    bnbF, why_not = bnb
    torch.manual_seed(0)
    w = torch.randn(*shape, device=device)
    bs = args.block_size
    q = quantize_nf4(w, bs)
    q_dq = quantize_nf4(w, bs, double_quant=True)
    pairs: dict = {
        "quantize": {"ours": lambda: quantize_nf4(w, bs)},
        "quantize +DQ": {"ours": lambda: quantize_nf4(w, bs, double_quant=True)},
        "dequantize fp32": {"ours": lambda: dequantize_nf4(q)},
        "dequantize bf16": {"ours": lambda: dequantize_nf4(q, torch.bfloat16)},
        "dequantize +DQ fp32": {"ours": lambda: dequantize_nf4(q_dq)},
        "dequantize +DQ bf16": {"ours": lambda: dequantize_nf4(q_dq, torch.bfloat16)},
    }
    kernel = nf4_kernels.available(q.codes, torch.float32)
    c_loop = nf4_cpu.available(q.codes, torch.float32)
    quant_kernel = nf4_quant_kernels.available(w.view(-1), bs)
    if kernel or c_loop:
        for op, impls in pairs.items():
            if op.startswith("dequantize") or quant_kernel:
                impls["torch"] = torch_path(impls["ours"])
    if bnbF is not None:
        _bnb_pairs(bnbF, w, bs, pairs)

    res = measure(pairs, device, args.warmup, args.repeats)
    name = f"{shape[0]}x{shape[1]}"
    print(f"NF4 on {device} ({torch.__version__}, {torch.get_num_threads()} threads): "
          f"{name} float32 normal, block {bs}, "
          f"median of {args.repeats} after {args.warmup} warm-up, interleaved"
          + (f", {STREAM['calls']} back-to-back calls per CUDA-event window"
             if device.type == "cuda" else ""))  # fmt: skip
    if bnbF is None:
        print(f"bitsandbytes comparison skipped ({why_not})")
    pins = [f"{k}={os.environ[k]}" for k in MALLOC_VARS if k in os.environ]
    print("malloc: " + (" ".join(pins) or "glibc defaults (dynamic mmap threshold)"))
    fused = "fused Triton kernel" if kernel else "C loop (nf4_cpu)" if c_loop else ""
    print(f"our dequantize: {fused or 'PyTorch ops'}; our quantize: "
          f"{'fused Triton kernel' if quant_kernel else 'PyTorch ops'}")  # fmt: skip
    cols = ["ours", "bnb"] + (["torch"] if fused else [])
    head = f"{'operation':<22}" + "".join(f"{c + ' ms':>10}" for c in cols)
    head += f"{'ours/bnb':>10}" + (f"{'torch/bnb':>10}" if fused else "")
    print(head)
    for op, d in res.items():
        row = f"{op:<22}" + "".join(
            f"{d[c] * 1e3:>10.3f}" if c in d else f"{'-':>10}" for c in cols
        )
        for c in ["ours"] + (["torch"] if fused else []):
            if c == "torch" and c not in d:
                row += f"{'-':>10}"
            elif "bnb" in d:
                row += f"{d[c] / d['bnb']:>10.2f}"
            else:
                row += f"{'-':>10}"
        print(row)

    record = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": getattr(nf4_kernels.triton, "__version__", None),
        "threads": torch.get_num_threads(),
        "shape": list(shape),
        "block_size": bs,
        "repeats": args.repeats,
        "fused_kernel": kernel,
        "quantize_kernel": quant_kernel,
        "timing": "cuda events, 2nd of 2 calls" if device.type == "cuda" else "host clock",
        "c_loop": c_loop,
        "malloc": {k: os.environ[k] for k in MALLOC_VARS if k in os.environ},
        "bitsandbytes": None if bnbF is None else _bnb_version(),
        "median_s": res,
        "ours_over_bnb": {op: d["ours"] / d["bnb"] for op, d in res.items() if "bnb" in d},
    }
    if shape[0] == shape[1]:
        record["size"] = shape[0]
    if device.type == "cuda":
        n = w.numel()
        codes = q.codes.numel()
        read = {"": codes + 4 * q.absmax.numel(), "+DQ ": codes + nf4_storage_bytes(q_dq) - codes}
        gbs: dict = {}
        print(f"device copy bandwidth (clone of 1 GiB, read + write): {clone_gbs:8.1f} GB/s")
        for dq in ("", "+DQ "):
            for out, size in (("fp32", 4), ("bf16", 2)):
                moved = read[dq] + size * n  # ... + the output written
                for impl, secs in res[f"dequantize {dq}{out}"].items():
                    key = f"{impl} {dq}{out}"
                    gbs[key] = moved / secs / 1e9
                    print(f"dequantize {dq}{out:<5} {impl:<6} bytes read + written / time: "
                          f"{gbs[key]:8.1f} GB/s ({100 * gbs[key] / clone_gbs:.0f}% of copy)")  # fmt: skip
                if args.graph and kernel:
                    fn = pairs[f"dequantize {dq}{out}"]["ours"]
                    key = f"ours graph {dq}{out}"
                    gbs[key] = moved / graph_seconds(fn, device) / 1e9
                    print(f"dequantize {dq}{out:<5} ours in a CUDA graph (device only): "
                          f"{gbs[key]:8.1f} GB/s ({100 * gbs[key] / clone_gbs:.0f}% of copy)")  # fmt: skip
        record["copy_gbs"] = clone_gbs
        record["dequantize_gbs"] = gbs
        record["copy_fraction"] = {k: g / clone_gbs for k, g in gbs.items()}
        moved = {"fp32": read[""] + 4 * n, "bf16": read[""] + 2 * n}
        if kernel and args.kernel_configs:
            record["kernel_configs_gbs"] = sweep_kernel(q, args, device, moved, clone_gbs)
        if quant_kernel and args.quant_configs:
            record["quant_configs_s"] = sweep_quant(w, args, device)
    return record


def _configs(specs: list[str]) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in spec.split(":")) for spec in specs]


def sweep_kernel(q, args, device, moved: dict, clone_gbs: float) -> dict:
    """GB/s of the dequantize kernel for each --kernel-configs value (defaults restored)."""
    default = nf4_kernels.BYTES_PER_PROGRAM, nf4_kernels.NUM_WARPS
    out: dict = {}
    try:
        for nbytes, warps in _configs(args.kernel_configs):
            nf4_kernels.BYTES_PER_PROGRAM, nf4_kernels.NUM_WARPS = nbytes, warps
            codec._LAUNCHERS.pop(id(q), None)  # a kept launcher holds the old config
            pairs = {
                "fp32": {"k": lambda: dequantize_nf4(q)},
                "bf16": {"k": lambda: dequantize_nf4(q, torch.bfloat16)},
            }
            res = measure(pairs, device, args.warmup, args.repeats)
            key = f"{nbytes}:{warps}"
            out[key] = {o: moved[o] / res[o]["k"] / 1e9 for o in res}
            print(f"dequantize kernel bytes:warps {key:>8}: " + "  ".join(
                f"{o} {g:7.1f} GB/s ({100 * g / clone_gbs:.0f}%)" for o, g in out[key].items()
            ))  # fmt: skip
    finally:
        nf4_kernels.BYTES_PER_PROGRAM, nf4_kernels.NUM_WARPS = default
        codec._LAUNCHERS.pop(id(q), None)
    return out


def sweep_quant(w, args, device) -> dict:
    """Median seconds of quantize (plain, +DQ) for each --quant-configs value."""
    default = nf4_quant_kernels.ELEMS_PER_PROGRAM, nf4_quant_kernels.NUM_WARPS
    bs = args.block_size
    out: dict = {}
    try:
        for elems, warps in _configs(args.quant_configs):
            nf4_quant_kernels.ELEMS_PER_PROGRAM, nf4_quant_kernels.NUM_WARPS = elems, warps
            pairs = {
                "quantize": {"k": lambda: quantize_nf4(w, bs)},
                "quantize +DQ": {"k": lambda: quantize_nf4(w, bs, double_quant=True)},
            }
            res = measure(pairs, device, args.warmup, args.repeats)
            key = f"{elems}:{warps}"
            out[key] = {o: d["k"] for o, d in res.items()}
            print(f"quantize kernel elems:warps {key:>8}: " + "  ".join(
                f"{o} {t * 1e3:6.3f} ms" for o, t in out[key].items()
            ))  # fmt: skip
    finally:
        nf4_quant_kernels.ELEMS_PER_PROGRAM, nf4_quant_kernels.NUM_WARPS = default
    return out


def _bnb_version() -> str:
    import bitsandbytes

    return bitsandbytes.__version__


if __name__ == "__main__":
    main()
