"""How many live runs one server trains at once (K), and when a waiting one starts.

Each run is a child process of its own (``minituner.finetune.worker``). On a CPU the
runs would share the same few cores, so one at a time finishes each as early as it can
and the queue loses nothing: K = 1. On a GPU a MiniGPT run needs a few hundred MiB beside
a GPU of tens of GiB, so several train side by side: K is how many runs fit in the free
GPU memory, each counted as its measured CUDA peak (the largest of the latest finished
runs, :attr:`minituner.store.records.MemoryRecord`'s ``cuda_peak_allocated``, or a guess
before any) plus the CUDA context every process holds, capped at ``MAX_DEFAULT`` (the
GPU's compute, not its memory, is then what the runs share).

``MINITUNER_MAX_RUNS`` overrides it: a whole number from 1 to ``MAX_RUNS``; anything else
is a ValueError of one line that names the variable.

While jobs wait, :func:`start_estimates` says when each should start: K slots, the
running jobs' time left and the waiting jobs' lengths, each estimated from the measured
seconds per step of finished runs (:func:`seconds_per_step`).
"""

from __future__ import annotations

import heapq
import os
import shutil
import statistics
import subprocess
from pathlib import Path

ENV_VAR = "MINITUNER_MAX_RUNS"
MAX_RUNS = 64
MAX_DEFAULT = 8  # the default on a GPU is at most this many runs at once
# what each child holds besides its tensors (CUDA context, allocator): measured on an H100,
# nvidia-smi showed 1104 MiB per training child whose torch peak was 108 MiB
# (benchmarks/results/class_h100.txt)
CONTEXT_BYTES = 1000 * 2**20
GUESS_RUN_BYTES = 256 * 2**20  # a run's peak before any is measured (MiniGPT: ~110 MiB)
USABLE = 0.8  # leave a fifth of the free memory to others
DEFAULT_RUN_S = 60.0  # a run's guessed length before any run has finished


def max_runs_from_env(env: dict | None = None) -> int | None:
    """``MINITUNER_MAX_RUNS`` as a count; None when it is unset or blank.

    Raises:
        ValueError: not a whole number from 1 to ``MAX_RUNS`` (one line).
    """
    raw = (os.environ if env is None else env).get(ENV_VAR, "")
    text = raw.strip()
    if not text:
        return None
    try:
        n = int(text, 10)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_RUNS or not text.isdigit():
        raise ValueError(
            f"{ENV_VAR}={raw[:40]!r} is not a whole number from 1 to {MAX_RUNS} "
            "(how many runs train at once)"
        )
    return n


def fits(free_bytes: int, run_bytes: int | None) -> int:
    """How many runs of ``run_bytes`` (None: not measured yet) fit in ``free_bytes`` of
    GPU memory, each with its CUDA context; at least 1, at most ``MAX_DEFAULT``."""
    per_run = (run_bytes if run_bytes and run_bytes > 0 else GUESS_RUN_BYTES) + CONTEXT_BYTES
    return max(1, min(MAX_DEFAULT, int(USABLE * max(0, free_bytes)) // per_run))


def gpu_free_bytes() -> int | None:
    """Free memory of the first GPU: nvidia-smi (no CUDA context in this process), else
    torch; None without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout  # fmt: skip
            return int(out.split()[0]) * 2**20
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(0)
    return int(free)


def default_max_runs(device: str = "auto", run_bytes: int | None = None) -> int:
    """K when ``MINITUNER_MAX_RUNS`` is unset: 1 on a CPU, what fits on a GPU."""
    from minituner.minigpt.trainutil import resolve_device

    if resolve_device(device).type != "cuda":
        return 1
    free = gpu_free_bytes()
    return 1 if free is None else fits(free, run_bytes)


def max_runs(device: str = "auto", run_bytes: int | None = None, env: dict | None = None) -> int:
    """K: ``MINITUNER_MAX_RUNS`` when set, else :func:`default_max_runs`.

    Raises:
        ValueError: a bad ``MINITUNER_MAX_RUNS`` (one line).
    """
    n = max_runs_from_env(env)
    return n if n is not None else default_max_runs(device, run_bytes)


def choose(max_runs: int | None = None, device: str = "auto") -> tuple[int, str | None]:
    """A server's K and the problem to report, if any: ``max_runs`` when given, else
    ``MINITUNER_MAX_RUNS``, else :func:`default_max_runs`; a bad variable is reported
    (one line) and the default used, so the app still starts.

    Raises:
        ValueError: ``max_runs`` given and not a whole number >= 1.
    """
    if max_runs is not None:
        if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
            raise ValueError(f"max_runs must be a whole number >= 1, got {max_runs!r}")
        return max_runs, None
    try:
        return max_runs_from_env() or default_max_runs(device), None
    except ValueError as e:
        return default_max_runs(device), f"{e}; using the default"


def on_gpu(device: str) -> bool:
    from minituner.minigpt.trainutil import resolve_device

    return resolve_device(device).type == "cuda"


def stored_peak(run_id: str, cache: str | None = None) -> int | None:
    """A stored run's measured CUDA peak in bytes (its metrics.json), or None."""
    from minituner.store.runs import RunStore

    try:
        info = (RunStore(roots=[Path(cache)]) if cache else RunStore()).find(run_id)
    except (OSError, ValueError):
        return None
    memory = None if info is None else info.metrics.memory
    if memory is None or memory.measured_on not in (None, "cuda"):
        return None
    return memory.measured.get("cuda_peak_allocated")


# ---------------------------------------------------------------------- when a job starts
def seconds_per_step(durations: list[tuple[int, float]]) -> float:
    """The median measured seconds per step of finished runs (startup included); a
    guess of ``DEFAULT_RUN_S`` per 40 steps before any run has finished."""
    rates = [s / max(1, n) for n, s in durations if s >= 0]
    return statistics.median(rates) if rates else DEFAULT_RUN_S / 40


def start_estimates(remaining_s: list[float], waiting_s: list[float], slots: int) -> list[float]:
    """Seconds from now until each waiting job starts: ``remaining_s`` are the running
    jobs' estimated seconds left, ``waiting_s`` the waiting jobs' estimated lengths in
    queue order, ``slots`` how many train at once. Each waiting job takes the slot that
    frees first (the queue is first come, first served)."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    free = sorted(max(0.0, r) for r in remaining_s)[:slots]
    free += [0.0] * (slots - len(free))
    heapq.heapify(free)
    out = []
    for length in waiting_s:
        t = heapq.heappop(free)
        out.append(t)
        heapq.heappush(free, t + max(0.0, length))
    return out
