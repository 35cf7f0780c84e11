"""NF4 quantize / dequantize speed: minituner.nf4 against bitsandbytes, in one run.

    python benchmarks/bench_nf4.py                  # CPU, 4096 x 4096 float32
    python benchmarks/bench_nf4.py --device cuda    # adds copy bandwidth and GB/s

Both implementations run on the same normal tensor, interleaved (ours, bnb, bnb, ours,
...) after a warm-up, and the table prints the median of the repeats and the ratio
ours / bnb. On CUDA it also measures device-to-device copy bandwidth (a clone of a big
tensor) and our dequantize's achieved GB/s (bytes read + bytes written) against it.
Nothing here asserts a time: shared machines are noisy, read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minituner.nf4 import dequantize_nf4, quantize_nf4  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(pairs: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """pairs: {op: {impl: fn}} -> {op: {impl: median seconds}}, implementations interleaved."""
    times: dict = {op: {impl: [] for impl in impls} for op, impls in pairs.items()}
    for _ in range(warmup):
        for impls in pairs.values():
            for fn in impls.values():
                _time_once(fn, device)
    for r in range(repeats):
        for op, impls in pairs.items():
            names = list(impls)
            for impl in names if r % 2 == 0 else reversed(names):
                times[op][impl].append(_time_once(impls[impl], device))
    return {op: {k: statistics.median(v) for k, v in d.items()} for op, d in times.items()}


def copy_bandwidth(device: torch.device, nbytes: int, warmup: int, repeats: int) -> float:
    """GB/s of a device-to-device clone (read + write counted)."""
    big = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    for _ in range(warmup):
        big.clone()
    secs = statistics.median(_time_once(big.clone, device) for _ in range(repeats))
    return 2 * nbytes / secs / 1e9


def _load_bnb(device: torch.device):
    try:
        import bitsandbytes.functional as bnbF

        probe = torch.randn(128, device=device)
        bnbF.quantize_4bit(probe, blocksize=64, quant_type="nf4")
        return bnbF, None
    except Exception as exc:  # missing package, or no kernel for this device
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--size", type=int, default=4096, help="the tensor is size x size")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch.cuda.is_available() is False")
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size, device=device)
    bs = args.block_size
    bnbF, why_not = _load_bnb(device)

    q = quantize_nf4(w, bs)
    q_dq = quantize_nf4(w, bs, double_quant=True)
    pairs: dict = {
        "quantize": {"ours": lambda: quantize_nf4(w, bs)},
        "quantize +DQ": {"ours": lambda: quantize_nf4(w, bs, double_quant=True)},
        "dequantize fp32": {"ours": lambda: dequantize_nf4(q)},
        "dequantize bf16": {"ours": lambda: dequantize_nf4(q, torch.bfloat16)},
        "dequantize +DQ fp32": {"ours": lambda: dequantize_nf4(q_dq)},
    }
    if bnbF is not None:
        bq, st = bnbF.quantize_4bit(w, blocksize=bs, quant_type="nf4")
        bq_dq, st_dq = bnbF.quantize_4bit(
            w, blocksize=bs, quant_type="nf4", compress_statistics=True
        )
        st_bf16 = bnbF.QuantState(
            absmax=st.absmax, shape=st.shape, dtype=torch.bfloat16, blocksize=bs,
            code=st.code, quant_type="nf4",
        )  # fmt: skip
        pairs["quantize"]["bnb"] = lambda: bnbF.quantize_4bit(w, blocksize=bs, quant_type="nf4")
        pairs["quantize +DQ"]["bnb"] = lambda: bnbF.quantize_4bit(
            w, blocksize=bs, quant_type="nf4", compress_statistics=True
        )
        pairs["dequantize fp32"]["bnb"] = lambda: bnbF.dequantize_4bit(bq, st)
        pairs["dequantize bf16"]["bnb"] = lambda: bnbF.dequantize_4bit(bq, st_bf16)
        pairs["dequantize +DQ fp32"]["bnb"] = lambda: bnbF.dequantize_4bit(bq_dq, st_dq)

    res = measure(pairs, device, args.warmup, args.repeats)

    print(f"NF4 on {device} ({torch.__version__}, {torch.get_num_threads()} threads): "
          f"{args.size}x{args.size} float32 normal, block {bs}, "
          f"median of {args.repeats} after {args.warmup} warm-up, interleaved")  # fmt: skip
    if bnbF is None:
        print(f"bitsandbytes comparison skipped ({why_not})")
    print(f"{'operation':<22}{'ours ms':>10}{'bnb ms':>10}{'ours/bnb':>10}")
    for op, d in res.items():
        ours = d["ours"] * 1e3
        if "bnb" in d:
            bnb = d["bnb"] * 1e3
            print(f"{op:<22}{ours:>10.2f}{bnb:>10.2f}{ours / bnb:>10.2f}")
        else:
            print(f"{op:<22}{ours:>10.2f}{'-':>10}{'-':>10}")

    if device.type == "cuda":
        n = w.numel()
        moved = q.codes.numel() + 4 * q.absmax.numel() + 4 * n  # read codes + absmax, write fp32
        ours_gbs = moved / res["dequantize fp32"]["ours"] / 1e9
        clone_gbs = copy_bandwidth(device, 1 << 30, args.warmup, args.repeats)
        print(f"device copy bandwidth (clone of 1 GiB, read + write): {clone_gbs:8.1f} GB/s")
        print(f"our fp32 dequantize, bytes read + written / time:     {ours_gbs:8.1f} GB/s "
              f"({100 * ours_gbs / clone_gbs:.0f}% of copy)")  # fmt: skip
        if bnbF is not None:
            bnb_gbs = moved / res["dequantize fp32"]["bnb"] / 1e9
            print(f"bitsandbytes fp32 dequantize, same accounting:        {bnb_gbs:8.1f} GB/s")


if __name__ == "__main__":
    main()
