"""Subspace similarity of two weight updates (Hu et al. 2021, LoRA, section 7).

How much do the top directions of two updates ΔW_A and ΔW_B overlap? With V_A^i the
top-i **right** singular vectors of ΔW_A (columns: unit vectors in the layer's *input*
space, R^in_features, ordered by singular value) and V_B^j those of ΔW_B,

    φ(A, B, i, j) = ‖(V_A^i)ᵀ V_B^j‖_F² / min(i, j)   ∈ [0, 1]

1 when the smaller subspace lies inside the larger one, 0 when they are orthogonal. It
depends only on the two subspaces (not on the basis chosen in each, nor on the scale of
ΔW), and φ(A, B, i, j) = φ(B, A, j, i). Two random subspaces of dimensions i and j in
R^d give φ ≈ max(i, j) / d on average (:func:`chance_level`): the baseline to read a
heatmap against.

The paper compares the right singular vectors of the *A matrices* of an r=8 and an r=64
adapter. We compare the updates themselves, ΔW = (α/r)·B·A for LoRA and W_ft − W_base for
full fine-tuning, so that LoRA and full fine-tuning can be compared too. For a LoRA
update the span of its top-r right singular vectors is the row space of A (whenever B
has full column rank), so at i = r the two definitions agree; below r, ΔW orders the
directions by how much they change the output, A alone does not.

Three parts:

* the math -- :func:`top_right_singular_vectors`, :func:`basis_similarity`,
  :func:`subspace_similarity`, :func:`similarity_grid` (float64 SVD, pure torch);
* the record -- :class:`SubspaceRecord`, ``<data>/subspace.json``, validated when read;
* the computation from stored runs -- :func:`compute_from_store` (LoRA r=8 vs r=64,
  LoRA vs full fine-tuning, and two seeds of r=8 as a noise reference), written by
  ``python -m minituner subspace``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from .io import atomic_write_text, read_json
from .paths import data_dir

if TYPE_CHECKING:
    from .runs import RunInfo, RunStore
    from .train import Base

COMMAND = "python -m minituner subspace"
DEFINITION = (
    "phi(A, B, i, j) = ||V_A[:, :i]^T V_B[:, :j]||_F^2 / min(i, j), with V the right "
    "singular vectors (input space) of each layer's update dW, in float64"
)
RANK_RTOL = None  # None: max(shape) * float64 eps, numpy.linalg.matrix_rank's default


# ---------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------


def _as_matrix(delta: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(delta, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(delta).__name__}")
    if delta.ndim != 2 or delta.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D update, got {tuple(delta.shape)}")
    m = delta.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(m).all():
        raise ValueError(f"{name}: the update holds NaN or inf")
    return m


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int]) -> int:
    """How many singular values exceed σ₁ · max(shape) · eps(float64): beyond them the
    singular vectors are rounding noise, not directions of the update."""
    if singular_values.numel() == 0 or float(singular_values[0]) == 0.0:
        return 0
    tol = float(singular_values[0]) * max(shape) * torch.finfo(torch.float64).eps
    return int((singular_values > tol).sum())


def top_right_singular_vectors(delta: torch.Tensor, k: int, name: str = "dW") -> torch.Tensor:
    """The top-k right singular vectors of ``delta`` (out, in) as columns: (in, k), float64.

    Raises:
        TypeError: ``delta`` is not a tensor.
        ValueError: not a finite 2-D matrix, k < 1, or k above its numerical rank (the
            k-th direction would be undefined: an r=8 LoRA update has only 8).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: k must be a whole number >= 1, got {k!r}")
    m = _as_matrix(delta, name)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)  # vh: (min(out, in), in)
    rank = numerical_rank(s, tuple(m.shape))
    if k > rank:
        raise ValueError(
            f"{name}: asked for its top {k} directions but it has numerical rank {rank}"
        )
    return vh[:k].T.contiguous()  # (in, k)


def basis_similarity(va: torch.Tensor, vb: torch.Tensor) -> float:
    """‖vaᵀ vb‖_F² / min(i, j) for orthonormal column bases va (d, i) and vb (d, j).

    Raises:
        ValueError: different d, an empty basis, or columns that are not orthonormal.
    """
    if va.ndim != 2 or vb.ndim != 2 or va.shape[0] != vb.shape[0]:
        raise ValueError(
            f"bases must be (d, i) and (d, j): got {tuple(va.shape)}, {tuple(vb.shape)}"
        )
    if va.shape[1] == 0 or vb.shape[1] == 0:
        raise ValueError("a basis needs at least one column")
    va, vb = va.to(torch.float64), vb.to(torch.float64)
    for v, name in ((va, "first"), (vb, "second")):
        eye = torch.eye(v.shape[1], dtype=torch.float64)
        if not torch.allclose(v.T @ v, eye, atol=1e-8):
            raise ValueError(f"the {name} basis does not have orthonormal columns")
    overlap = float((va.T @ vb).pow(2).sum())
    return _clip(overlap / min(va.shape[1], vb.shape[1]))


def _clip(phi: float) -> float:
    # rounding may put an exact 0 or 1 a few ulps outside [0, 1]; anything more is a bug
    if not -1e-9 <= phi <= 1 + 1e-9:
        raise AssertionError(f"subspace similarity {phi} outside [0, 1]")
    return min(max(phi, 0.0), 1.0)


def subspace_similarity(a: torch.Tensor, b: torch.Tensor, i: int, j: int) -> float:
    """φ(A, B, i, j) of two updates of one layer (same in_features), in [0, 1].

    Raises:
        ValueError: different input dimensions, or i, j out of 1..numerical rank.
    """
    return float(similarity_grid(a, b, i, j)[i - 1, j - 1])


def similarity_grid(a: torch.Tensor, b: torch.Tensor, max_i: int, max_j: int) -> torch.Tensor:
    """φ(A, B, i, j) for every i in 1..max_i and j in 1..max_j: a (max_i, max_j) float64
    tensor whose [i-1, j-1] entry is φ(A, B, i, j).

    One SVD per update: with P = (V_Aᵀ V_B)² elementwise, ‖(V_A^i)ᵀ V_B^j‖_F² is the sum of
    P's top-left i×j block, so two cumulative sums give the whole grid.

    Raises:
        ValueError: different input dimensions, or max_i / max_j out of 1..numerical rank.
    """
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] != b.shape[1]:
        raise ValueError(
            f"updates of different input dimensions: {tuple(a.shape)} and {tuple(b.shape)}"
        )
    va = top_right_singular_vectors(a, max_i, "A")  # (in, max_i)
    vb = top_right_singular_vectors(b, max_j, "B")  # (in, max_j)
    p = (va.T @ vb).pow(2)  # (max_i, max_j)
    block = p.cumsum(0).cumsum(1)
    i = torch.arange(1, max_i + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, max_j + 1, dtype=torch.float64)[None, :]
    grid = block / torch.minimum(i, j)
    lo, hi = float(grid.min()), float(grid.max())
    _clip(lo), _clip(hi)  # raises on a bug, passes rounding
    return grid.clamp(0.0, 1.0)


def chance_level(i: int, j: int, d: int) -> float:
    """E[φ] for uniformly random subspaces of dimensions i and j in R^d: i·j/d / min(i, j)
    = max(i, j) / d (E‖V_iᵀ V_j‖_F² = i·j/d)."""
    return max(i, j) / d


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


def conclusion(record: SubspaceRecord) -> str | None:
    """What the r=8 vs r=64 comparison says, from the data: does the overlap above chance
    of the top-8 in the top-64 survive a change of seed? None without both pairs."""
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
    return (
        f"Top {i} of r=8 inside the top {j} of r=64: φ above chance by {e_same:+.2f} with the "
        f"same seed, {e_other:+.2f} with another; so {verdict}. The top direction alone: "
        f"{e1_same:+.2f} and {e1_other:+.2f} above chance."
    )


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
# From the stored runs
# ---------------------------------------------------------------------------------------


def run_deltas(store: RunStore, info: RunInfo, base: Base) -> dict[str, torch.Tensor]:
    """ΔW (float64) of each adapted Linear of a stored run, by module name
    (``blocks.0.attn.q_proj``): (α/r)·B·A for LoRA/QLoRA (analysis.lora_deltas), W_ft −
    W_base of the blocks' Linears for full fine-tuning (analysis.weight_deltas)."""
    from .analysis import lora_deltas, weight_deltas

    model = store.load_model(info, base)
    if info.method != "full":
        return lora_deltas(model)
    deltas = weight_deltas(base.model.state_dict(), model.state_dict())
    return {
        k.removesuffix(".weight"): d
        for k, d in deltas.items()
        if k.startswith("blocks.")
        and isinstance(model.get_submodule(k.removesuffix(".weight")), torch.nn.Linear)
    }


def compare_runs(
    deltas_a: Mapping[str, torch.Tensor],
    deltas_b: Mapping[str, torch.Tensor],
    max_i: int,
    max_j: int,
) -> dict[str, LayerGrid]:
    """φ grids for every layer in both mappings (in A's order).

    Raises:
        ValueError: no layer in common, or a layer whose rank is below max_i / max_j.
    """
    shared = [n for n in deltas_a if n in deltas_b]
    if not shared:
        raise ValueError("the two runs adapted no layer in common")
    out = {}
    for n in shared:
        try:
            grid = similarity_grid(deltas_a[n], deltas_b[n], max_i, max_j)
        except ValueError as e:
            raise ValueError(f"{n}: {e}") from None
        out[n] = LayerGrid(int(deltas_a[n].shape[1]), tuple(tuple(r) for r in grid.tolist()))
    return out


def _describe(info: RunInfo) -> str:
    c = info.finetune_config()
    if c.method == "full":
        return f"full FT lr {c.lr:g}, seed {c.seed}"
    return f"{'QLoRA' if c.method == 'qlora' else 'LoRA'} r={c.r}, seed {c.seed}"


def _seeded(store: RunStore, ids, seed: int, what: str) -> RunInfo:
    """The run among ``ids`` trained with ``seed``.

    Raises:
        ValueError: none of them is stored with that seed.
    """
    for rid in ids if isinstance(ids, list) else []:
        info = store.find(rid) if isinstance(rid, str) else None
        if info is not None and info.finetune_config().seed == seed:
            return info
    raise ValueError(
        f"no stored {what} run with seed {seed} in experiments.json; "
        "`python -m minituner precompute` makes them"
    )


def plan_pairs(store: RunStore, experiments: Mapping) -> list[tuple[str, str, RunInfo, RunInfo]]:
    """The comparisons, found through experiments.json's index of the shipped runs:
    LoRA r=8 vs r=64 on q,v (the paper's Figure 3) with the same seed (0: the same
    batches in the same order) and with another (r=64 seed 1), two seeds of r=8 (how much
    two equally good updates share), LoRA r=8 and r=64 vs full fine-tuning (seed 0, at
    the learning rate the forgetting experiment uses).

    Raises:
        ValueError: a run is missing from the index or the store.
    """
    sweep = experiments.get("rank_sweep") if isinstance(experiments, Mapping) else None
    runs = sweep.get("runs") if isinstance(sweep, Mapping) else None
    forgetting = experiments.get("forgetting") if isinstance(experiments, Mapping) else None
    full = forgetting.get("full") if isinstance(forgetting, Mapping) else None
    if not isinstance(runs, Mapping) or not isinstance(full, Mapping):
        raise ValueError("experiments.json lacks rank_sweep.runs or forgetting.full")
    r8 = _seeded(store, runs.get("8"), 0, "LoRA r=8")
    r8b = _seeded(store, runs.get("8"), 1, "LoRA r=8")
    r64 = _seeded(store, runs.get("64"), 0, "LoRA r=64")
    r64b = _seeded(store, runs.get("64"), 1, "LoRA r=64")
    ft = _seeded(store, full.get("run_ids"), 0, "full fine-tuning")
    return [
        ("r8_vs_r64", "LoRA r=8 vs LoRA r=64, same seed", r8, r64),
        ("r8_vs_r64_other_seed", "LoRA r=8 vs LoRA r=64, other seed", r8, r64b),
        ("r8_seed0_vs_seed1", "LoRA r=8: seed 0 vs seed 1", r8, r8b),
        ("r8_vs_full", "LoRA r=8 vs full fine-tuning", r8, ft),
        ("r64_vs_full", "LoRA r=64 vs full fine-tuning", r64, ft),
    ]


def compute_from_store(
    store: RunStore,
    base: Base,
    experiments: Mapping,
    max_i: int = 8,
    max_j: int = 64,
    log: Callable[[str], None] = lambda s: None,
) -> SubspaceRecord:
    """φ(i, j), i ≤ max_i, j ≤ max_j, for each pair of :func:`plan_pairs`. j is capped
    at B's rank (8 for the seed pair of two r=8 updates). No training: the updates are
    rebuilt from the stored adapters and deltas.

    Raises:
        ValueError: a missing run, or a run that does not fit the base model.
    """
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def deltas(info: RunInfo) -> dict[str, torch.Tensor]:
        if info.run_id not in cache:
            cache[info.run_id] = run_deltas(store, info, base)
        return cache[info.run_id]

    pairs = []
    for name, label, a, b in plan_pairs(store, experiments):
        cfg_b = b.finetune_config()
        j = max_j if cfg_b.method == "full" else min(max_j, cfg_b.r)
        i = min(max_i, a.finetune_config().r) if a.method != "full" else max_i
        log(f"{label}: runs {a.run_id} and {b.run_id}, i <= {i}, j <= {j}")
        grids = compare_runs(deltas(a), deltas(b), i, j)
        ref_a, ref_b = RunRef(a.run_id, _describe(a)), RunRef(b.run_id, _describe(b))
        pairs.append(Pair(name, label, ref_a, ref_b, i, j, grids))
    return SubspaceRecord(base_model_id=base.model_id, pairs=tuple(pairs))


# ---------------------------------------------------------------------------------------
# precompute and the data folder's README
# ---------------------------------------------------------------------------------------

README_BEGIN = "<!-- subspace: written by `python -m minituner subspace` -->"
README_END = "<!-- /subspace -->"


def refresh(
    store: RunStore, base: Base, experiments: Mapping, log: Callable[[str], None] = print
) -> SubspaceRecord | None:
    """Recompute and write ``<data>/subspace.json`` (what ``precompute`` calls after its
    summary); a missing run is one log line, not an error: None then."""
    try:
        record = compute_from_store(store, base, experiments)
    except ValueError as e:
        log(f"subspace similarity not computed: {e}")
        return None
    log(f"wrote {write_subspace(record)}")
    return record


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
