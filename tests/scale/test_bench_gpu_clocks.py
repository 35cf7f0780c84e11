"""benchmarks/gpu_clocks.py and bench_7b_qlora's same-kernel comparison, off the GPU: the
sampler keeps what a (fake) NVML reading returns while it runs and nothing after, the
summary's means and limit shares are those of the samples, and two profiles compare only
the GEMM kernels both ran the same number of times."""

from __future__ import annotations

import sys
import time

import pytest
from bench_util import load_benchmark


def _clocks():
    return load_benchmark("gpu_clocks")


def _wait_for_samples(sampler, n: int, timeout_s: float = 1.0) -> None:
    end = time.monotonic() + timeout_s
    while len(sampler.samples) < n and time.monotonic() < end:
        time.sleep(0.001)


def test_summary_means_ranges_and_limit_shares():
    mod = _clocks()
    power_cap, idle = mod.REASONS["sw_power_cap"], mod.REASONS["gpu_idle"]
    samples = [(1980.0, 400.0, 0, 50.0), (1700.0, 700.0, power_cap, 60.0),
               (1600.0, 690.0, power_cap | idle, 70.0), (1800.0, 650.0, 0, 65.0)]  # fmt: skip
    s = mod.summarize(samples, {"power_limit_w": 700.0})
    assert s["samples"] == 4 and s["power_limit_w"] == 700.0
    assert s["sm_mhz_mean"] == pytest.approx(1770.0)
    assert (s["sm_mhz_min"], s["sm_mhz_max_seen"]) == (1600.0, 1980.0)
    assert s["power_w_mean"] == pytest.approx(610.0) and s["power_w_max"] == 700.0
    assert s["temp_c_max"] == 70.0
    assert s["limits"]["sw_power_cap"] == 0.5 and s["limits"]["gpu_idle"] == 0.25
    assert s["limits"]["hw_thermal"] == 0.0
    text = mod.line(s)
    assert "SM 1770 MHz mean (1600-1980)" in text and "of 700 W" in text
    assert "sw_power_cap 50%" in text and "gpu_idle" not in text
    assert mod.summarize([]) == {"samples": 0}
    assert mod.line({"samples": 0, "error": "no NVML"}) == "clocks: no samples (no NVML)"


def test_the_sampler_reads_between_enter_and_exit_only():
    mod = _clocks()
    reads = []

    def read():
        reads.append(1)
        return (1500.0 + len(reads), 500.0, 0, 40.0)

    sampler = mod.ClockSampler(read, {"sm_mhz_max": 1980.0}, period_s=0.001)
    with sampler:
        _wait_for_samples(sampler, 5)
    n = len(reads)
    assert n >= 5 and len(sampler.samples) == n
    assert sampler.summary()["samples"] == n and sampler.summary()["sm_mhz_max"] == 1980.0
    with pytest.raises(ValueError, match="positive"):
        mod.ClockSampler(read, period_s=0)
    assert len(reads) == n  # stopped: no reading after exit


def test_a_failing_reading_stops_the_sampler_and_is_reported():
    mod = _clocks()
    calls = []

    def read():
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("driver went away")
        return (1000.0, 100.0, 0, 30.0)

    sampler = mod.ClockSampler(read, period_s=0.001)
    with sampler:
        _wait_for_samples(sampler, 3, timeout_s=0.2)
    s = sampler.summary()
    assert s["samples"] == 2 and s["error"] == "RuntimeError: driver went away"


def test_nvml_reader_without_pynvml_says_what_to_install(monkeypatch):
    mod = _clocks()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(mod.ClocksUnavailable, match="nvidia-ml-py"):
        mod.nvml_reader(0)


def _profile(*kernels):
    return {"profile": {"top_kernels": [
        {"name": n, "count": c, "seconds": t, "share_of_busy": 0.0} for n, c, t in kernels
    ]}}  # fmt: skip


def test_same_gemm_kernels_compares_only_gemms_run_equally_often():
    bench = load_benchmark("bench_7b_qlora")
    gemm_a, gemm_b = "nvjet_sm90_tst_192x192_TNN", "nvjet_sm90_tst_256x128_badd_TNT"
    ours = _profile((gemm_a, 128, 0.070), (gemm_b, 224, 0.050), ("_rope", 192, 0.004),
                    ("cutlass_gemm_x", 10, 0.001))  # fmt: skip
    theirs = _profile((gemm_a, 128, 0.063), (gemm_b, 100, 0.020), ("_rope", 192, 0.002),
                      ("cutlass_gemm_x", 10, 0.002))  # fmt: skip
    same = bench.same_gemm_kernels(ours, theirs)
    # gemm_b ran a different number of times; _rope is not a GEMM
    assert [k["name"] for k in same["kernels"]] == [gemm_a, "cutlass_gemm_x"]
    assert same["seconds_ours"] == pytest.approx(0.071)
    assert same["seconds_peer"] == pytest.approx(0.065)
    assert same["time_ours_over_peer"] == pytest.approx(0.071 / 0.065)
    assert bench.same_gemm_kernels(ours, _profile(("_rope", 192, 0.002))) is None
    assert bench.same_gemm_kernels({}, theirs) is None
    ratio = bench._ratio({"step_s_median": 1.0, **ours}, {"step_s_median": 2.0, **theirs})
    assert ratio["step_time_ours_over_peer"] == 0.5
    assert ratio["same_gemm_kernels"]["time_ours_over_peer"] == pytest.approx(0.071 / 0.065)
