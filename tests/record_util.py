"""Helpers of the typed-record tests (tests/store, tests/experiments, tests/analysis): change
one field of a record's JSON, check that reading it is refused naming the file and the
field, and a small subspace.json record."""

from __future__ import annotations

import pytest

from minituner.analysis import subspace_record as R

DELETE = object()  # set_field's value that removes the field


def set_field(path: list, value):
    """A change that sets (or with DELETE removes) the field at ``path`` of a JSON object."""

    def change(d):
        for k in path[:-1]:
            d = d[k]
        if value is DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return change


def assert_refused(read, data, source: str, field: str) -> None:
    """``read(data, source)`` raises a one-line ValueError naming ``source``, then
    ``field``."""
    with pytest.raises(ValueError) as e:
        read(data, source)
    msg = str(e.value)
    assert msg.startswith(f"{source}: "), msg
    assert field in msg.split(": ", 1)[1], msg
    assert "\n" not in msg


def subspace_record(phi_a=0.25) -> R.SubspaceRecord:
    """A small subspace.json record: one pair, three layers (tests/analysis, tests/experiments)."""
    grid = ((phi_a, 0.5, 0.75), (0.5, 0.6, 0.9))
    layers = {
        "blocks.0.attn.q_proj": R.LayerGrid(16, grid),
        "blocks.1.attn.q_proj": R.LayerGrid(
            16, tuple(tuple(round(1.0 - v, 4) for v in r) for r in grid)
        ),
        "blocks.0.attn.v_proj": R.LayerGrid(16, grid),
    }
    pair = R.Pair(
        "p", "LoRA r=2 vs LoRA r=3", R.RunRef("a" * 12, "A"), R.RunRef("b" * 12, "B"), 2, 3, layers
    )
    return R.SubspaceRecord(base_model_id="m", pairs=(pair,))
