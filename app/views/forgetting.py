"""Forgetting: the answer first (at matched learning, does LoRA forget less than full
fine-tuning? one sentence and the chart that shows it, from the frontier grid of
experiments.json), then the final drift per method at each method's own defaults, the
learning-forgetting frontier, the replay sweep, and control perplexity over steps.

Every number comes from the shipped records (experiments.json, the run store)."""

from __future__ import annotations

import re

import streamlit as st

from app import data, helpers
from app.charts import forgetting as charts
from minituner.experiments.plan import REGENERATE

st.title("Forgetting")
base_metrics = data.base_metrics()
found = data.runs_with_warnings()
experiments = data.load_experiments()
FRONTIER_CMD = f"{REGENERATE} --only frontier"
frontier = data.experiment_section(experiments, "frontier", "frontier summary", FRONTIER_CMD)
forgetting = data.experiment_section(experiments, "forgetting", "forgetting summary")

# ---------------------------------------------------------------- the answer first
answer = helpers.matched_answer(frontier.matched) if frontier is not None else None
if answer is not None:
    st.markdown(answer)
    d = frontier.matched["control_en_drift"]
    r = frontier.matched["regular_accuracy"]
    st.plotly_chart(
        charts.matched_learning(frontier.matched), key="forget_matched", width="stretch"
    )
    if d.levels and len(r.levels) == len(d.levels):
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
    st.caption(
        "At each level, the least forgetting each method reaches in its grid with at "
        "least that irregular-verb accuracy (mean over seeds): learning held equal, so "
        "forgetting can be compared. The frontier below shows every configuration."
    )

st.markdown(
    "The control splits are held-out sentences the fine-tune never trains on: regular "
    "English verbs and Spanish. Their perplexity before and after fine-tuning shows what "
    "else the update changed. Drift = perplexity / base perplexity − 1; the design goal "
    "for LoRA is a drift within 5%. The charts show what was measured."
)


def _settings(rid: str) -> str:
    """A run's settings without its seed ("lora r=8 a=16 q,v lr=0.005 steps=40")."""
    info = data.run_by_id(rid)
    return re.sub(r" seed=\d+", "", info.finetune_config().label()) if info else rid


if forgetting is not None:
    st.subheader("Each method at its own default settings")
    learned = ", ".join(
        f"{m} {helpers.pct(v.irregular_accuracy.mean)}" for m, v in forgetting.items()
    )
    used = "; ".join(_settings(v.run_ids[0]) for v in forgetting.values() if v.run_ids)
    st.info(
        f"These bars compare each method at its own default settings ({used}), so the "
        f"methods also learn different amounts (irregular-verb accuracy: {learned}) and a "
        "method that learns more may forget more. The answer above compares them at "
        "matched learning."
    )
    a, b = st.columns(2)
    with a:
        st.plotly_chart(charts.drift_bars(forgetting), key="forget_bars", width="stretch")
    if all(v.regular_accuracy is not None for v in forgetting.values()):
        with b:
            st.plotly_chart(
                charts.metric_bars(
                    forgetting,
                    lambda v: v.regular_accuracy,
                    "Regular past tense, cloze accuracy",
                    "regular-verb accuracy (%)",
                ),
                key="forget_regular",
                width="stretch",
            )
    rows = []
    for m, v in forgetting.items():
        row = {
            "method": m,
            "runs": len(v.run_ids),
            "irregular acc.": helpers.mean_std(v.irregular_accuracy),
        }
        if v.regular_accuracy is not None:
            row["regular acc."] = helpers.mean_std(v.regular_accuracy)
        row["EN drift"] = helpers.mean_std(v.control_en_drift, signed=True)
        row["ES drift"] = helpers.mean_std(v.control_es_drift, signed=True)
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
if frontier is not None:
    cols = st.columns(len(charts.FRONTIER_PANELS))
    for col, (measure, y_title, scale) in zip(cols, charts.FRONTIER_PANELS, strict=True):
        with col:
            st.plotly_chart(
                charts.frontier(frontier, measure, y_title, scale),
                key=f"frontier_{measure}",
                width="stretch",
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
    st.plotly_chart(charts.replay(replay), key="replay_chart", width="stretch")
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
        charts.perplexity_over_steps(
            {helpers.run_label(r): r.metrics.evals for r in chosen},
            runs={helpers.run_label(r): (r.method, r.run_id) for r in chosen},
        ),
        key="forget_ppl",
        width="stretch",
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
                "irregular acc.": helpers.pct(r.final.irregular_accuracy),
                "regular acc.": helpers.pct(r.final.regular_accuracy),
                "regular acc. change": helpers.points(
                    r.final.regular_accuracy, base_metrics.regular_accuracy
                ),
                "EN drift": f"{100 * r.final.control_en_drift:+.2f}%",
                "ES drift": f"{100 * r.final.control_es_drift:+.2f}%",
            }
            for r in chosen
        ],
        hide_index=True,
    )
