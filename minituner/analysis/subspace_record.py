"""The precomputed subspace similarities: ``<data>/subspace.json``, validated when read
(minituner.schema), and what they say in words generated from the numbers (the Spectrum
page, the CLI and the data folder's README.md, minituner.experiments.subspace, use these
sentences).

φ is defined in :mod:`minituner.analysis.subspace`; the file is written by
:mod:`minituner.experiments.subspace` (``python -m minituner subspace``). A missing field, a grid
of the wrong shape or a φ outside [0, 1] raises ValueError naming the file and the field,
when the file is read, never deep inside a page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from minituner.analysis.subspace import chance_level
from minituner.io import atomic_write_text
from minituner.paths import data_dir
from minituner.schema import JsonObject, as_number, check_version, read_record

COMMAND = "python -m minituner subspace"
DEFINITION = (
    "phi(A, B, i, j) = ||V_A[:, :i]^T V_B[:, :j]||_F^2 / min(i, j), with V the right "
    "singular vectors (input space) of each layer's update dW, in float64"
)

# ---------------------------------------------------------------------------------------
# The record: <data>/subspace.json
# ---------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
DECIMALS = 4  # φ is shown to 2-3 digits; 4 keeps the shipped file small


def subspace_file() -> Path:
    """``<data>/subspace.json`` (see minituner.paths)."""
    return data_dir() / SubspaceRecord.FILE


@dataclass(frozen=True)
class RunRef:
    """One side of a comparison: a stored run and a short label ("LoRA r=8, seed 0")."""

    run_id: str
    label: str


@dataclass(frozen=True)
class LayerGrid:
    """φ(i, j) of one layer: ``phi[i-1][j-1]``, and the layer's input dimension."""

    in_features: int
    phi: tuple[tuple[float, ...], ...]

    def at(self, i: int, j: int) -> float:
        return self.phi[i - 1][j - 1]


@dataclass(frozen=True)
class Pair:
    """φ between two runs' updates, for each layer both adapted."""

    name: str
    label: str
    a: RunRef
    b: RunRef
    max_i: int
    max_j: int
    layers: Mapping[str, LayerGrid]

    def layers_of(self, kind: str) -> list[str]:
        """The layers whose name ends in ``kind`` (e.g. ``q_proj``)."""
        return [n for n in self.layers if n.rsplit(".", 1)[-1] == kind]

    def kinds(self) -> list[str]:
        return sorted({n.rsplit(".", 1)[-1] for n in self.layers})

    def mean_phi(self, kind: str, i: int, j: int) -> float:
        """Mean of φ(i, j) over the layers of one kind.

        Raises:
            ValueError: no layer of that kind.
        """
        names = self.layers_of(kind)
        if not names:
            raise ValueError(f"{self.name}: no {kind} layer")
        return math.fsum(self.layers[n].at(i, j) for n in names) / len(names)

    def mean_chance(self, kind: str, i: int, j: int) -> float:
        names = self.layers_of(kind)
        return math.fsum(chance_level(i, j, self.layers[n].in_features) for n in names) / len(names)


@dataclass(frozen=True)
class SubspaceRecord:
    """The precomputed comparisons, validated when made from JSON."""

    FILE: ClassVar[str] = "subspace.json"

    base_model_id: str
    pairs: tuple[Pair, ...]
    definition: str = DEFINITION
    command: str = COMMAND

    def pair(self, name: str) -> Pair | None:
        return next((p for p in self.pairs if p.name == name), None)

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "definition": self.definition,
            "command": self.command,
            "base_model_id": self.base_model_id,
            "pairs": [
                {
                    "name": p.name,
                    "label": p.label,
                    "a": {"run_id": p.a.run_id, "label": p.a.label},
                    "b": {"run_id": p.b.run_id, "label": p.b.label},
                    "max_i": p.max_i,
                    "max_j": p.max_j,
                    "layers": {
                        n: {
                            "in_features": g.in_features,
                            "phi": [[round(v, DECIMALS) for v in row] for row in g.phi],
                        }
                        for n, g in p.layers.items()
                    },
                }
                for p in self.pairs
            ],
        }

    @classmethod
    def from_json(cls, data, source: str = "subspace.json") -> SubspaceRecord:
        """Raises:
        ValueError: a missing or mistyped field, φ outside [0, 1] or not finite, a grid
            whose shape is not (max_i, max_j), or a newer schema (naming file and field).
        """
        o = JsonObject(data, source)
        check_version(o, SCHEMA_VERSION, required=True)
        pairs = [_pair_from_json(p) for p in o.objects("pairs")]
        if not pairs:
            raise o.error("pairs", "is empty")
        names = [p.name for p in pairs]
        if len(set(names)) != len(names):
            raise o.error("pairs", "repeat a name")
        rec = cls(
            base_model_id=o.string("base_model_id"),
            pairs=tuple(pairs),
            definition=o.string("definition"),
            command=o.string("command"),
        )
        o.finish()
        return rec


def _run_ref(o: JsonObject) -> RunRef:
    ref = RunRef(o.string("run_id"), o.string("label"))
    o.finish()
    return ref


def _pair_from_json(o: JsonObject) -> Pair:
    name = o.string("name")
    a, b = _run_ref(o.obj("a")), _run_ref(o.obj("b"))
    max_i, max_j = o.integer("max_i", low=1), o.integer("max_j", low=1)
    grids = o.obj("layers")
    if not grids.keys():
        raise o.error("layers", "is empty")
    layers = {}
    for layer in grids.keys():
        g = grids.obj(layer)
        d = g.integer("in_features")
        if d < max(max_i, max_j):
            raise g.error("in_features", f"is {d}, below max_i/max_j")
        rows = g.array("phi", "a list of rows")
        if len(rows) != max_i:
            raise g.error("phi", f"has {len(rows)} rows, not max_i = {max_i}")
        grid = []
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != max_j:
                raise g.error(f"phi[{r}]", f"must be a list of max_j = {max_j} numbers")
            grid.append(
                tuple(as_number(v, g, f"phi[{r}][{c}]", 0.0, 1.0) for c, v in enumerate(row))
            )
        g.finish()
        layers[layer] = LayerGrid(d, tuple(grid))
    pair = Pair(name, o.string("label"), a, b, max_i, max_j, layers)
    o.finish()
    return pair


def read_subspace(path: str | Path | None = None) -> SubspaceRecord:
    """The record in ``path`` (default: ``<data>/subspace.json``).

    Raises:
        ValueError: a missing file, invalid JSON or an invalid record (naming the file).
    """
    return read_record(Path(path) if path is not None else subspace_file(), SubspaceRecord)


def write_subspace(record: SubspaceRecord, path: str | Path | None = None) -> Path:
    """Write the record atomically (default: ``<data>/subspace.json``); returns the path."""
    path = Path(path) if path is not None else subspace_file()
    # compact: one line per pair's layer grid row would be as long; this file ships
    atomic_write_text(path, json.dumps(record.to_json(), separators=(",", ":")) + "\n")
    return path


# ---------------------------------------------------------------------------------------
# Summary: what the numbers say
# ---------------------------------------------------------------------------------------


def _by_kind(pair: Pair, i: int, j: int, chance: bool = False) -> str:
    f = pair.mean_chance if chance else pair.mean_phi
    values = [f(kind, i, j) for kind in pair.kinds()]
    digits = 3 if chance and max(values) < 0.1 else 2
    text = " and ".join(f"{v:.{digits}f}" for v in values)
    if chance:
        return text if len(set(values)) > 1 else f"{values[0]:.{digits}f}"
    return text + " on " + " and ".join(pair.kinds())


def headline(pair: Pair) -> str:
    """One sentence from the data: the mean over layers of φ(1,1) (the top direction) and
    of φ(max_i, max_j) (the top max_i directions inside the top max_j), per kind of
    layer, each with the level random subspaces would give."""
    i, j = pair.max_i, pair.max_j
    return (
        f"{pair.label}: the top direction overlaps with mean φ(1,1) = {_by_kind(pair, 1, 1)} "
        f"(random directions: {_by_kind(pair, 1, 1, chance=True)}); the top {i} directions lie "
        f"in the top {j} with φ({i},{j}) = {_by_kind(pair, i, j)} (random subspaces: "
        f"{_by_kind(pair, i, j, chance=True)})."
    )


def _excess(pair: Pair, i: int, j: int) -> float:
    """Mean over layers of φ(i, j) minus its chance level."""
    return math.fsum(
        pair.mean_phi(k, i, j) - pair.mean_chance(k, i, j) for k in pair.kinds()
    ) / len(pair.kinds())


NEAR_CHANCE = 0.1  # φ within this of the random level reads as "about as random subspaces"


def conclusion(record: SubspaceRecord) -> str | None:
    """What the comparisons say, in words chosen by the data: whether the overlap above
    chance of r=8's top-8 in r=64's top-64 survives a change of seed (it "goes away" when
    less than half of it is left), and whether LoRA r=8's directions lie in full
    fine-tuning's more than random ones would (more than ``NEAR_CHANCE`` above chance).
    None without the two r=8 vs r=64 pairs."""
    same, other = record.pair("r8_vs_r64"), record.pair("r8_vs_r64_other_seed")
    if same is None or other is None or (same.max_i, same.max_j) != (other.max_i, other.max_j):
        return None
    i, j = same.max_i, same.max_j
    e_same, e_other = _excess(same, i, j), _excess(other, i, j)
    e1_same, e1_other = _excess(same, 1, 1), _excess(other, 1, 1)
    if e_same <= 0:
        verdict = "r=8 and r=64 share no more than random subspaces would"
    elif e_other < 0.5 * e_same:
        verdict = (
            "most of the overlap above chance goes away when r=64 is trained with another "
            "seed: it comes with the shared seed (the same batches in the same order), "
            "not with the rank"
        )
    else:
        verdict = "the overlap above chance survives a change of seed: it comes with the task"
    text = (
        f"Top {i} of r=8 inside the top {j} of r=64: φ above chance by {e_same:+.2f} with the "
        f"same seed, {e_other:+.2f} with another; so {verdict}. The top direction alone: "
        f"{e1_same:+.2f} and {e1_other:+.2f} above chance."
    )
    full = record.pair("r8_vs_full")
    if full is not None:
        fi, fj = full.max_i, full.max_j
        e_full, e1_full = _excess(full, fi, fj), _excess(full, 1, 1)
        near = e_full < NEAR_CHANCE
        text += (
            f" LoRA r=8 against full fine-tuning: top {fi} inside the top {fj} "
            f"{e_full:+.2f} above chance, top direction {e1_full:+.2f}: "
            + (
                "about as much as random subspaces, so the two methods change these layers "
                "along mostly different input directions."
                if near
                else "more than random subspaces, so the two methods share input directions."
            )
        )
    return text


def summary_rows(record: SubspaceRecord) -> list[dict]:
    """One row per pair and kind of layer, means over its layers: φ(1,1), φ(i,i) and
    φ(i,j) at i = max_i, j = max_j, and the chance levels of random subspaces."""
    rows = []
    for p in record.pairs:
        i, j = p.max_i, p.max_j
        for kind in p.kinds():
            rows.append(
                {
                    "pair": p.label,
                    "layers": kind,
                    "i": i,
                    "j": j,
                    "phi_11": p.mean_phi(kind, 1, 1),
                    "phi_ii": p.mean_phi(kind, i, min(i, j)),
                    "phi_ij": p.mean_phi(kind, i, j),
                    "random_11": p.mean_chance(kind, 1, 1),
                    "random_ij": p.mean_chance(kind, i, j),
                }
            )
    return rows
