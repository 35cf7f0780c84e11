"""Forgetting: the final drift per method, the learning-forgetting frontier, the replay
sweep, and control perplexity over steps."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import forgetting as charts
from minituner.experiments.claims import frontier_claim
from minituner.experiments.plan import REGENERATE

st.title("Forgetting")
st.markdown(
    "The control splits are held-out sentences the fine-tune never trains on: regular "
    "English verbs and Spanish. Their perplexity before and after fine-tuning shows what "
    "else the update changed. Drift = perplexity / base perplexity − 1; the design goal "
    "for LoRA is a drift within 5%. The charts show what was measured."
)
base_metrics = data.base_metrics()
found = data.runs_with_warnings()
experiments = data.load_experiments()
forgetting = data.experiment_section(experiments, "forgetting", "forgetting summary")

if forgetting is not None:
    a, b = st.columns(2)
    with a:
        st.plotly_chart(charts.drift_bars(forgetting), key="forget_bars")
    if all(v.regular_accuracy is not None for v in forgetting.values()):
        with b:
            st.plotly_chart(
                charts.metric_bars(
                    forgetting,
                    lambda v: v.regular_accuracy,
                    "Regular past tense, cloze accuracy",
                    "accuracy (%)",
                ),
                key="forget_regular",
            )
    rows = []
    for m, v in forgetting.items():
        row = {
            "method": m,
            "runs": len(v.run_ids),
            "EN drift": helpers.mean_std(v.control_en_drift, signed=True),
            "ES drift": helpers.mean_std(v.control_es_drift, signed=True),
        }
        if v.regular_accuracy is not None:
            row["regular acc."] = helpers.mean_std(v.regular_accuracy)
        row["irregular acc."] = helpers.mean_std(v.irregular_accuracy)
        rows.append(row)
    st.dataframe(rows, hide_index=True)
    st.caption(
        f"Base model: regular accuracy {helpers.pct(base_metrics.regular_accuracy)}, "
        "drift 0% by definition. Mean ± standard deviation over seeds."
    )


st.subheader("Learning vs forgetting: the frontier")
st.markdown(
    "One setting per method says little: a smaller learning rate or fewer steps forget "
    "less and learn less. Here every configuration of a grid is a point, its learning "
    "(irregular-verb accuracy) against its forgetting (control drift; regular-verb "
    "accuracy), the mean over seeds with ± one standard deviation as bars. The line is "
    "each method's Pareto front: the least forgetting it reaches with at least that much "
    "learning."
)
FRONTIER_CMD = f"{REGENERATE} --only frontier"
frontier = data.experiment_section(experiments, "frontier", "frontier summary", FRONTIER_CMD)
if frontier is not None:
    cols = st.columns(len(charts.FRONTIER_PANELS))
    for col, (measure, y_title, scale) in zip(cols, charts.FRONTIER_PANELS, strict=True):
        with col:
            st.plotly_chart(
                charts.frontier(frontier, measure, y_title, scale), key=f"frontier_{measure}"
            )
    claim = frontier_claim(frontier)
    if claim is not None:
        answer = "Yes" if claim.held else "No"
        st.markdown(
            f"**At matched learning, does LoRA forget less than full fine-tuning?** "
            f"{answer}, as measured: {claim.figures}."
        )
    d = frontier.matched.get("control_en_drift")
    r = frontier.matched.get("regular_accuracy")
    if d and r and d.levels and len(r.levels) == len(d.levels):
        st.dataframe(
            [
                {
                    "irregular acc. at least": helpers.pct(x),
                    "LoRA: EN drift": f"{100 * d.lora[i]:+.2f}%",
                    "full: EN drift": f"{100 * d.full[i]:+.2f}%",
                    "LoRA: regular acc.": helpers.pct(r.lora[i]),
                    "full: regular acc.": helpers.pct(r.full[i]),
                }
                for i, x in enumerate(d.levels)
            ],
            hide_index=True,
            key="frontier_matched",
        )
    grid = sorted({c.label for c in frontier.configs})
    st.caption(
        f"{len(grid)} configurations, {sum(c.stats.n for c in frontier.configs)} runs "
        f"(full fine-tuning: lr × steps; LoRA on q,v: r × lr; QLoRA at its defaults). "
        f"Reproduce: `{FRONTIER_CMD}`."
    )

st.subheader("Replay: mixing regular verbs back in")
st.markdown(
    "The classic remedy for forgetting: replay some of the old task. A share of the "
    "training pairs is swapped for regular-verb cloze pairs (the verbs the base model "
    "already knew); LoRA and full fine-tuning at their defaults, over seeds."
)
REPLAY_CMD = f"{REGENERATE} --only replay"
replay = data.experiment_section(experiments, "replay", "replay summary", REPLAY_CMD)
if replay is not None:
    st.plotly_chart(charts.replay(replay), key="replay_chart")
    st.dataframe(
        [
            {
                "method": m,
                "replay": f"{100 * e.replay:.0f}%",
                "runs": e.stats.n,
                "irregular acc.": helpers.mean_std(e.stats.irregular_accuracy),
                "regular acc.": helpers.mean_std(e.stats.regular_accuracy),
                "EN drift": helpers.mean_std(e.stats.control_en_drift, signed=True),
                "ES drift": helpers.mean_std(e.stats.control_es_drift, signed=True),
            }
            for m, entries in (("lora", replay.lora), ("full", replay.full))
            for e in entries
        ],
        hide_index=True,
        key="replay_table",
    )
    st.caption(f"Mean ± standard deviation over seeds. Reproduce: `{REPLAY_CMD}`.")

st.subheader("Control perplexity during training")
if not found:
    st.info("No runs in the store yet: train some on the **Train** page.")
    st.stop()
preferred = [rid for v in (forgetting or {}).values() for rid in v.run_ids[:1]]
by_label = {helpers.run_label(r): r for r in found}
default = [helpers.run_label(r) for r in helpers.one_per_method(found, preferred)]
picked = st.multiselect("runs", list(by_label), default=default, key="forget_runs")
chosen = [by_label[label] for label in picked]
if chosen:
    st.plotly_chart(
        charts.perplexity_over_steps({helpers.run_label(r): r.metrics.evals for r in chosen}),
        key="forget_ppl",
    )
    st.caption(
        "During training the perplexity is measured on a sample of each control split "
        f"(base model: EN {base_metrics.control_en_ppl:.4f}, "
        f"ES {base_metrics.control_es_ppl:.4f} on the full splits); "
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
