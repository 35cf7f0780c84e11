"""Forgetting: the final drift per method, the learning-forgetting frontier, the replay
sweep, and control perplexity over steps."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import forgetting as charts
from minituner.experiments.run import REGENERATE, frontier_claim

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


def _optional_section(key: str, command: str) -> dict | None:
    """A section of experiments.json that older files lack: None, with a hint, then."""
    if experiments is None:
        return None
    section = experiments.get(key)
    if not isinstance(section, dict) or not section:
        st.info(f"experiments.json has no {key} results yet: `{command}` computes them.")
        return None
    return section


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
frontier = _optional_section("frontier", FRONTIER_CMD)
if frontier is not None:
    try:
        cols = st.columns(len(charts.FRONTIER_PANELS))
        for col, (measure, y_title, scale) in zip(cols, charts.FRONTIER_PANELS, strict=True):
            with col:
                st.plotly_chart(
                    charts.frontier(frontier, measure, y_title, scale), key=f"frontier_{measure}"
                )
        claim = frontier_claim(frontier)
        if claim is not None:
            answer = "Yes" if claim["held"] else "No"
            st.markdown(
                f"**At matched learning, does LoRA forget less than full fine-tuning?** "
                f"{answer}, as measured: {claim['figures']}."
            )
        d = frontier["matched"]["control_en_drift"]
        r = frontier["matched"]["regular_accuracy"]
        if d["levels"]:
            st.dataframe(
                [
                    {
                        "irregular acc. at least": helpers.pct(x),
                        "LoRA: EN drift": f"{100 * d['lora'][i]:+.2f}%",
                        "full: EN drift": f"{100 * d['full'][i]:+.2f}%",
                        "LoRA: regular acc.": helpers.pct(r["lora"][i]),
                        "full: regular acc.": helpers.pct(r["full"][i]),
                    }
                    for i, x in enumerate(d["levels"])
                ],
                hide_index=True,
                key="frontier_matched",
            )
        grid = sorted({c["label"] for c in frontier["configs"]})
        st.caption(
            f"{len(grid)} configurations, {sum(c['n'] for c in frontier['configs'])} runs "
            f"(full fine-tuning: lr × steps; LoRA on q,v: r × lr; QLoRA at its defaults). "
            f"Reproduce: `{FRONTIER_CMD}`."
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        st.warning(f"The frontier summary in experiments.json is malformed ({e}).")

st.subheader("Replay: mixing regular verbs back in")
st.markdown(
    "The classic remedy for forgetting: replay some of the old task. A share of the "
    "training pairs is swapped for regular-verb cloze pairs (the verbs the base model "
    "already knew); LoRA and full fine-tuning at their defaults, over seeds."
)
REPLAY_CMD = f"{REGENERATE} --only replay"
replay = _optional_section("replay", REPLAY_CMD)
if replay is not None:
    try:
        st.plotly_chart(charts.replay(replay), key="replay_chart")
        st.dataframe(
            [
                {
                    "method": m,
                    "replay": f"{100 * e['replay']:.0f}%",
                    "runs": e["n"],
                    "irregular acc.": helpers.mean_std(e, "irregular_accuracy"),
                    "regular acc.": helpers.mean_std(e, "regular_accuracy"),
                    "EN drift": helpers.mean_std(e, "control_en_drift", signed=True),
                    "ES drift": helpers.mean_std(e, "control_es_drift", signed=True),
                }
                for m in ("lora", "full")
                for e in replay.get(m, [])
            ],
            hide_index=True,
            key="replay_table",
        )
        st.caption(f"Mean ± standard deviation over seeds. Reproduce: `{REPLAY_CMD}`.")
    except (KeyError, TypeError, ValueError) as e:
        st.warning(f"The replay summary in experiments.json is malformed ({e}).")

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
