"""Rank sweep: accuracy against r (with its spread over seeds), the elbow marked."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import rank_sweep as charts

st.title("Rank sweep")
st.markdown(
    "LoRA was trained at each rank r with several seeds. Does accuracy keep rising with r? "
    "The **elbow** is the smallest r whose mean accuracy is within one standard deviation "
    "of the best: beyond it a larger r costs parameters without a gain this sweep can "
    "measure. The regular-verb control shows what else a larger adapter changes."
)
experiments = data.load_experiments()
sweep = data.experiment_section(experiments, "rank_sweep")
if sweep is not None:
    try:
        ranks = [int(r) for r in sweep["ranks"]]
        summary = sweep["summary"]
        mean = [summary[str(r)]["irregular_accuracy_mean"] for r in ranks]
        std = [summary[str(r)].get("irregular_accuracy_std", 0.0) for r in ranks]
        params = [summary[str(r)].get("trainable_params") for r in ranks]
        full = summary.get("full") or {}
        others = None
        if all("regular_accuracy_mean" in summary[str(r)] for r in ranks):
            others = {
                "regular verbs (control)": (
                    [summary[str(r)]["regular_accuracy_mean"] for r in ranks],
                    [summary[str(r)].get("regular_accuracy_std", 0.0) for r in ranks],
                )
            }
        elbow = (sweep.get("elbow") or {}).get("elbow_r", (sweep.get("elbow") or {}).get("elbow"))
        st.plotly_chart(
            charts.rank_elbow(
                ranks,
                mean,
                std,
                params if all(isinstance(p, int) for p in params) else None,
                elbow_r=elbow,
                full_mean=full.get("irregular_accuracy_mean"),
                full_std=full.get("irregular_accuracy_std"),
                others=others,
            ),
            key="sweep_elbow",
        )
        rows = []
        for key in [*map(str, ranks), *(["full"] if full else [])]:
            s = summary[key]
            ids = sweep.get("full", []) if key == "full" else sweep.get("runs", {}).get(key, [])
            row = {
                "r": key,
                "seeds": len(ids),
                "irregular acc.": helpers.mean_std(s, "irregular_accuracy"),
            }
            if "regular_accuracy_mean" in s:
                row["regular acc."] = helpers.mean_std(s, "regular_accuracy")
            row["control EN drift"] = helpers.mean_std(s, "control_en_drift", signed=True)
            row["final loss"] = f"{s.get('final_loss_mean', float('nan')):.4f}"
            row["trainable params"] = f"{s.get('trainable_params', 0):,}"
            rows.append(row)
        st.dataframe(rows, hide_index=True)
        if elbow is not None:
            st.caption(f"Elbow: r = {elbow}. {(sweep.get('elbow') or {}).get('definition', '')}")
    except (KeyError, TypeError, ValueError) as e:
        st.warning(f"The rank sweep in experiments.json is malformed ({e}).")

st.header("Which layers to adapt")
targets = data.experiment_section(experiments, "targets")
if targets is not None:
    try:
        st.plotly_chart(charts.targets_bars(targets), key="sweep_targets")
        rows = []
        for name, v in targets.items():
            row = {
                "targets": name,
                "runs": len(v.get("run_ids", [])),
                "irregular acc.": helpers.mean_std(v, "irregular_accuracy"),
            }
            if "regular_accuracy_mean" in v:
                row["regular acc."] = helpers.mean_std(v, "regular_accuracy")
            row["control EN drift"] = f"{100 * v.get('control_en_drift_mean', 0):+.2f}%"
            row["control ES drift"] = f"{100 * v.get('control_es_drift_mean', 0):+.2f}%"
            row["trainable params"] = f"{v.get('trainable_params', 0):,}"
            rows.append(row)
        st.dataframe(rows, hide_index=True)
    except (KeyError, TypeError, ValueError) as e:
        st.warning(f"The targets summary in experiments.json is malformed ({e}).")
