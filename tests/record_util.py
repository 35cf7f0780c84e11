"""Helpers of the typed-record tests (tests/store, tests/experiments, tests/analysis): change
one field of a record's JSON, check that reading it is refused naming the file and the
field, and a small subspace.json record."""

from __future__ import annotations

import os

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


# ------------------------------------------------ random damage to a whole file (issue 23)
DEEP = "<deep>"  # mutation value: 100,000 nested lists (written as text, not built)


def node_paths(doc, prefix: tuple = ()) -> list[tuple]:
    """The path (keys and indices) of every node of a JSON document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += node_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += node_paths(v, (*prefix, i))
    return out


def replacements():
    """What a damaged node becomes: a list, a number, a string, null, an object, or a
    100,000-deep nesting."""
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=3),
        st.dictionaries(st.text(max_size=3), scalars, max_size=2),
        st.just([]),
        st.just({}),
        st.just(DEEP),
    )


def mutated_text(doc, path: tuple, value) -> str:
    """``doc`` as JSON text with the node at ``path`` replaced by ``value``."""
    import copy
    import json

    if not path:
        new = value
    else:
        new = copy.deepcopy(doc)
        d = new
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    text = json.dumps(new)
    marker = json.dumps(DEEP)
    return text.replace(marker, "[" * 100_000 + "]" * 100_000, 1) if value == DEEP else text


DEEP_JSON = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"  # valid JSON, 100,000 deep
HOSTILE = ("deep", "fifo", "devzero")


def make_hostile(path, kind: str) -> None:
    """Replace the file at ``path`` with a hostile one (issue 23, items 3 and 4): a
    100,000-deep JSON file, a FIFO (opening it for reading would block) or a link to
    /dev/zero (reading it would never end)."""
    path.unlink()
    if kind == "deep":
        path.write_text(DEEP_JSON)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    else:
        raise ValueError(f"unknown hostile kind {kind!r}; one of {HOSTILE}")
