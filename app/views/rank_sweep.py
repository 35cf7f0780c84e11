"""Rank sweep: accuracy against r (with its spread over seeds), the elbow marked."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import rank_sweep as charts
from app.format import md_text

st.title("Rank sweep")
st.markdown(
    "LoRA was trained at each rank r with several seeds. Does accuracy keep rising with r? "
    "The **elbow** is the smallest r whose mean accuracy is within one standard deviation "
    "of the best: beyond it a larger r costs parameters without a gain this sweep can "
    "measure. The regular-verb control shows what else a larger adapter changes."
)
experiments = data.load_experiments()
sweep = data.experiment_section(experiments, "rank_sweep", "rank sweep")
if sweep is not None and sweep.ranks:
    ranks = sweep.ranks
    aggs = [sweep.summary[r] for r in ranks]
    full = sweep.full
    others = None
    if all(a.regular_accuracy is not None for a in aggs):
        others = {
            "regular_accuracy": (
                [a.regular_accuracy.mean for a in aggs],
                [a.regular_accuracy.std for a in aggs],
            )
        }
    elbow = sweep.elbow.elbow_r if sweep.elbow else None
    st.plotly_chart(
        charts.rank_elbow(
            ranks,
            [a.irregular_accuracy.mean for a in aggs],
            [a.irregular_accuracy.std for a in aggs],
            [a.trainable_params for a in aggs],
            elbow_r=elbow,
            full_mean=full.irregular_accuracy.mean if full else None,
            full_std=full.irregular_accuracy.std if full else None,
            others=others,
        ),
        key="sweep_elbow",
        width="stretch",
    )
    rows = []
    for key, ids, s in [
        *((str(r), sweep.runs[r], a) for r, a in zip(ranks, aggs, strict=True)),
        *([("full", sweep.full_runs, full)] if full else []),
    ]:
        row = {
            "r": key,
            "seeds": len(ids),
            "irregular acc.": helpers.mean_std(s.irregular_accuracy),
        }
        if s.regular_accuracy is not None:
            row["regular acc."] = helpers.mean_std(s.regular_accuracy)
        row["control EN drift"] = helpers.mean_std(s.control_en_drift, signed=True)
        row["final loss"] = f"{s.final_loss.mean:.4f}"
        row["trainable params"] = f"{s.trainable_params:,}"
        rows.append(row)
    st.dataframe(rows, hide_index=True)
    if elbow is not None:
        st.caption(f"Elbow: r = {elbow}. {md_text(sweep.elbow.definition)}")
elif sweep is not None:
    st.info(f"The rank sweep has no runs yet: {data.PRECOMPUTE_HINT}.")

st.header("Which layers to adapt")
targets = data.experiment_section(experiments, "targets", "targets summary")
if targets is not None:
    st.plotly_chart(charts.targets_bars(targets), key="sweep_targets", width="stretch")
    rows = []
    for name, v in targets.items():
        row = {
            "targets": name,
            "runs": len(v.run_ids),
            "irregular acc.": helpers.mean_std(v.irregular_accuracy),
        }
        if v.regular_accuracy is not None:
            row["regular acc."] = helpers.mean_std(v.regular_accuracy)
        row["control EN drift"] = f"{100 * v.control_en_drift.mean:+.2f}%"
        row["control ES drift"] = f"{100 * v.control_es_drift.mean:+.2f}%"
        row["trainable params"] = f"{v.trainable_params:,}"
        rows.append(row)
    st.dataframe(rows, hide_index=True)
