"""Forgetting: control perplexity over steps and the final drift per method."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import forgetting as charts

st.title("Forgetting")
st.markdown(
    "The control splits are held-out sentences the fine-tune never trains on: regular "
    "English verbs and Spanish. Their perplexity before and after fine-tuning shows what "
    "else the update changed. Drift = perplexity / base perplexity − 1; the design goal "
    "for LoRA is a drift within 5%. The charts show what was measured."
)
base = data.base_or_stop()
found = data.runs_with_warnings()
experiments = data.load_experiments()
forgetting = data.experiment_section(experiments, "forgetting")

if forgetting is not None:
    try:
        a, b = st.columns(2)
        with a:
            st.plotly_chart(charts.drift_bars(forgetting), key="forget_bars")
        if all("regular_accuracy_mean" in v for v in forgetting.values()):
            with b:
                st.plotly_chart(
                    charts.metric_bars(
                        forgetting,
                        "regular_accuracy",
                        "Regular past tense, cloze accuracy",
                        "accuracy (%)",
                    ),
                    key="forget_regular",
                )
        rows = []
        for m, v in forgetting.items():
            row = {
                "method": m,
                "runs": len(v.get("run_ids", [])),
                "EN drift": helpers.mean_std(v, "control_en_drift", signed=True),
                "ES drift": helpers.mean_std(v, "control_es_drift", signed=True),
            }
            for key, name in (
                ("regular_accuracy", "regular acc."),
                ("irregular_accuracy", "irregular acc."),
            ):
                if f"{key}_mean" in v:
                    row[name] = helpers.mean_std(v, key)
            rows.append(row)
        st.dataframe(rows, hide_index=True)
        st.caption(
            f"Base model: regular accuracy {helpers.pct(base.metrics.get('regular_accuracy'))}, "
            "drift 0% by definition. Mean ± standard deviation over seeds."
        )
    except (KeyError, TypeError, ValueError) as e:
        st.warning(f"The forgetting summary in experiments.json is malformed ({e}).")

st.subheader("Control perplexity during training")
if not found:
    st.info("No runs in the store yet: train some on the **Train** page.")
    st.stop()
preferred = [rid for v in (forgetting or {}).values() for rid in v.get("run_ids", [])[:1]]
by_label = {helpers.run_label(r): r for r in found}
default = [helpers.run_label(r) for r in helpers.one_per_method(found, preferred)]
picked = st.multiselect("runs", list(by_label), default=default, key="forget_runs")
chosen = [by_label[label] for label in picked]
if chosen:
    st.plotly_chart(
        charts.perplexity_over_steps(
            {helpers.run_label(r): [e.to_json() for e in r.metrics.evals] for r in chosen}
        ),
        key="forget_ppl",
    )
    st.caption(
        "During training the perplexity is measured on a sample of each control split "
        f"(base model: EN {base.metrics.get('control_en_ppl', 0):.4f}, "
        f"ES {base.metrics.get('control_es_ppl', 0):.4f} on the full splits); "
        "the final drift below uses the full splits."
    )
    st.dataframe(
        [
            {
                "run": helpers.run_label(r),
                "EN drift": f"{100 * r.final.control_en_drift:+.2f}%",
                "ES drift": f"{100 * r.final.control_es_drift:+.2f}%",
                "regular acc.": helpers.pct(r.final.regular_accuracy),
                "irregular acc.": helpers.pct(r.final.irregular_accuracy),
            }
            for r in chosen
        ],
        hide_index=True,
    )
