"""The GPU's SM clock, power and clock-limit reasons while a benchmark runs (NVML).

A GEMM runs as fast as the SM clock lets it, and an H100 or H200 lowers that clock when it
reaches its power limit. So the same cuBLAS kernel can take longer in a step that keeps
the GPU busy than in one that leaves it idle part of the time: ``bench_7b_qlora.py
--clocks`` samples, during each system's timed steps, what NVML reports and keeps the
summary beside the step time, so a ratio between two systems can be read with their clocks.

    with ClockSampler(device_index=0) as s:
        ...  # the timed work
    s.summary()  # {"samples": ..., "sm_mhz_mean": ..., "limits": {"sw_power_cap": 0.8, ...}}

NVML comes from the ``nvidia-ml-py`` package (``import pynvml``). Without it, or without an
NVIDIA driver, :func:`nvml_reader` raises :class:`ClocksUnavailable` and the benchmark
says so instead of guessing.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable

# NVML's clocks-event (throttle) reason bits, by the name the summary gives them
REASONS = {
    "gpu_idle": 0x1,
    "applications_clocks": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}


class ClocksUnavailable(RuntimeError):
    """NVML cannot be read here (no pynvml, no driver, or no such device)."""


# one sample: (SM clock MHz, power W, reason bits, temperature °C)
Sample = tuple[float, float, int, float]


def nvml_reader(device_index: int = 0) -> tuple[Callable[[], Sample], dict]:
    """(a function returning one :data:`Sample`, static facts such as the power limit).

    Raises:
        ClocksUnavailable: pynvml is missing, or NVML cannot open the device.
    """
    try:
        import pynvml
    except ImportError as exc:
        raise ClocksUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from exc
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
        max_sm = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
    except pynvml.NVMLError as exc:
        raise ClocksUnavailable(f"NVML: {exc}") from exc
    reasons = (
        getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    )

    def read() -> Sample:
        return (
            float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            int(reasons(handle)),
            float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        )

    return read, {"power_limit_w": limit_w, "sm_mhz_max": float(max_sm)}


def summarize(samples: list[Sample], facts: dict | None = None) -> dict:
    """Mean and range of the samples, and the share of samples with each limit reason."""
    if not samples:
        return {"samples": 0, **(facts or {})}
    sm = [s[0] for s in samples]
    power = [s[1] for s in samples]
    return {
        "samples": len(samples),
        **(facts or {}),
        "sm_mhz_mean": statistics.fmean(sm),
        "sm_mhz_min": min(sm),
        "sm_mhz_max_seen": max(sm),
        "power_w_mean": statistics.fmean(power),
        "power_w_max": max(power),
        "temp_c_max": max(s[3] for s in samples),
        "limits": {
            name: sum(1 for s in samples if s[2] & bit) / len(samples)
            for name, bit in REASONS.items()
        },
    }


class ClockSampler:
    """Samples ``read`` every ``period_s`` seconds on a thread between enter and exit."""

    def __init__(self, read: Callable[[], Sample], facts: dict | None = None,
                 period_s: float = 0.01):  # fmt: skip
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.read, self.facts, self.period_s = read, dict(facts or {}), period_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.read())
            except Exception as exc:  # a reading that fails stops sampling, said in summary
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.period_s)

    def __enter__(self) -> ClockSampler:
        self.samples, self.error = [], None
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="clock-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None

    def summary(self) -> dict:
        out = summarize(self.samples, self.facts)
        if self.error:
            out["error"] = self.error
        return out


def line(summary: dict) -> str:
    """One printable line: mean SM clock, power against the limit, the main limit reasons."""
    if not summary.get("samples"):
        return f"clocks: no samples{' (' + summary['error'] + ')' if 'error' in summary else ''}"
    limits = {k: v for k, v in summary["limits"].items() if v > 0 and k != "gpu_idle"}
    text = (
        f"clocks: SM {summary['sm_mhz_mean']:.0f} MHz mean "
        f"({summary['sm_mhz_min']:.0f}-{summary['sm_mhz_max_seen']:.0f})"
        f", power {summary['power_w_mean']:.0f} W mean"
    )
    if summary.get("power_limit_w"):
        text += f" of {summary['power_limit_w']:.0f} W"
    if limits:
        text += ", limited by " + ", ".join(f"{k} {v:.0%}" for k, v in limits.items())
    return text + f" ({summary['samples']} samples)"
