"""Small pieces shared by pretraining and fine-tuning: device choice, seeding (and the
largest seed, ``MAX_SEED``), the learning-rate schedule, a text progress bar, and the
one reader of ``$MINITUNER_TORCH_THREADS`` (the CLI, the app and the training child
process all apply it through :func:`torch_threads_from_env`)."""

from __future__ import annotations

import math
import os
import random
import re
import sys
import time

import torch

_DEVICE_RE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda when present, else cpu; otherwise ``cpu``, ``cuda`` or
    ``cuda:N``. Other torch device types (``meta``, ``mps``, ``xla``, …) cannot train
    this code, so they are refused here rather than failing deep inside training.

    Raises:
        ValueError: an unknown device, cuda asked for on a machine without it, or a GPU
            index the machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = _DEVICE_RE.fullmatch(device) if isinstance(device, str) else None
    if m is None or (m[1] == "cpu" and m[2] not in (None, "0")):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if m[1] == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} asked for, but no CUDA GPU is available here; use cpu"
            )
        n = torch.cuda.device_count()
        if m[2] is not None and int(m[2]) >= n:
            raise ValueError(
                f"device {device!r}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}"
            )
    return torch.device(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


MAX_SEED = 2**64 - 1  # the largest seed torch.manual_seed takes


def check_seed(seed) -> None:
    """Raises ValueError unless ``seed`` is a whole number torch.manual_seed takes."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class ProgressBar:
    """A one-line text progress bar for the CLI (stderr, redrawn at most 10x a second)."""

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._next_pct = 0

    def update(self, done: int, info: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < 0.1 and done < self.total:
            return
        frac = done / self.total if self.total else 1.0
        if not self._tty:  # a log file: one line per 10%, not a redraw per step
            if frac * 100 < self._next_pct and not force:
                return
            self._next_pct = int(frac * 10) * 10 + 10
        self._last = now
        fill = int(self.width * frac)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * fill + "-" * (self.width - fill)
        end = "\n" if not self._tty else ""
        self.stream.write(
            ("\r" if self._tty else "")
            + f"{self.label} [{bar}] {done}/{self.total} {info} {elapsed:5.1f}s<{eta:4.0f}s "
            + end
        )
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()


THREADS_ENV = "MINITUNER_TORCH_THREADS"
MAX_THREADS = 1024
_ASCII_DIGITS = re.compile(r"[0-9]+")  # ASCII only: not '²', '٣' or '１' (str.isdigit's)


def parse_torch_threads(raw: str) -> int | None:
    """A ``$MINITUNER_TORCH_THREADS`` value read: None when blank, else a whole number
    from 1 to :data:`MAX_THREADS` written in ASCII digits (surrounding whitespace is
    ignored, and leading zeros).

    Raises:
        ValueError: any other text -- one message naming the variable, never int()'s own
            (a digit ``str.isdigit`` knows but int() does not, or 5000 digits).
    """
    text = raw.strip()
    if not text:
        return None
    digits = text.lstrip("0")
    if _ASCII_DIGITS.fullmatch(text) and len(digits) <= 4 and 1 <= int(digits or 0) <= MAX_THREADS:
        return int(digits)
    shown = text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"
    raise ValueError(
        f"{THREADS_ENV} must be a whole number from 1 to {MAX_THREADS} in ASCII digits, "
        f"got {shown!r}"
    )


def torch_threads_from_env() -> int | None:
    """Apply ``$MINITUNER_TORCH_THREADS`` (:func:`parse_torch_threads`) to torch's CPU
    threads; returns it, or None when unset or blank.

    Raises:
        ValueError: any other value (and only ValueError: nothing is applied then).
    """
    n = parse_torch_threads(os.environ.get(THREADS_ENV, ""))
    if n is not None:
        torch.set_num_threads(n)
    return n
