"""benchmarks/peak_trace.py's analysis: the moment of most bytes allocated in an allocator
history, and what was alive then, by the repository line that allocated it."""

from __future__ import annotations

import pytest
from bench_util import load_benchmark


def _peak_of():
    return load_benchmark("peak_trace").peak_of


def _frames(line: int, name: str) -> list[dict]:
    return [
        {"filename": "/opt/torch/nn/functional.py", "line": 1, "name": "linear"},
        {"filename": "/repo/minituner/scale/llama.py", "line": line, "name": name},
        {"filename": "/repo/benchmarks/bench.py", "line": 9, "name": "main"},
    ]


def _alloc(addr, size, line=1, name="f"):
    return {"action": "alloc", "addr": addr, "size": size, "frames": _frames(line, name)}


def _free(addr):
    return {"action": "free_requested", "addr": addr, "size": 0, "frames": []}


def test_the_peak_is_the_most_bytes_alive_and_lists_them_by_site():
    events = [
        _alloc(1, 100, 10, "mlp"),
        _alloc(2, 50, 20, "attn"),
        _free(1),  # 50 alive
        _alloc(3, 80, 10, "mlp"),  # 130
        _alloc(4, 30, 30, "norm"),  # 160: the peak
        _free(3),
        _alloc(5, 100, 40, "head"),  # 180? no: 50 + 30 + 100 = 180, a higher peak
        _free(5),
        _free(4),
    ]
    found = _peak_of()(events)
    assert found["peak_bytes"] == 180 and found["index"] == 6
    assert found["by_site"] == [
        ("minituner/scale/llama.py:40 head", 100, 1),
        ("minituner/scale/llama.py:20 attn", 50, 1),
        ("minituner/scale/llama.py:30 norm", 30, 1),
    ]
    assert found["at"] == ["minituner/scale/llama.py:40 head"]


def test_blocks_of_one_site_are_summed_and_frees_of_earlier_blocks_are_ignored():
    events = [_free(99), _alloc(1, 10, 5, "x"), _alloc(2, 15, 5, "x"), _free(1), _free(2)]
    found = _peak_of()(events)
    assert found["peak_bytes"] == 25
    assert found["by_site"] == [("minituner/scale/llama.py:5 x", 25, 2)]


@pytest.mark.parametrize("events", [[], [_free(1)]])
def test_no_allocation_gives_an_empty_answer(events):
    assert _peak_of()(events) == {"index": -1, "peak_bytes": 0, "by_site": [], "at": []}
