"""Where the host time of one NF4 dequantize call goes, on a CUDA machine.

    python benchmarks/nf4_host_breakdown.py [--calls 3000] [--json out.json]

At the 7B attention shape (4096 x 4096, bf16 out) the kernel takes about 15 us of an
H100, and ``bench_nf4.py`` measured the host at about 20 us a call (ours and
bitsandbytes alike), so back-to-back calls there time the host. This script times each
piece of the call path on a 64 x 64 tensor (kernel time negligible), ``--calls`` calls
then one synchronize, and prints microseconds per call, each piece beside the whole
call and beside peers measured in the same run: an ATen launch (``out.zero_()``), an
empty allocation, and bitsandbytes' dequantize where it is installed. Nothing here is
asserted; read it beside ``bench_nf4.py``'s back-to-back times.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from minituner.nf4 import codec
from minituner.nf4.backends import fused_wanted, triton_dequant
from minituner.nf4.codec import dequantize_nf4, quantize_nf4


def per_call_us(fn, calls: int, sync=torch.cuda.synchronize) -> float:
    """Host microseconds per call of ``fn``: ``calls`` calls, then one ``sync`` (after 50
    warm-up calls and a ``sync``)."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    for _ in range(50):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls * 1e6


def pieces(dtype: torch.dtype, double_quant: bool) -> dict:
    """The call path's pieces for one 64 x 64 NF4 tensor (see the module docstring)."""
    w = torch.randn(64, 64, device="cuda")
    q = quantize_nf4(w, 64, double_quant=double_quant)
    dequantize_nf4(q, dtype)  # compiles the kernel and prepares the launcher
    launch = codec._launcher(q, dtype)
    out = torch.empty(q.numel, dtype=dtype, device="cuda")
    fns = {
        "dequantize_nf4 (the whole call)": lambda: dequantize_nf4(q, dtype),
        "Launcher() (allocates out)": lambda: launch(),
        "Launcher(out)": lambda: launch(out),
    }
    key = launch.keys[True]
    compiled = triton_dequant._COMPILED.get(key)
    if compiled is not None:
        args = (*launch.ptrs, out.data_ptr(), *launch.tail)  # as Launcher passes them
        stream = triton_dequant._raw_stream(launch.dev)

        def bare():  # triton_dequant._call without its checks: the launcher's own cost
            compiled.run(
                launch.grid, 1, 1, stream, compiled.function, compiled.packed_metadata,
                None, None, None, *args,
            )  # fmt: skip

        fns["compiled.run (Triton's launcher alone)"] = bare
    fns["torch.empty (the output alone)"] = lambda: torch.empty(q.numel, dtype=dtype, device="cuda")
    fns["torch.cuda.current_device()"] = torch.cuda.current_device
    fns["_raw_stream"] = lambda: triton_dequant._raw_stream(0)
    fns["_hooks_installed"] = triton_dequant._hooks_installed
    fns["fused_wanted"] = fused_wanted
    fns["peer: out.zero_() (an ATen launch)"] = out.zero_
    try:
        import bitsandbytes.functional as bnbF
    except ImportError:
        bnbF = None
    if bnbF is not None:
        bq, st = bnbF.quantize_4bit(
            w, blocksize=64, quant_type="nf4", compress_statistics=double_quant
        )
        st = copy.copy(st)
        st.dtype = dtype
        fns["peer: bitsandbytes dequantize_4bit"] = lambda: bnbF.dequantize_4bit(bq, st)
        b_out = torch.empty(64, 64, dtype=dtype, device="cuda")
        fns["peer: bitsandbytes dequantize_4bit(out=)"] = lambda: bnbF.dequantize_4bit(
            bq, st, out=b_out
        )
    return fns


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error(f"--calls must be at least 1, got {args.calls}")
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    for dtype in (torch.bfloat16, torch.float32):
        for dq in (False, True):
            label = f"{str(dtype).removeprefix('torch.')}{' +DQ' if dq else ''}"
            fns = pieces(dtype, dq)
            times = {name: per_call_us(fn, args.calls) for name, fn in fns.items()}
            whole = times["dequantize_nf4 (the whole call)"]
            print(f"{label}: host microseconds per call ({args.calls} calls, one sync)")
            for name, us in times.items():
                print(f"  {name:44s} {us:7.2f} us  {us / whole:5.2f}x the whole call")
            record["cases"][label] = times
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
