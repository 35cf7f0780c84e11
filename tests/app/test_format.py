"""Tests for app/format.py: sizes in binary and decimal units, memory breakdown rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.format import breakdown_table, format_bytes  # noqa: E402
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
