"""Subspace similarity of the shipped runs' updates, computed from the run store, and
the data folder README's section on it.

The comparisons (:func:`plan_pairs`) are found through experiments.json's index of the
runs (:class:`~minituner.experiments.record.ExperimentsRecord`); the updates are rebuilt
from the stored adapters and deltas (no training), and :func:`compute_from_store`
returns the :class:`~minituner.analysis.subspace_record.SubspaceRecord` that
``python -m minituner subspace`` and ``precompute`` (:func:`refresh`) write.
:func:`readme_lines` is that file's section of precomputed/README.md (in words from
minituner.analysis.subspace_record), :func:`update_readme` replaces it in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from minituner.analysis.subspace import similarity_grid
from minituner.analysis.subspace_record import (
    COMMAND,
    LayerGrid,
    Pair,
    RunRef,
    SubspaceRecord,
    conclusion,
    read_subspace,
    subspace_file,
    summary_rows,
    write_subspace,
)
from minituner.io import atomic_write_text

if TYPE_CHECKING:
    from minituner.experiments.record import ExperimentsRecord
    from minituner.finetune.result import Base
    from minituner.store.runs import RunInfo, RunStore

# ---------------------------------------------------------------------------------------
# From the stored runs
# ---------------------------------------------------------------------------------------


def run_deltas(store: RunStore, info: RunInfo, base: Base) -> dict[str, torch.Tensor]:
    """ΔW (float64) of each adapted Linear of a stored run, by module name
    (``blocks.0.attn.q_proj``): (α/r)·B·A for LoRA/QLoRA (analysis.lora_deltas), W_ft −
    W_base of the blocks' Linears for full fine-tuning (analysis.weight_deltas)."""
    from minituner.analysis.spectrum import lora_deltas, weight_deltas

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


def _seeded(store: RunStore, ids: list[str], seed: int, what: str) -> RunInfo:
    """The run among ``ids`` trained with ``seed``.

    Raises:
        ValueError: none of them is stored with that seed.
    """
    for rid in ids:
        info = store.find(rid)
        if info is not None and info.finetune_config().seed == seed:
            return info
    raise ValueError(
        f"no stored {what} run with seed {seed} in experiments.json; "
        "`python -m minituner precompute` makes them"
    )


def plan_pairs(
    store: RunStore, experiments: ExperimentsRecord
) -> list[tuple[str, str, RunInfo, RunInfo]]:
    """The comparisons, found through experiments.json's index of the shipped runs:
    LoRA r=8 vs r=64 on q,v (the paper's Figure 3) with the same seed (0: the same
    batches in the same order) and with another (r=64 seed 1), two seeds of r=8 (how much
    two equally good updates share), LoRA r=8 and r=64 vs full fine-tuning (seed 0, at
    the learning rate the forgetting experiment uses).

    Raises:
        ValueError: a run is missing from the index or the store.
    """
    sweep = experiments.rank_sweep
    full = (experiments.forgetting or {}).get("full")
    if sweep is None or full is None:
        raise ValueError("experiments.json lacks rank_sweep.runs or forgetting.full")
    r8 = _seeded(store, sweep.runs.get(8, []), 0, "LoRA r=8")
    r8b = _seeded(store, sweep.runs.get(8, []), 1, "LoRA r=8")
    r64 = _seeded(store, sweep.runs.get(64, []), 0, "LoRA r=64")
    r64b = _seeded(store, sweep.runs.get(64, []), 1, "LoRA r=64")
    ft = _seeded(store, full.run_ids, 0, "full fine-tuning")
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
    experiments: ExperimentsRecord,
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


def refresh(
    store: RunStore,
    base: Base,
    experiments: ExperimentsRecord,
    log: Callable[[str], None] = print,
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


# ---------------------------------------------------------------------------------------
# The data folder's README: its section on subspace similarity
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
