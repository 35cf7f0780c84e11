"""Tests for app/format.py: sizes in binary and decimal units, memory breakdown rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.format import breakdown_table, common_unit, format_bytes  # noqa: E402
from minituner.memory.predict import predict_memory  # noqa: E402
from minituner.memory.shapes import SHAPES  # noqa: E402


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(98_304) == "96.0 KiB"
    assert format_bytes(4_718_592) == "4.5 MiB"
    assert format_bytes(4_718_592, binary=False) == "4.7 MB"
    assert format_bytes(84e9, digits=0, binary=False) == "84 GB"
    assert format_bytes(84e9) == "78.2 GiB"
    assert format_bytes(-2048) == "-2.0 KiB"


def test_breakdown_table():
    pred = predict_memory(SHAPES["minigpt"], "qlora", batch=1, seq=32)
    measured = {"weights": 10, "gradients": 5, "optimizer": 5, "lora": 0, "nf4": 0}
    rows = breakdown_table(pred, measured)
    sources = {r["source"] for r in rows}
    assert sources == {"predicted", "measured"}
    for s in sources:
        assert sum(r["fraction"] for r in rows if r["source"] == s) == pytest.approx(1.0)
    act = [r for r in rows if r["category"] == "activations"]
    assert len(act) == 1 and act[0]["estimate"] and act[0]["bytes"] == pred["activations"]
    assert next(r for r in rows if r["source"] == "measured")["label"] == "10 B"


def test_a_column_of_sizes_reads_in_one_unit():
    sizes = [3_145_728, 1_572_864, 409_600, 397_312]  # fp32, bf16, NF4, NF4 + DQ of one model
    unit = common_unit(sizes)
    assert unit == "MiB"
    assert [format_bytes(n, digits=2, unit=unit) for n in sizes] == [
        "3.00 MiB", "1.50 MiB", "0.39 MiB", "0.38 MiB",
    ]  # fmt: skip
    assert common_unit([512, 100]) == "B" and format_bytes(100, unit="B") == "100 B"
    assert common_unit([]) == "B"
    assert format_bytes(1_500_000, binary=False, unit="MB") == "1.5 MB"
    with pytest.raises(ValueError, match="unknown unit 'MB'"):
        format_bytes(1, unit="MB")
