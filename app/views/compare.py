"""Compare runs: overlaid loss and evaluation curves (irregular-verb accuracy, the
regular-verb accuracy it costs, control drift), the accuracy per irregular verb of one
run over its steps, and a table of final figures with the change against the base model.

Runs are found by label, newest first, with a filter by method, r and seed; the run this
session just trained is selected when the page opens; the selection lives in the URL
(app/run_picker.py). Each run keeps its method's colour whatever else is drawn."""

from __future__ import annotations

import streamlit as st

from app import data, helpers, live
from app.charts import compare as charts
from app.charts import verbs as verb_charts
from app.run_picker import pick_runs

st.title("Compare runs")
base_metrics = data.base_metrics()
found = data.runs_with_warnings()
if not found:
    st.info("No runs in the store yet: train one on the **Train** page.")
    st.stop()

fallback = [r.run_id for r in helpers.one_per_method(found, data.preferred_run_ids())]
chosen, params = pick_runs(
    found,
    "compare",
    helpers.run_label,
    data.run_stamp,
    fallback,
    just_trained=data.just_trained(live.owner()),
)
st.query_params.from_dict(params)
if not chosen:
    st.info("Pick one or more runs (or loosen the filter).")
    st.stop()

labels = {r.run_id: helpers.run_label(r) for r in chosen}
runs = {labels[r.run_id]: (r.method, r.run_id) for r in chosen}
evals = {labels[r.run_id]: r.metrics.evals for r in chosen}
a, b = st.columns(2)
with a:
    st.plotly_chart(
        charts.eval_curves(
            evals,
            lambda e: e.irregular_accuracy,
            "Irregular past: the task (sample)",
            "irregular-verb accuracy (%)",
            runs=runs,
        ),
        key="compare_acc",
        width="stretch",
    )
with b:
    st.plotly_chart(
        charts.eval_curves(
            evals,
            lambda e: e.regular_accuracy,
            "Regular past: the cost (sample)",
            "regular-verb accuracy (%)",
            runs=runs,
        ),
        key="compare_regular",
        width="stretch",
    )
c, d = st.columns(2)
with c:
    st.plotly_chart(
        charts.eval_curves(
            evals,
            lambda e: e.control_en_drift,
            "Control English drift (sample)",
            "perplexity drift vs base (%)",
            runs=runs,
        ),
        key="compare_drift",
        width="stretch",
    )
with d:
    log_y = st.toggle("log-scale loss", value=False, key="compare_log")
    series = {labels[r.run_id]: (r.metrics.curves.step, r.metrics.curves.loss) for r in chosen}
    st.plotly_chart(
        charts.loss_curves(series, log_y=log_y, runs=runs), key="compare_loss", width="stretch"
    )

st.subheader("Final figures (full held-out splits)")
st.dataframe(helpers.final_figures_rows(chosen, base_metrics), hide_index=True)
st.caption(
    "Regular acc. change: the run's regular-verb accuracy minus the base model's, in "
    "percentage points (what the fine-tune cost the verbs it never trained on)."
)

st.subheader("Accuracy per irregular verb")
by_id = {r.run_id: r for r in chosen}
verb_id = st.selectbox(
    "run", list(by_id), key="compare_verb_run", format_func=lambda rid: labels[rid]
)
verb_run = by_id[verb_id]
verb_label = labels[verb_id]
points = verb_charts.per_verb_points(verb_run.metrics.evals)
taught = verb_run.finetune_config().teach.split(":")[0]
if points:
    st.plotly_chart(
        verb_charts.verb_curves(points, f"Per-verb accuracy (sample): {verb_label}", taught),
        key="compare_verbs",
        width="stretch",
    )
    st.markdown(verb_charts.order_sentence(points, verb_run.finetune_config().steps))
else:
    st.info(verb_charts.order_sentence(points, verb_run.finetune_config().steps))
