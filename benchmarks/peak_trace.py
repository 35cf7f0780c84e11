"""Where a 7B QLoRA step's memory peak is: the live allocations at that moment, by source line.

    python benchmarks/peak_trace.py --targets qv --out peak_qv.json     # CUDA only

``bench_7b_qlora.py`` reports the peak (``torch.cuda.max_memory_allocated``) of a whole
configuration: eager warm-up, the CUDA-graph capture and the replays. This script runs the
same configuration (same model, batch, LoRA and step as the benchmark, through its
``train_steps``) with PyTorch's allocator history on, then walks the recorded events
(``alloc`` adds a block's size, ``free_requested`` removes it), finds the event at which
the bytes allocated since the start were highest, and prints the blocks alive there,
summed by the first frame in this repository that allocated them (file:line function), and
the repository frames of the allocation that reached the peak (whether it came in the eager
warm-up or the graph capture shows there: ``graphs.py``). It asserts nothing and writes
JSON (no pickles).

The trace runs with the checkpoints' early stop off (``set_checkpoint_early_stop(False)``):
PyTorch stops a recompute by raising from a saved-tensor hook, and with the allocator
recording Python stacks that exception came back from ``Function.apply`` as a SystemError
(torch 2.11, one H100). Without the early stop a recompute also runs the rest of its layer
(here: an uninitialised output and the residual), so the printed benchmark peak is this
run's: compare it with ``bench_7b_qlora.py``'s before reading the sites.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def peak_of(events: list[dict], repo_marker: str = "minituner") -> dict:
    """The moment of most bytes allocated over ``events`` (the allocator history's
    ``device_traces`` entries, oldest first) and what was alive then.

    Returns ``{"index", "peak_bytes", "by_site": [(site, bytes, blocks), ...], "at": [...]}``
    (``at``: the repository frames of the allocation at the peak, innermost first), sites
    sorted by bytes, largest first; a site is the first frame whose file path contains
    ``repo_marker`` ("file:line function"), else the first frame, else "?". Bytes count
    from the first event: blocks allocated before it are not in the sum."""
    live: dict[int, tuple[int, list]] = {}
    now = best = 0
    best_index, best_live = -1, {}
    for i, ev in enumerate(events):
        action = ev.get("action")
        if action == "alloc":
            live[ev["addr"]] = (ev["size"], ev.get("frames", []))
            now += ev["size"]
            if now > best:
                best, best_index, best_live = now, i, dict(live)
        elif action == "free_requested" and ev["addr"] in live:
            now -= live.pop(ev["addr"])[0]
    sites: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, frames in best_live.values():
        site = _site(frames, repo_marker)
        sites[site][0] += size
        sites[site][1] += 1
    by_site = sorted(((s, b, n) for s, (b, n) in sites.items()), key=lambda t: -t[1])
    frames = events[best_index].get("frames", []) if best_index >= 0 else []
    at = [_site([f], repo_marker) for f in frames if repo_marker in f.get("filename", "")]
    return {"index": best_index, "peak_bytes": best, "by_site": by_site, "at": at}


def _site(frames: list[dict], marker: str) -> str:
    for f in frames:
        if marker in f.get("filename", ""):
            name = f["filename"].split(marker, 1)[1].lstrip("/")
            return f"{marker}/{name}:{f.get('line')} {f.get('name')}"
    if frames:
        f = frames[0]
        return f"{f.get('filename')}:{f.get('line')} {f.get('name')}"
    return "?"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_7b_qlora", ROOT / "benchmarks" / "bench_7b_qlora.py")  # fmt: skip
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_7b_qlora", mod)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", choices=("qv", "all"), default="qv")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--top", type=int, default=20, help="sites to print")
    p.add_argument("--no-graph", action="store_true", help="eager steps only")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        p.error("needs CUDA (the allocator history is a CUDA feature)")
    bench = _bench()
    device = torch.device("cuda")
    bargs = bench.parse_args(["--batch", str(args.batch), "--r", str(args.r), "--steps", "1"])
    cfg = bench._config("7b")
    model = bench.build_nf4_llama(cfg, device, torch.bfloat16, seed=bargs.seed, checkpointing=True)
    batches = bench._batches(bargs, cfg, device, bargs.warmup + bargs.steps)
    from torch.utils.checkpoint import set_checkpoint_early_stop

    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    with set_checkpoint_early_stop(False):
        res, _ = bench.train_ours(model, args.r, args.targets, True, not args.no_graph, batches, bargs, device)  # fmt: skip
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = snap["device_traces"][device.index or 0]
    found = peak_of(events)
    out = {
        "device_name": torch.cuda.get_device_name(device),
        "targets": args.targets,
        "graph": not args.no_graph,
        "bench_peak_bytes": res.get("peak_bytes"),
        "allocated_before_bytes": res.get("allocated_before_bytes"),
        "events": len(events),
        **found,
    }
    print(
        f"{out['device_name']}: r={args.r} on {args.targets}, batch {args.batch}, checkpoints' "
        f"early stop off; benchmark peak "
        f"{(res.get('peak_bytes') or 0) / MiB:.1f} MiB, held before the steps "
        f"{(res.get('allocated_before_bytes') or 0) / MiB:.1f} MiB; most allocated during the "
        f"steps {found['peak_bytes'] / MiB:.1f} MiB at event {found['index']} of {len(events)}"
    )
    for site, size, n in found["by_site"][: args.top]:
        print(f"  {size / MiB:9.1f} MiB  x{n:<4} {site}")
    print("the allocation at the peak, from:")
    for site in found["at"][:12]:
        print(f"    {site}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
