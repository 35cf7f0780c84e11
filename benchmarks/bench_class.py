"""A class on one server: N runs submitted at once through the run queue, side by side with
the same N configurations trained one after the other by the CLI, in one run.

    python benchmarks/bench_class.py --runs 3 --max-runs 1 [--repeats 2]   # a CPU
    python benchmarks/bench_class.py --runs 8 --max-runs 4                 # one GPU

* cli:   `python -m minituner finetune --seed S --force` for each configuration in turn
         (the default LoRA config, r=8, alpha=16, q,v, 40 steps; one seed each so that every
         run is its own), the whole command each time: interpreter start, imports, training,
         the final evaluation and the save;
* queue: the app's scheduler (app/trainer.py: the run queue of minituner/finetune/queue.py,
         up to K training children) with the N configurations submitted at once by N
         sessions, from the first submit until the last run is stored. No browser: the
         queue lives outside Streamlit.

It prints each side's total wall time, the queue's total over the CLI's total (on a CPU
with K = 1 the queue should add little: issue 25 asks for at most 1.15x) and over one
CLI run's median (on a GPU with K = 4 and 8 runs, issue 25 asks for at most 2.5x), how
long each queued run waited and trained, and on a GPU each run's memory: the training
child's whole footprint as nvidia-smi reports it (CUDA context included, sampled) and
the peak the run measured itself (torch's max_memory_allocated, in its metrics.json).
Both sides store their runs in temporary caches; with ``--repeats`` the rounds alternate
which side goes first, and the median ratio is printed. Timings are ratios within one run on
the machine it ran on: say which machine, and keep other work off it if you can.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED0 = 2500  # seeds SEED0, SEED0 + 1, ...: runs no store holds yet


def run_cli(seed: int, steps: int, device: str, env: dict) -> float:
    cmd = [sys.executable, "-m", "minituner", "finetune", "--steps", str(steps),
           "--seed", str(seed), "--device", device, "--force"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


class GpuSampler:
    """The largest GPU memory nvidia-smi reports per process, sampled every 0.2 s."""

    def __init__(self) -> None:
        self.smi = shutil.which("nvidia-smi")
        self.peak: dict[int, int] = {}  # pid -> MiB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if self.smi:
            self._thread.start()

    def _loop(self) -> None:
        query = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run([self.smi, *query], capture_output=True, text=True,
                                     timeout=5).stdout  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                continue
            for line in out.strip().splitlines():
                try:
                    pid, mib = (int(x) for x in line.split(","))
                except ValueError:
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0), mib)

    def stop(self) -> None:
        self._stop.set()


def run_queue(seeds: list[int], steps: int, device: str, k: int, cache: Path, db: Path):
    """All runs submitted at once by one session each; returns the total wall time, the
    trainer and the job ids."""
    from app.trainer import Trainer
    from minituner.finetune.config import FinetuneConfig

    t = Trainer(db=db, max_runs=k, device=device)
    sampler = GpuSampler()
    pids: dict[int, int] = {}
    t0 = time.perf_counter()
    ids = [t.submit(FinetuneConfig(steps=steps, seed=s), owner=f"learner{s}", cache=str(cache))
           for s in seeds]  # fmt: skip
    while True:  # one queue read per poll; a running job's pid from the trainer's memory
        rows = {j.id: j for j in t.queue.jobs()}
        for j in ids:
            if rows[j].state == "training" and not pids.get(j):
                pids[j] = t.snapshot(j).pid
        if all(rows[j].state not in ("waiting", "training") for j in ids):
            break
        time.sleep(0.2)
    total = time.perf_counter() - t0
    sampler.stop()
    t.close()
    return total, t, ids, pids, sampler.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="N: runs submitted at once")
    ap.add_argument("--max-runs", type=int, default=1, help="K: runs that train at once")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--repeats", type=int, default=1, help="rounds, alternating which side goes first"
    )
    args = ap.parse_args()

    import torch

    from minituner.minigpt.trainutil import device_name, resolve_device

    dev = resolve_device(args.device)
    where = device_name(dev) if dev.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()  # fmt: skip
    print(f"bench_class: N={args.runs} default LoRA runs (r=8, alpha=16, q,v, {args.steps} "
          f"steps, seeds {SEED0}..{SEED0 + args.runs - 1}), K={args.max_runs}, on {where}; "
          f"torch {torch.__version__}, {platform.node()}, commit {commit}")  # fmt: skip
    seeds = [SEED0 + i for i in range(args.runs)]
    results = []
    for r in range(args.repeats):
        queue_first = r % 2 == 1  # repeats alternate which side goes first (drift in load)
        results.append(one_repeat(args, seeds, queue_first))
    cli_totals = [c for c, _, _ in results]
    ratios = [q / c for c, q, _ in results]
    ones = [o for _, _, o in results]
    print()
    print("| repeat | CLI total (s) | queue total (s) | queue / CLI total | queue / one CLI run |")
    print("|---:|---:|---:|---:|---:|")
    for i, (c, q, o) in enumerate(results, 1):
        print(f"| {i} | {c:.1f} | {q:.1f} | {q / c:.2f} | {q / o:.2f} |")
    print(f"\nmedian over {len(results)} repeat(s): queue / CLI runs' total = "
          f"{statistics.median(ratios):.2f}; queue / one CLI run = "
          f"{statistics.median(q / o for (_, q, _), o in zip(results, ones, strict=True)):.2f} "
          f"(one CLI run: median {statistics.median(ones):.1f} s; CLI totals "
          f"{', '.join(f'{c:.1f}' for c in cli_totals)} s)")  # fmt: skip


def one_repeat(args, seeds: list[int], queue_first: bool) -> tuple[float, float, float]:
    """One round of both sides; returns (CLI total, queue total, one CLI run's median)."""
    from minituner.store.runs import RunStore

    with tempfile.TemporaryDirectory(prefix="bench-class-") as tmp:
        env = dict(os.environ, MINITUNER_CACHE=str(Path(tmp) / "cli"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        cache = Path(tmp) / "queue"

        def queue_side():
            return run_queue(
                seeds, args.steps, args.device, args.max_runs, cache, Path(tmp) / "q.sqlite3"
            )

        cli = []
        if queue_first:
            total, t, ids, pids, gpu = queue_side()
            print(f"  queue: all {args.runs} done in {total:.1f} s", flush=True)
        for s in seeds:
            cli.append(run_cli(s, args.steps, args.device, env))
            print(f"  cli seed {s}: {cli[-1]:.1f} s", flush=True)
        if not queue_first:
            total, t, ids, pids, gpu = queue_side()
            print(f"  queue: all {args.runs} done in {total:.1f} s", flush=True)
        store = RunStore(roots=[cache], save_root=cache)
        print("| job | status | waited (s) | trained (s) | GPU memory, nvidia-smi (MiB) "
              "| CUDA peak allocated (MiB) |")  # fmt: skip
        print("|---:|---|---:|---:|---:|---:|")
        for j in ids:
            job = t.queue.get(j)
            waited = job.started_at - job.submitted_at
            trained = job.ended_at - job.started_at
            smi = gpu.get(pids.get(j, -1))
            peak = None
            info = store.find(job.run_id) if job.run_id else None
            if info is not None and info.metrics.memory is not None:
                peak = info.metrics.memory.measured.get("cuda_peak_allocated")
            print(f"| {j} | {job.state} | {waited:.1f} | {trained:.1f} | "
                  f"{'-' if smi is None else smi} | "
                  f"{'-' if peak is None else f'{peak / 2**20:.0f}'} |")  # fmt: skip
        states = [t.queue.get(j).state for j in ids]
    if states.count("finished") != len(states):
        sys.exit(f"some queued runs did not finish: {states}")
    return sum(cli), total, statistics.median(cli)


if __name__ == "__main__":
    main()
