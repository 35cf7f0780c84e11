"""The GEMMs of one fused QLoRA node, in each order, at the 7B layer shapes, in one run.

    python benchmarks/bench_gemm_order.py --device cuda --json gemm.json
    python benchmarks/bench_gemm_order.py --tokens 64 --shapes 96x64    # a CPU smoke run

:mod:`minituner.lora.qlora` writes a node's output y = x Wᵀ + hs Bᵀ (+ residual) two ways
(``GemmOrder``): the small LoRA GEMM first and the base GEMM adding into it (beta = 1), or
the base GEMM first (beta = 0) and the rank-r GEMM adding into it (one more pass over y).
Which is faster depends on how cuBLAS runs its beta = 1 kernels at these shapes, which an
end-to-end profile cannot separate from the shapes' own cost. Here each form of each
product runs on the same tensors, forward (x Wᵀ) and backward (g W), and the table gives
its time against the plain beta = 0 GEMM of the same shape measured in the same run:

    base        torch.mm(x, Wᵀ)                          the peer: every ratio is over it
    badd        y.addmm_(x, Wᵀ) into an existing y       the base GEMM at beta = 1
    lora_first  mm(hs, Bᵀ), then addmm_(x, Wᵀ)           the default order
    base_first  mm(x, Wᵀ), then addmm_(hs, Bᵀ)            GemmOrder.base_first
    residual    addmm(res, x, Wᵀ)                        a residual in the GEMM's beta
    add         mm(x, Wᵀ) + res                          the same, as a separate add
    kcat        mm([x | hs], [W | B]ᵀ)                   the LoRA product inside the base
                                                         GEMM's K (x stored with --pad
                                                         spare columns; one GEMM, beta = 0)
    strided     mm(x, Wᵀ), x a column slice of that      a base without LoRA on the same
                                                         padded x (lda = in + pad)
    swapped     mm(W, xᵀ) = yᵀ                           the same product with the operands
                                                         swapped (another cuBLAS kernel)

and for q, k, v (three (C, C) weights) three GEMMs against one of the (3C, C) weight
(``qkv_one_gemm``), forward and backward (where the backward's inputs are concatenated).
Times are CUDA-event pairs around ``--calls`` back-to-back calls, medians of ``--repeats``
interleaved passes (host clock on the CPU). Nothing asserts a time: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

SHAPES_7B = ("4096x4096", "11008x4096", "4096x11008")  # (out, in): q/k/v/o, gate/up, down


def _time_calls(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls (after one more)."""
    fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _median_times(cases: dict, device, calls: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each case, the cases interleaved within every repeat."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(_time_calls(fn, device, calls))
    return {name: statistics.median(v) for name, v in samples.items()}


def _random_maker(seed: int, device, dtype) -> Callable[..., torch.Tensor]:
    """rnd(*shape): standard normal tensors from one CPU generator seeded with ``seed``
    (the same numbers on every device), moved to ``device`` in ``dtype``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)


def node_cases(tokens: int, out_f: int, in_f: int, r: int, device, dtype, pad: int = 16) -> dict:
    """The forms of one node's forward and backward products on shared random tensors;
    ``kcat`` and ``strided`` store x (forward) and g (backward) with ``pad`` spare
    columns (pad >= r)."""
    rnd = _random_maker(0, device, dtype)

    x, w, res = rnd(tokens, in_f), rnd(out_f, in_f), rnd(tokens, out_f)  # (N, in), (out, in)
    a, b = rnd(r, in_f), rnd(out_f, r)  # (r, in), (out, r)
    hs, gy, ghs = rnd(tokens, r), rnd(tokens, out_f), rnd(tokens, r)  # (N, r), (N, out)
    y, gx = torch.empty_like(res), torch.empty_like(x)
    x_ext = torch.zeros(tokens, in_f + pad, device=device, dtype=dtype)  # [x | hs | 0]
    x_ext[:, :in_f], x_ext[:, in_f : in_f + r] = x, hs
    w_ext = torch.zeros(out_f, in_f + pad, device=device, dtype=dtype)  # [W | B | 0]
    w_ext[:, :in_f], w_ext[:, in_f : in_f + r] = w, b
    g_ext = torch.zeros(tokens, out_f + pad, device=device, dtype=dtype)  # [g | ghs | 0]
    g_ext[:, :out_f], g_ext[:, out_f : out_f + r] = gy, ghs
    wa_ext = torch.zeros(out_f + pad, in_f, device=device, dtype=dtype)  # [W; A; 0]
    wa_ext[:out_f], wa_ext[out_f : out_f + r] = w, a
    fwd = {
        "base": lambda: torch.mm(x, w.t()),
        "badd": lambda: y.addmm_(x, w.t()),
        "lora_first": lambda: torch.mm(hs, b.t()).addmm_(x, w.t()),
        "base_first": lambda: torch.mm(x, w.t()).addmm_(hs, b.t()),
        "residual": lambda: torch.addmm(res, x, w.t()),
        "add": lambda: torch.mm(x, w.t()) + res,
        "kcat": lambda: torch.mm(x_ext, w_ext.t()),
        "strided": lambda: torch.mm(x_ext[:, :in_f], w.t()),
        "swapped": lambda: torch.mm(w, x.t()),
    }
    bwd = {  # dx = g W (+ s · ghs A)
        "base": lambda: torch.mm(gy, w),
        "badd": lambda: gx.addmm_(gy, w),
        "lora_first": lambda: torch.mm(ghs, a).addmm_(gy, w),
        "base_first": lambda: torch.mm(gy, w).addmm_(ghs, a),
        "kcat": lambda: torch.mm(g_ext, wa_ext),
        "strided": lambda: torch.mm(g_ext[:, :out_f], w),
        "swapped": lambda: torch.mm(w.t(), gy.t()),
    }
    return {"forward": fwd, "backward": bwd}


def qkv_cases(tokens: int, hidden: int, device, dtype) -> dict:
    """q, k, v as three (C, C) GEMMs against one (3C, C) GEMM, forward and backward."""
    rnd = _random_maker(1, device, dtype)

    x, ws = rnd(tokens, hidden), [rnd(hidden, hidden) for _ in range(3)]
    w_cat, gs = torch.cat(ws), [rnd(tokens, hidden) for _ in range(3)]

    def three_bwd():
        gx = torch.mm(gs[0], ws[0])
        gx.addmm_(gs[1], ws[1])
        return gx.addmm_(gs[2], ws[2])

    return {
        "forward": {
            "base": lambda: [torch.mm(x, w.t()) for w in ws],  # three GEMMs
            "one_gemm": lambda: torch.mm(x, w_cat.t()),
        },
        "backward": {
            "base": three_bwd,  # the second and third add into the first (beta = 1)
            "one_gemm": lambda: torch.mm(torch.cat(gs, 1), w_cat),  # with the concatenation
        },
    }


def pair_cases(tokens: int, hidden: int, inter: int, device, dtype) -> dict:
    """gate and up as two (I, C) GEMMs against one (2I, C) GEMM, forward and backward
    (backward: the two gradients already side by side in one (N, 2I) tensor, as a kernel
    that writes both could leave them, so no concatenation is timed)."""
    rnd = _random_maker(2, device, dtype)

    x, ws = rnd(tokens, hidden), [rnd(inter, hidden) for _ in range(2)]
    w_cat, g_cat = torch.cat(ws), rnd(tokens, 2 * inter)
    gs = [g_cat[:, :inter], g_cat[:, inter:]]

    return {
        "forward": {
            "base": lambda: [torch.mm(x, w.t()) for w in ws],
            "one_gemm": lambda: torch.mm(x, w_cat.t()),
            "swapped": lambda: torch.mm(w_cat, x.t()),
        },
        "backward": {
            "base": lambda: torch.mm(gs[0], ws[0]).addmm_(gs[1], ws[1]),
            "one_gemm": lambda: torch.mm(g_cat, w_cat),
        },
    }


def parse_shape(spec: str) -> tuple[int, int]:
    """'OUTxIN' -> (OUT, IN), both positive."""
    parts = spec.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"shape {spec!r}: expected OUTxIN with positive integers, e.g. 4096x11008")
    return int(parts[0]), int(parts[1])


def run(args) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results: dict = {"device": _device_name(device), "dtype": args.dtype, "tokens": args.tokens}
    results["torch"] = torch.__version__
    rows = []
    for spec in args.shapes:
        out_f, in_f = parse_shape(spec)
        cases_by_dir = node_cases(args.tokens, out_f, in_f, args.r, device, dtype, args.pad)
        for direction, cases in cases_by_dir.items():
            rows.append(_row(f"{spec} r={args.r}", direction, cases, device, args, out_f, in_f))
    if args.qkv_hidden:
        for direction, cases in qkv_cases(args.tokens, args.qkv_hidden, device, dtype).items():
            h = args.qkv_hidden
            rows.append(_row(f"qkv {h}", direction, cases, device, args, 3 * h, h))
    if args.pair:
        h, i = parse_shape(args.pair)
        for direction, cases in pair_cases(args.tokens, h, i, device, dtype).items():
            rows.append(_row(f"gate,up {h}x{i}", direction, cases, device, args, 2 * i, h))
    results["rows"] = rows
    return results


def _row(label, direction, cases, device, args, out_f, in_f) -> dict:
    times = _median_times(cases, device, args.calls, args.repeats)  # each window synced
    flops = 2 * args.tokens * out_f * in_f  # the base product's
    base = times["base"]
    return {
        "shape": label,
        "direction": direction,
        "seconds": times,
        "over_base": {k: t / base for k, t in times.items()},
        "base_tflops": flops / base / 1e12,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def print_table(results: dict) -> None:
    print(f"{results['device']}, {results['dtype']}, {results['tokens']} tokens, "
          f"torch {results['torch']}; time per call and its ratio to the beta = 0 base GEMM")  # fmt: skip
    for row in results["rows"]:
        cells = "  ".join(
            f"{k} {row['seconds'][k] * 1e6:8.1f} us {row['over_base'][k]:.3f}x"
            for k in row["seconds"]
        )
        print(
            f"{row['shape']:>20} {row['direction']:>8}  ({row['base_tflops']:.0f} TFLOP/s)  {cells}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--tokens", type=int, default=4096, help="batch x sequence (8 x 512)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES_7B), help="OUTxIN weights")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--qkv-hidden", type=int, default=4096, help="0 skips the q, k, v rows")
    p.add_argument("--pad", type=int, default=16, help="spare columns for kcat (>= r)")
    p.add_argument(
        "--pair", default="4096x11008", help="HIDDENxINTERMEDIATE for gate,up rows; '' skips"
    )
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.r < 1 or args.tokens < 1 or args.calls < 1 or args.repeats < 1:
        p.error("--r, --tokens, --calls and --repeats must be positive")
    if args.pad < args.r:
        p.error(f"--pad ({args.pad}) must be at least --r ({args.r})")
    for spec in args.shapes + ([args.pair] if args.pair else []):
        try:
            parse_shape(spec)
        except ValueError as e:
            p.error(str(e))
    results = run(args)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
