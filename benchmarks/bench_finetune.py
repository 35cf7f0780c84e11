"""Wall time of the default fine-tunes on this machine, evaluation included, and our
LoRA training step against PEFT's, in one run.

Runs the default LoRA config (FinetuneConfig()) and, as its peers, full fine-tuning and
QLoRA at the same step budget; prints each one's wall time (training, periodic and final
evaluation, everything `finetune` does) and the ratio to LoRA, as the median of repeats
since shared machines are noisy. Then times our LoRA training step against PEFT's on the
same MiniGPT with the same config (bench_lora_peft.py's measurement) as a ratio.

    python benchmarks/bench_finetune.py [--device cpu] [--repeats 3] [--peft-repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import load_base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--peft-repeats", type=int, default=30, help="0 skips the PEFT comparison")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_base()
    configs = {
        "lora (default)": FinetuneConfig(),
        "full": FinetuneConfig(method="full"),
        "qlora": FinetuneConfig(method="qlora"),
    }
    finetune(FinetuneConfig(steps=2), base, device=args.device)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in configs}
    last = {}
    for _ in range(args.repeats):  # interleaved, so load changes hit every config alike
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            res = finetune(cfg, base, device=args.device)
            times[name].append(time.perf_counter() - t0)
            last[name] = res.metrics
    ref = statistics.median(times["lora (default)"])
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.repeats} repeats")
    print(
        f"{'config':<16} {'median s':>9} {'min s':>7} {'/ lora':>7} {'irr. acc':>9} {'en drift':>9}"
    )
    for name, ts in times.items():
        m = last[name]
        print(
            f"{name:<16} {statistics.median(ts):9.2f} {min(ts):7.2f} "
            f"{statistics.median(ts) / ref:7.2f} {m['irregular_accuracy']:9.3f} "
            f"{m['control_en_drift']:+9.2%}"
        )

    if args.peft_repeats:
        peft_step_ratio(torch.device(args.device), args.peft_repeats)


def peft_step_ratio(device: torch.device, repeats: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import bench_lora_peft as b
    except ImportError as e:  # peft is a test-only dependency
        print(f"PEFT comparison skipped: {e}")
        return
    ours, theirs = b.make_models(device)
    t = b.interleaved(
        {"ours": b.make_step(ours, device), "peft": b.make_step(theirs, device)}, 5, repeats
    )
    med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
    print(
        f"LoRA train step on MiniGPT (r={b.R}, alpha={b.ALPHA}, q,v, batch {b.BATCH}x{b.SEQ}): "
        f"ours {med['ours']:.2f} ms, PEFT {med['peft']:.2f} ms, ratio ours/PEFT "
        f"{med['ours'] / med['peft']:.3f}"
    )


if __name__ == "__main__":
    main()
