"""Pieces shared by pretraining and fine-tuning (minituner.minigpt.trainutil): the device
choice and its refusals, the seed bounds, the learning-rate schedule, seeding, and
$MINITUNER_TORCH_THREADS (how the CLI reports a bad value: tests/cli/test_cli_main.py)."""

from __future__ import annotations

import os
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.minigpt.trainutil import (
    MAX_SEED,
    THREADS_ENV,
    check_seed,
    lr_at,
    parse_torch_threads,
    resolve_device,
    seed_everything,
    torch_threads_from_env,
)


# ---------------------------------------------------------------- devices
def test_the_devices_that_work():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.parametrize(
    "device",
    ["mps", "meta", "xla", "CPU", "cpu:1", "cuda:x", "cuda:-1", "cuda:", " cpu", "", None, 0],
)
def test_other_devices_are_refused_by_name(device):
    with pytest.raises(ValueError, match="unknown device") as e:
        resolve_device(device)
    assert repr(device) in str(e.value) and "auto, cpu, cuda or cuda:N" in str(e.value)


def test_cpu_0_is_the_cpu():
    assert resolve_device("cpu:0") == torch.device("cpu:0")
    assert resolve_device("cpu:0").type == "cpu"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_it_is_refused(no_cuda, device):
    with pytest.raises(ValueError, match=f"device {device!r} asked for, but no CUDA GPU"):
        resolve_device(device)
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_index_the_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


# ---------------------------------------------------------------- seeds
@settings(max_examples=50, deadline=None)
@given(st.integers(0, MAX_SEED))
def test_every_seed_torch_takes_is_accepted(seed):
    check_seed(seed)
    torch.Generator().manual_seed(seed)  # and torch does take it


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64, True, False, 1.0, "1", None, [0]])
def test_other_seeds_are_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be a whole number from 0 to 2\*\*64 - 1") as e:
        check_seed(seed)
    assert repr(seed) in str(e.value)


def test_seed_everything_repeats_python_and_torch_draws():
    def draws(seed):
        g = seed_everything(seed)
        return random.random(), torch.rand(3).tolist(), torch.rand(3, generator=g).tolist()

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


# ---------------------------------------------------------------- the learning rate
def test_the_schedule_endpoints():
    peak, total, warmup = 1e-3, 100, 10
    assert lr_at(0, total, peak, warmup) == pytest.approx(peak / warmup)
    assert lr_at(warmup - 1, total, peak, warmup) == pytest.approx(peak)
    assert lr_at(warmup, total, peak, warmup) == pytest.approx(peak)  # the cosine starts at peak
    mid = warmup + (total - warmup) // 2
    assert lr_at(mid, total, peak, warmup) == pytest.approx(peak * (0.1 + 0.9 * 0.5))
    assert lr_at(total, total, peak, warmup) == pytest.approx(0.1 * peak)
    assert lr_at(total + 50, total, peak, warmup) == pytest.approx(0.1 * peak)  # stays there
    assert lr_at(total, total, peak, warmup, min_ratio=0.0) == pytest.approx(0.0, abs=1e-18)
    assert lr_at(0, total, peak, 0) == pytest.approx(peak)  # no warm-up


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 500),
    st.integers(0, 50),
    st.floats(1e-6, 1.0),
    st.floats(0.0, 1.0),
    st.data(),
)
def test_the_rate_rises_then_falls_and_stays_in_range(total, warmup, peak, min_ratio, data):
    rates = [lr_at(s, total, peak, warmup, min_ratio) for s in range(total + 1)]
    assert all(min_ratio * peak * (1 - 1e-12) <= r <= peak * (1 + 1e-12) for r in rates[warmup:])
    assert all(0 < r <= peak * (1 + 1e-12) for r in rates[: min(warmup, total + 1)])
    up, down = rates[: min(warmup, total + 1)], rates[warmup:]
    assert all(a < b for a, b in zip(up, up[1:], strict=False))
    assert all(a >= b * (1 - 1e-12) for a, b in zip(down, down[1:], strict=False))


# ---------------------------------------------------------------- $MINITUNER_TORCH_THREADS
@pytest.fixture
def threads(monkeypatch):
    before = torch.get_num_threads()
    yield lambda v: monkeypatch.setenv(THREADS_ENV, v)
    torch.set_num_threads(before)


@pytest.mark.parametrize(("value", "n"), [("2", 2), (" 3 ", 3), ("04", 4), ("1", 1)])
def test_a_thread_count_is_applied_and_returned(threads, value, n):
    threads(value)
    torch.set_num_threads(1 if n != 1 else 2)
    assert torch_threads_from_env() == n
    assert torch.get_num_threads() == n


@pytest.mark.parametrize("value", ["", "   "])
def test_no_thread_count_changes_nothing(threads, monkeypatch, value):
    torch.set_num_threads(2)
    threads(value)
    assert torch_threads_from_env() is None
    monkeypatch.delenv(THREADS_ENV)
    assert torch_threads_from_env() is None
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(
    "value", ["0", "1025", "-1", "+2", "1.5", "2e3", "two", "0x10", "99999999999999999999"]
)
def test_a_bad_thread_count_is_refused_naming_the_variable(threads, value):
    torch.set_num_threads(2)
    threads(value)
    with pytest.raises(ValueError, match="MINITUNER_TORCH_THREADS must be a whole number") as e:
        torch_threads_from_env()
    assert repr(value.strip()) in str(e.value)
    assert torch.get_num_threads() == 2  # nothing applied


@pytest.mark.parametrize(
    "value",
    ["²", "٣", "１", "1" * 5000, "9" * 20, "4 4", "4\u200b"],
    ids=["superscript-2", "arabic-indic-3", "fullwidth-1", "5000-digits", "20-digits",
         "inner-space", "zero-width-space"],
)  # fmt: skip
def test_a_digit_int_cannot_read_is_refused_naming_the_variable(threads, value):
    """issue 23, item 7: only ASCII digits count; '²' passes str.isdigit() but not int(),
    '٣' and '１' pass both, a 5000-digit number is over int()'s digit limit: each one
    ValueError that names the variable (the value shortened in the message)."""
    torch.set_num_threads(2)
    threads(value)
    with pytest.raises(ValueError, match="MINITUNER_TORCH_THREADS must be a whole number") as e:
        torch_threads_from_env()
    assert len(str(e.value)) < 200
    assert torch.get_num_threads() == 2  # nothing applied


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30) | st.from_regex(r"\s*[0-9]{1,6}\s*", fullmatch=True))
def test_any_text_is_a_thread_count_or_one_value_error(raw):
    """issue 23, item 7: for any string, the parser returns None (blank), a count from 1 to
    1024 written in ASCII digits, or raises ValueError naming the variable, nothing else."""
    try:
        n = parse_torch_threads(raw)
    except ValueError as e:
        assert str(e).startswith(f"{THREADS_ENV} must be a whole number from 1 to 1024")
        assert "\n" not in str(e)
        stripped = raw.strip()
        assert not (stripped.isascii() and stripped.isdigit() and 1 <= int(stripped) <= 1024)
        return
    if n is None:
        assert not raw.strip()
    else:
        assert raw.strip().isascii() and raw.strip().isdigit() and int(raw.strip()) == n
        assert 1 <= n <= 1024


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
)
def test_any_environment_value_applies_a_count_or_raises_value_error(raw):
    """issue 23, item 7: what the app and the CLI call; for any value the environment can
    hold, a count (applied), None, or ValueError -- never another exception."""
    before, old = torch.get_num_threads(), os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = raw
    try:
        try:
            n = torch_threads_from_env()
        except ValueError:
            assert torch.get_num_threads() == before  # nothing applied
        else:
            assert n is None or torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
        if old is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = old
