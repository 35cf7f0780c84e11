"""How many runs train at once (minituner.finetune.capacity), issue 25: MINITUNER_MAX_RUNS
is a whole number from 1 to 64 or a one-line error naming it; the default is one run on a
CPU and what fits in the GPU's memory, capped at 8."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.finetune import capacity


@pytest.mark.parametrize("value", ["1", "4", " 8 ", "64"])
def test_max_runs_from_the_environment(value):
    assert capacity.max_runs_from_env({capacity.ENV_VAR: value}) == int(value)


@pytest.mark.parametrize("value", ["0", "65", "-1", "2.5", "four", "1e3", "+3", "1_0", "9" * 40])
def test_a_bad_max_runs_is_one_line_naming_the_variable(value):
    with pytest.raises(ValueError, match="MINITUNER_MAX_RUNS") as e:
        capacity.max_runs_from_env({capacity.ENV_VAR: value})
    assert "\n" not in str(e.value) and "from 1 to 64" in str(e.value)


def test_unset_or_blank_means_the_default_one_run_on_a_cpu():
    assert capacity.max_runs_from_env({}) is None
    assert capacity.max_runs_from_env({capacity.ENV_VAR: "  "}) is None
    assert capacity.max_runs("cpu", env={}) == 1
    assert capacity.max_runs("cpu", env={capacity.ENV_VAR: "3"}) == 3


@settings(max_examples=200, deadline=None)
@given(free=st.integers(-(2**40), 2**42), run=st.one_of(st.none(), st.integers(-5, 2**36)))
def test_what_fits_is_between_one_and_eight(free, run):
    k = capacity.fits(free, run)
    assert 1 <= k <= capacity.MAX_DEFAULT
    per_run = (run if run and run > 0 else capacity.GUESS_RUN_BYTES) + capacity.CONTEXT_BYTES
    if k > 1:  # every run counted fits in the usable memory
        assert k * per_run <= capacity.USABLE * free


def test_an_80_gib_gpu_takes_eight_minigpt_runs_and_a_small_one_fewer():
    assert capacity.fits(80 * 2**30, 300 * 2**20) == 8
    assert capacity.fits(4 * 2**30, 300 * 2**20) == 2  # 0.8 x 4 GiB / (300 MiB + 1000 MiB)
    assert capacity.fits(2**20, None) == 1


# ---------------------------------------------------------------------- estimates
def test_seconds_per_step_is_the_median_of_finished_runs_and_a_guess_before_any():
    assert capacity.seconds_per_step([(10, 20.0), (40, 40.0), (20, 100.0)]) == 2.0
    assert capacity.seconds_per_step([]) == capacity.DEFAULT_RUN_S / 40


@settings(max_examples=200, deadline=None)
@given(
    remaining=st.lists(st.floats(-5, 500), max_size=8),
    waiting=st.lists(st.floats(0, 500), max_size=12),
    slots=st.integers(1, 8),
)
def test_start_estimates_follow_the_queue_order(remaining, waiting, slots):
    """A job never starts before the one ahead of it, nothing starts in the past, and
    with free slots the first waiting jobs start now."""
    eta = capacity.start_estimates(remaining, waiting, slots)
    assert len(eta) == len(waiting)
    assert all(b >= a for a, b in zip(eta, eta[1:], strict=False))
    assert all(t >= 0 for t in eta)
    free = max(0, slots - len(remaining))
    assert all(t == 0 for t in eta[:free])
    if len(waiting) > slots and not remaining:
        assert eta[slots] == min(max(0.0, w) for w in waiting[:slots])


def test_a_server_reports_a_bad_variable_and_uses_the_default(monkeypatch):
    monkeypatch.setenv(capacity.ENV_VAR, "all of them")
    k, problem = capacity.choose(None, "cpu")
    assert k == 1 and "MINITUNER_MAX_RUNS='all of them'" in problem and "default" in problem
    assert capacity.choose(3, "cpu") == (3, None)  # given by the caller: the variable is not read
    with pytest.raises(ValueError, match="max_runs"):
        capacity.choose(0, "cpu")


def test_the_measured_peak_of_a_stored_run_is_read_from_its_metrics():
    """K on a GPU follows a finished run's measured CUDA peak (the shipped runs were
    measured on a GPU); a run without one, or no run, gives None."""
    from minituner.store.runs import RunStore

    for info in RunStore().list()[:5]:
        m = info.metrics.memory
        want = m.measured.get("cuda_peak_allocated") if m and m.measured_on == "cuda" else None
        assert capacity.stored_peak(info.run_id) == want
    assert capacity.stored_peak("ffffffffffff") is None
