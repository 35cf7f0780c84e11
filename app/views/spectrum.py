"""Spectrum: is the update ΔW low-rank? Full fine-tuning and LoRA side by side."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import data, helpers
from app.charts import spectrum as charts
from app.format import md_code, md_text
from minituner.analysis import subspace_record

st.title("Spectrum of the weight update ΔW")
st.markdown(
    "For each adapted matrix, ΔW = W(fine-tuned) − W(base) for full fine-tuning, or "
    "(α/r)·B·A for LoRA. Few large singular values followed by a fast drop mean the update "
    "lives in a few directions: what LoRA assumes. A LoRA update has at most r non-zero "
    "singular values by construction; full fine-tuning is free to use them all."
)
base = data.base_or_stop()
found = data.runs_with_warnings()
experiments = data.load_experiments()
truncation = data.experiment_section(experiments, "truncation", "truncation summary")

full_runs = [r for r in found if r.method == "full"]
lora_runs = [r for r in found if r.method in ("lora", "qlora")]
if not full_runs and not lora_runs:
    st.info("No runs in the store yet: train a full and a LoRA run on the **Train** page.")
    st.stop()


def _pick(label: str, pool: list, preferred_id: str | None, key: str):
    if not pool:
        st.info(f"No {label} run in the store.")
        return None
    labels = [helpers.run_label(r) for r in pool]
    ids = [r.run_id for r in pool]
    if preferred_id in ids:
        index = ids.index(preferred_id)
    else:
        best = data.default_run(pool)
        index = ids.index(best.run_id) if best else 0
    return pool[labels.index(st.selectbox(label, labels, index=index, key=key))]


c1, c2 = st.columns(2)
with c1:
    full = _pick(
        "full fine-tuning run", full_runs, truncation.run_id if truncation else None, "spec_full"
    )
with c2:
    lora = _pick("LoRA / QLoRA run", lora_runs, None, "spec_lora")

chosen = [r for r in (full, lora) if r is not None]
spectra = {helpers.run_label(r): data.spectrum(r).layers for r in chosen}
run_keys = {helpers.run_label(r): (r.method, r.run_id) for r in chosen}
if not spectra:
    st.stop()

kinds = sorted({layer.rsplit(".", 1)[-1] for s in spectra.values() for layer in s})
c3, c4 = st.columns([3, 1])
default_kinds = [k for k in ("q_proj", "v_proj") if k in kinds] or kinds[:1]
kind_sel = c3.multiselect("matrices", kinds, default=default_kinds, key="spec_kinds")
normalized = c4.toggle("normalize by σ₁", value=False, key="spec_norm")
panels = {
    label: {
        layer: v.singular_values for layer, v in s.items() if layer.rsplit(".", 1)[-1] in kind_sel
    }
    for label, s in spectra.items()
}
st.plotly_chart(
    charts.spectrum_side_by_side(panels, normalized=normalized), key="spec_sv", width="stretch"
)

st.subheader("Stable rank and energy")
ranks = {label: {layer: v.stable_rank for layer, v in s.items()} for label, s in spectra.items()}
a, b = st.columns([3, 2])
with a:
    st.plotly_chart(charts.stable_rank_bars(ranks, run_keys), key="spec_stable", width="stretch")
with b:
    layers = sorted({layer for s in spectra.values() for layer in s})
    shared = [layer for layer in layers if all(layer in s for s in spectra.values())] or layers
    layer = st.selectbox("layer", shared, key="spec_layer")
    energy = {label: s[layer].cumulative_energy for label, s in spectra.items() if layer in s}
    st.plotly_chart(
        charts.cumulative_energy(energy, runs=run_keys), key="spec_energy", width="stretch"
    )
rows = []
for label, s in spectra.items():
    for name, v in s.items():
        rows.append(
            {
                "run": label,
                "layer": name,
                "stable rank": round(v.stable_rank, 2),
                "rank for 90% energy": v.rank_90,
                "Frobenius norm ‖ΔW‖": f"{v.frobenius_norm:.4g}",
                "largest singular value σ₁": f"{v.spectral_norm:.4g}",
            }
        )
with st.expander("per-layer table"):
    st.dataframe(rows, hide_index=True)

st.subheader("Truncating full fine-tuning's update")
if truncation is not None:
    st.plotly_chart(
        charts.truncation_curve(
            truncation.k, truncation.irregular_accuracy, truncation.control_en_drift
        ),
        key="spec_trunc",
        width="stretch",
    )
    st.caption(
        f"Run {md_text(truncation.run_id)}: every ΔW of full fine-tuning replaced by its best "
        "rank-k approximation (Eckart–Young), then the model re-evaluated. If a small k "
        "recovers the accuracy, the useful part of the update is low-rank."
    )

st.subheader("Subspace similarity: do two updates use the same directions?")
st.markdown(
    "As in section 7 of the LoRA paper: for two updates A and B of one layer, take the top-i "
    "right singular vectors of A's ΔW and the top-j of B's (directions in the layer's *input* "
    "space) and measure φ(i, j) = ‖Aᵢᵀ Bⱼ‖² / min(i, j), where the columns of Aᵢ and Bⱼ are "
    "those directions and ‖·‖² the squared Frobenius norm (the sum of the squared "
    "entries: here the sum of the squared cosines between the two sets): 1 when the smaller set of "
    "directions lies inside the larger, 0 when they are orthogonal. Random directions are "
    "not 0: two random subspaces of dimensions i and j in d dimensions give max(i, j)/d."
)


@st.cache_resource(show_spinner=False, max_entries=2)
def _subspace_record(path: str, mtime: int) -> subspace_record.SubspaceRecord:
    return subspace_record.read_subspace(path)


def _load_subspace() -> subspace_record.SubspaceRecord | None:
    """The precomputed comparisons, or None with a note (missing) or a warning (broken)."""
    try:
        path = Path(subspace_record.subspace_file())
    except ValueError as e:
        st.warning(md_text(e))
        return None
    if not path.is_file():
        st.info(f"No subspace similarity computed yet: run `{subspace_record.COMMAND}`.")
        return None
    try:
        return _subspace_record(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError) as e:
        st.warning(
            f"{md_text(path.name)} cannot be read ({md_text(e)}): "
            f"run `{subspace_record.COMMAND}` again."
        )
        return None


# the paper's Figure 3 with the same seed and another, and LoRA against full fine-tuning
# the summary's keys as a reader writes them (a column header shows "phi_ij" raw)
SUMMARY_COLUMNS = {"phi_11": "φ(1, 1)", "phi_ii": "φ(i, min(i, j))", "phi_ij": "φ(i, j)",
                   "random_11": "random φ(1, 1)", "random_ij": "random φ(i, j)"}  # fmt: skip
DEFAULT_PAIRS = ("r8_vs_r64", "r8_vs_r64_other_seed", "r8_vs_full")
record = _load_subspace()
if record is not None:
    verdict = subspace_record.conclusion(record)
    if verdict:
        st.markdown(f"**What the numbers say.** {md_text(verdict)}")
    labels = {p.label: p for p in record.pairs}
    first = [p.label for p in record.pairs if p.name in DEFAULT_PAIRS] or list(labels)[:3]
    c5, c6 = st.columns([3, 2])
    picked = c5.multiselect("comparisons", list(labels), default=first, key="spec_sub_pairs")
    layers = sorted({name for p in record.pairs for name in p.layers})
    sub_layer = c6.selectbox("layer", layers, key="spec_sub_layer")
    shown = {
        label: labels[label].layers[sub_layer].phi
        for label in picked
        if sub_layer in labels[label].layers
    }
    if shown:
        st.plotly_chart(
            charts.subspace_heatmaps(shown, sub_layer), key="spec_subspace", width="stretch"
        )
    for label in picked:
        st.caption(md_text(subspace_record.headline(labels[label])))
    with st.expander("means over layers, every comparison"):
        st.dataframe(
            [
                {SUMMARY_COLUMNS.get(k, k): v for k, v in row.items()}
                for row in subspace_record.summary_rows(record)
            ],
            hide_index=True,
        )
    st.caption(
        "Runs: "
        + md_text("; ".join(f"{p.label}: {p.a.run_id} vs {p.b.run_id}" for p in record.pairs))
        + f". Made by {md_code(record.command)} from the stored adapters and deltas."
    )
