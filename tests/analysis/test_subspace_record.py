"""subspace.json (minituner.analysis.subspace_record): the record round-trips, a malformed
file is one clear error naming it, the shipped file is valid and agrees with the
definition, and the headline and conclusion follow the numbers."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_util import mutated_text, node_paths, replacements
from record_util import subspace_record as record

from minituner.analysis import subspace_record as R


# ---------------------------------------------------------------------- the record
def test_record_round_trip_and_means(tmp_path):
    rec = record()
    path = R.write_subspace(rec, tmp_path / "subspace.json")
    back = R.read_subspace(path)
    assert back == rec
    pair = back.pair("p")
    assert pair.kinds() == ["q_proj", "v_proj"]
    assert pair.mean_phi("q_proj", 1, 1) == pytest.approx((0.25 + 0.75) / 2)
    assert pair.mean_phi("v_proj", 2, 3) == pytest.approx(0.9)
    assert pair.mean_chance("q_proj", 2, 3) == pytest.approx(3 / 16)
    text = R.headline(pair)
    assert "φ(1,1) = 0.50 and 0.25 on q_proj and v_proj (random directions: 0.062)" in text
    assert "φ(2,3) = 0.50 and 0.90 on q_proj and v_proj (random subspaces: 0.19)" in text
    with pytest.raises(ValueError, match="no k_proj"):
        pair.mean_phi("k_proj", 1, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("pairs"), "pairs is missing"),
        (lambda d: d.update(pairs=[]), "pairs is empty"),
        (lambda d: d.update(schema_version=2), "schema_version is 2"),
        (lambda d: d.update(extra=1), "extra is not a known field"),
        (lambda d: d["pairs"][0].update(max_i="2"), r"pairs\[0\].max_i must be a whole number"),
        (lambda d: d["pairs"][0]["layers"]["blocks.0.attn.q_proj"]["phi"].pop(), "has 1 rows"),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.q_proj"]["phi"][0].append(0.1),
            "max_j = 3",
        ),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.v_proj"]["phi"][1].__setitem__(0, 1.5),
            "1.5",
        ),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.v_proj"]["phi"][1].__setitem__(
                0, None
            ),
            r"phi\[1\]\[0\] must be a number, not null",
        ),
        (lambda d: d["pairs"][0]["a"].pop("run_id"), r"pairs\[0\].a.run_id is missing"),
        (lambda d: d["pairs"].append(d["pairs"][0]), "repeat a name"),
        (
            lambda d: d["pairs"][0]["layers"]["blocks.0.attn.q_proj"].update(in_features=2),
            "in_features",
        ),
    ],
)
def test_a_malformed_file_is_one_clear_error(tmp_path, change, message):
    data = record().to_json()
    change(data)
    path = tmp_path / "subspace.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as e:
        R.read_subspace(path)
    assert str(path) in str(e.value)


def test_missing_or_invalid_json_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        R.read_subspace(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        R.read_subspace(bad)


SHIPPED_DOC = json.loads(R.subspace_file().read_text(encoding="utf-8"))
# every node down to a pair's layer, and each layer's first rows and numbers (the
# thousands of other φ values are alike)
SHIPPED_PATHS = [p for p in node_paths(SHIPPED_DOC) if len(p) < 6 or p[-1] in (0, 1)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(SHIPPED_PATHS), value=replacements())
def test_any_damaged_node_is_a_value_error(path, value):
    """issue 23, item 6: any node of the shipped subspace.json replaced by a list, a
    number, a string, null, an object or a 100,000-deep nesting: read_subspace raises a
    one-line ValueError naming the file, nothing else (was: RecursionError)."""
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "subspace.json"
        file.write_text(mutated_text(SHIPPED_DOC, path, value), encoding="utf-8")
        try:
            R.read_subspace(file)
        except ValueError as e:
            assert "\n" not in str(e) and "subspace.json" in str(e)


def test_a_special_subspace_file_is_a_value_error(tmp_path):
    """issue 23, items 4 and 6: a FIFO or a link to /dev/zero is refused at once."""
    fifo, dev = tmp_path / "fifo.json", tmp_path / "dev.json"
    os.mkfifo(fifo)
    dev.symlink_to("/dev/zero")
    for path in (fifo, dev):
        with pytest.raises(ValueError, match="not a regular file"):
            R.read_subspace(path)


# ---------------------------------------------------------------------- the shipped file
def test_shipped_file_is_valid_and_agrees_with_its_definition():
    rec = R.read_subspace()  # precomputed/subspace.json, validated
    assert rec.command == R.COMMAND
    names = {p.name for p in rec.pairs}
    assert {"r8_vs_r64", "r8_vs_full"} <= names
    fig3 = rec.pair("r8_vs_r64")
    assert (fig3.max_i, fig3.max_j) == (8, 64)
    assert fig3.kinds() == ["q_proj", "v_proj"] and len(fig3.layers) == 8
    for grid in fig3.layers.values():
        phi = np.array(grid.phi)
        mass = phi * np.minimum(np.arange(1, 9)[:, None], np.arange(1, 65)[None, :])
        # block sums of squared overlaps only grow (up to the file's 4 decimals)
        assert (np.diff(mass, axis=0) >= -1e-3).all() and (np.diff(mass, axis=1) >= -1e-3).all()
        assert math.isclose(grid.at(1, 1), phi[0, 0])


def constant_pair(name: str, value: float, d: int = 16) -> R.Pair:
    grid = tuple(tuple(value for _ in range(3)) for _ in range(2))
    layers = {f"blocks.{k}.attn.{kind}": R.LayerGrid(d, grid) for k in (0, 1) for kind in "qv"}
    return R.Pair(name, name, R.RunRef("a" * 12, "A"), R.RunRef("b" * 12, "B"), 2, 3, layers)


@pytest.mark.parametrize(
    ("same", "other", "full", "words"),
    [
        (0.9, 0.25, 0.2, ["+0.71 with the same seed, +0.06 with another", "goes away", "about as"]),
        (
            0.9,
            0.8,
            0.6,
            ["+0.71 with the same seed, +0.61 with another", "survives", "share input"],
        ),
        (0.1, 0.1, 0.2, ["share no more than random", "about as much as random"]),
    ],
)
def test_conclusion_is_chosen_by_the_numbers(same, other, full, words):
    pairs = (
        constant_pair("r8_vs_r64", same),
        constant_pair("r8_vs_r64_other_seed", other),
        constant_pair("r8_vs_full", full),
    )
    text = R.conclusion(R.SubspaceRecord("m", pairs))
    for w in words:
        assert w in text
    assert R.conclusion(R.SubspaceRecord("m", pairs[:1])) is None
