"""The precomputed subspace similarities: ``<data>/subspace.json``, validated when read,
and what they say in words generated from the numbers (the Spectrum page, the CLI and
the data folder's README.md use these sentences).

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
from minituner.io import atomic_write_text, read_json
from minituner.paths import data_dir

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


def _fail(source: str, where: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {where} {problem}")


def _get(obj, key: str, kind, source: str, where: str):
    if not isinstance(obj, dict):
        raise _fail(source, where or "the file", "must be a JSON object")
    if key not in obj:
        raise _fail(source, f"{where}.{key}" if where else key, "is missing")
    v = obj[key]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise _fail(source, f"{where}.{key}" if where else key, f"must be {kind.__name__}")
    return v


def _check_keys(obj: dict, known: set[str], source: str, where: str) -> None:
    extra = sorted(set(obj) - known)
    if extra:
        raise _fail(source, f"{where}.{extra[0]}" if where else extra[0], "is not a known field")


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
        top = {"schema_version", "definition", "command", "base_model_id", "pairs"}
        if not isinstance(data, dict):
            raise _fail(source, "the file", "must be a JSON object")
        _check_keys(data, top, source, "")
        version = _get(data, "schema_version", int, source, "")
        if not 1 <= version <= SCHEMA_VERSION:
            raise _fail(source, "schema_version", f"is {version}; this minituner reads 1")
        pairs_json = _get(data, "pairs", list, source, "")
        if not pairs_json:
            raise _fail(source, "pairs", "is empty")
        pairs = [_pair_from_json(p, source, f"pairs[{k}]") for k, p in enumerate(pairs_json)]
        names = [p.name for p in pairs]
        if len(set(names)) != len(names):
            raise _fail(source, "pairs", "repeat a name")
        return cls(
            base_model_id=_get(data, "base_model_id", str, source, ""),
            pairs=tuple(pairs),
            definition=_get(data, "definition", str, source, ""),
            command=_get(data, "command", str, source, ""),
        )


def _pair_from_json(p, source: str, where: str) -> Pair:
    known = {"name", "label", "a", "b", "max_i", "max_j", "layers"}
    name = _get(p, "name", str, source, where)
    _check_keys(p, known, source, where)
    refs = []
    for side in ("a", "b"):
        ref = _get(p, side, dict, source, where)
        _check_keys(ref, {"run_id", "label"}, source, f"{where}.{side}")
        refs.append(
            RunRef(
                _get(ref, "run_id", str, source, f"{where}.{side}"),
                _get(ref, "label", str, source, f"{where}.{side}"),
            )
        )
    max_i = _get(p, "max_i", int, source, where)
    max_j = _get(p, "max_j", int, source, where)
    if max_i < 1 or max_j < 1:
        raise _fail(source, f"{where}.max_i/max_j", "must be >= 1")
    layers_json = _get(p, "layers", dict, source, where)
    if not layers_json:
        raise _fail(source, f"{where}.layers", "is empty")
    layers = {}
    for layer, g in layers_json.items():
        at = f"{where}.layers.{layer}"
        _check_keys(g if isinstance(g, dict) else {}, {"in_features", "phi"}, source, at)
        d = _get(g, "in_features", int, source, at)
        if d < max(max_i, max_j):
            raise _fail(source, f"{at}.in_features", f"is {d}, below max_i/max_j")
        rows = _get(g, "phi", list, source, at)
        if len(rows) != max_i:
            raise _fail(source, f"{at}.phi", f"has {len(rows)} rows, not max_i = {max_i}")
        grid = []
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != max_j:
                raise _fail(source, f"{at}.phi[{r}]", f"must be a list of max_j = {max_j} numbers")
            for v in row:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                if not ok or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                    raise _fail(source, f"{at}.phi[{r}]", f"holds {v!r}, not a number in [0, 1]")
            grid.append(tuple(float(v) for v in row))
        layers[layer] = LayerGrid(d, tuple(grid))
    return Pair(
        name=name,
        label=_get(p, "label", str, source, where),
        a=refs[0],
        b=refs[1],
        max_i=max_i,
        max_j=max_j,
        layers=layers,
    )


def read_subspace(path: str | Path | None = None) -> SubspaceRecord:
    """The record in ``path`` (default: ``<data>/subspace.json``).

    Raises:
        ValueError: a missing file, invalid JSON or an invalid record (naming the file).
    """
    path = Path(path) if path is not None else subspace_file()
    return SubspaceRecord.from_json(read_json(path), str(path))


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


# ---------------------------------------------------------------------------------------
# precompute and the data folder's README
# ---------------------------------------------------------------------------------------

README_BEGIN = "<!-- subspace: written by `python -m minituner subspace` -->"
README_END = "<!-- /subspace -->"


def readme_lines(path: str | Path | None = None) -> list[str]:
    """The data folder README's section on subspace similarity, from subspace.json
    (between markers, so :func:`update_readme` can replace it); [] when there is none."""
    try:
        path = Path(path) if path is not None else subspace_file()
    except ValueError:
        return []
    if not path.is_file():
        return []
    lines = [README_BEGIN, ""]
    try:
        record = read_subspace(path)
    except ValueError as e:
        return [*lines, f"subspace.json cannot be read ({e}); run `{COMMAND}`.", "", README_END]
    lines += [
        f"Subspace similarity of the updates ΔW (LoRA paper, section 7), in `{path.name}`; "
        f"regenerate it with `{record.command}` (no training: it reads the stored runs). "
        f"Definition: {record.definition}. Means over the layers of each kind; random "
        "subspaces give max(i, j)/d.",
        "",
        "| comparison | layers | φ(1,1) | φ(i,i) | φ(i,j) | i, j | random φ(1,1) | random φ(i,j) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(record):
        lines.append(
            f"| {r['pair']} | {r['layers']} | {r['phi_11']:.3f} | {r['phi_ii']:.3f} | "
            f"{r['phi_ij']:.3f} | {r['i']}, {r['j']} | {r['random_11']:.4f} | "
            f"{r['random_ij']:.4f} |"
        )
    verdict = conclusion(record)
    lines += ["", *([verdict, ""] if verdict else []), README_END, ""]
    return lines


def update_readme(readme: str | Path, path: str | Path | None = None) -> None:
    """Replace the subspace section of ``readme`` (or append it) from subspace.json."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    block = "\n".join(readme_lines(path))
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        tail = rest.split(README_END, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(readme, text)
