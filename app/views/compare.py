"""Compare runs: overlaid loss and evaluation curves, the accuracy per irregular verb of one
run over its steps (which verb is learned first, which last), and a table of final figures."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import compare as charts
from app.charts import verbs as verb_charts

st.title("Compare runs")
base_metrics = data.base_metrics()
found = data.runs_with_warnings()
if not found:
    st.info("No runs in the store yet: train one on the **Train** page.")
    st.stop()

by_label = {helpers.run_label(r): r for r in found}
methods = sorted({r.method for r in found})
c1, c2 = st.columns([1, 3])
show = c1.multiselect("methods", methods, default=methods, key="compare_methods")
pool = [label for label, r in by_label.items() if r.method in show]
default = [
    helpers.run_label(r)
    for r in helpers.one_per_method(found, data.preferred_run_ids())
    if helpers.run_label(r) in pool
]
picked = c2.multiselect("runs", pool, default=default, key="compare_runs")
if not picked:
    st.info("Pick one or more runs.")
    st.stop()
chosen = [by_label[label] for label in picked]

log_y = st.toggle("log-scale loss", value=False, key="compare_log")
series = {}
for r in chosen:
    series[helpers.run_label(r)] = (r.metrics.curves.step, r.metrics.curves.loss)
st.plotly_chart(charts.loss_curves(series, log_y=log_y), key="compare_loss")

evals = {helpers.run_label(r): r.metrics.evals for r in chosen}
a, b = st.columns(2)
with a:
    st.plotly_chart(
        charts.eval_curves(
            evals,
            lambda e: e.irregular_accuracy,
            "Irregular past accuracy (sample)",
            "accuracy (%)",
        ),
        key="compare_acc",
    )
with b:
    st.plotly_chart(
        charts.eval_curves(
            evals, lambda e: e.control_en_drift, "Control English drift (sample)", "drift (%)"
        ),
        key="compare_drift",
    )

st.subheader("Accuracy per irregular verb")
verb_label = st.selectbox("run", picked, key="compare_verb_run")
verb_run = by_label[verb_label]
points = verb_charts.per_verb_points(verb_run.metrics.evals)
taught = verb_run.finetune_config().teach.split(":")[0]
if points:
    st.plotly_chart(
        verb_charts.verb_curves(points, f"Per-verb accuracy (sample): {verb_label}", taught),
        key="compare_verbs",
    )
    st.markdown(verb_charts.order_sentence(points, verb_run.finetune_config().steps))
else:
    st.info(verb_charts.order_sentence(points, verb_run.finetune_config().steps))

st.subheader("Final figures (full held-out splits)")
st.dataframe(helpers.final_figures_rows(chosen, base_metrics), hide_index=True)
