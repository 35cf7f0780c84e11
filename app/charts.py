"""Plotly figures for the explorer: each function takes plain data and returns a Figure.

No Streamlit and no model code here, so every chart can be tested without a browser.
Fonts are large: the app is meant to be projected in a lecture room.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT_SIZE = 18
NUMERICAL_ZERO = 1e-6  # singular values below this share of σ₁ are rounding noise
COLORS = {
    "full": "#d62728",
    "lora": "#1f77b4",
    "qlora": "#2ca02c",
    "base": "#7f7f7f",
    "nf4": "#2ca02c",
    "int4": "#ff7f0e",
    "fp4": "#9467bd",
}
CATEGORY_COLORS = {
    "weights": "#4c78a8",
    "nf4": "#54a24b",
    "lora": "#f58518",
    "gradients": "#e45756",
    "optimizer": "#b279a2",
    "activations": "#9d9da0",
}
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


def _style(fig: go.Figure, title: str = "", height: int = 460) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, font=dict(size=FONT_SIZE + 4)) if title else None,
        font=dict(size=FONT_SIZE),
        template="plotly_white",
        height=height,
        margin=dict(l=70, r=30, t=70 if title else 30, b=60),
        legend=dict(font=dict(size=FONT_SIZE - 2)),
        hoverlabel=dict(font=dict(size=FONT_SIZE - 2)),
    )
    fig.update_annotations(font_size=FONT_SIZE)
    return fig


def _legend_below(fig: go.Figure, y: float = -0.22) -> go.Figure:
    """A horizontal legend under the plot: run labels are long, and a side legend would
    squeeze the plot on a projector."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=y, xanchor="left", x=0))
    return fig


def series_colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per label: the method's colour (full red, LoRA blue, QLoRA green) when
    each label starts with a different method, else distinct palette colours."""
    firsts = [label.split()[0] if label else "" for label in labels]
    if len(set(firsts)) == len(firsts) and all(f in COLORS for f in firsts):
        return {label: COLORS[f] for label, f in zip(labels, firsts, strict=True)}
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


# ---------------------------------------------------------------------- training curves
def loss_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "Training loss",
    log_y: bool = False,
) -> go.Figure:
    """One line per run: ``series[label] = (steps, losses)``."""
    fig = go.Figure()
    colors = series_colors(list(series))
    for label, (steps, losses) in series.items():
        fig.add_trace(
            go.Scatter(
                x=list(steps),
                y=list(losses),
                mode="lines",
                name=label,
                line=dict(width=3, color=colors[label]),
            )
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss (answer characters)", type="log" if log_y else "linear")
    _legend_below(fig)
    return _style(fig, title, height=520)


def live_training(
    steps: Sequence[int],
    losses: Sequence[float],
    evals: Sequence[Mapping],
    total_steps: int,
) -> go.Figure:
    """The live view: the loss per step (left) and the periodic evaluation (right:
    irregular-verb accuracy and control-English drift), x fixed to the whole run."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("loss", "evaluation on a sample"),
        specs=[[{}, {"secondary_y": True}]],
        horizontal_spacing=0.12,
    )
    fig.add_trace(
        go.Scatter(
            x=list(steps),
            y=list(losses),
            mode="lines+markers",
            name="loss",
            marker=dict(size=5),
            line=dict(width=3, color=COLORS["lora"]),
        ),
        row=1,
        col=1,
    )
    ev_steps = [e["step"] for e in evals]
    fig.add_trace(
        go.Scatter(
            x=ev_steps,
            y=[100 * e.get("irregular_accuracy", math.nan) for e in evals],
            mode="lines+markers",
            name="irregular accuracy (%)",
            line=dict(width=3, color=COLORS["qlora"]),
            marker=dict(size=9),
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=ev_steps,
            y=[100 * e.get("control_en_drift", math.nan) for e in evals],
            mode="lines+markers",
            name="control EN drift (%)",
            line=dict(width=3, dash="dot", color=COLORS["full"]),
            marker=dict(size=9),
        ),
        row=1,
        col=2,
        secondary_y=True,
    )
    drifts = [100 * e["control_en_drift"] for e in evals if "control_en_drift" in e]
    lo, hi = min([0.0, *drifts]), max([1.0, *drifts])  # at least 0..1 %: noise stays flat
    pad = 0.1 * (hi - lo)
    top = max(1, int(total_steps))
    fig.update_xaxes(title_text="step", range=[0, top * 1.02])
    fig.update_yaxes(title_text="loss", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 101], row=1, col=2, secondary_y=False)
    fig.update_yaxes(
        title_text="drift (%)",
        range=[lo - pad, hi + pad],
        row=1,
        col=2,
        secondary_y=True,
        showgrid=False,
    )
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return _style(fig, height=440)


def eval_curves(
    series: Mapping[str, Sequence[Mapping]],
    key: str,
    title: str,
    y_title: str,
    percent: bool = True,
) -> go.Figure:
    """One line per run of an evaluation figure over steps (``series[label] = evals``)."""
    fig = go.Figure()
    scale = 100.0 if percent else 1.0
    colors = series_colors(list(series))
    for label, evals in series.items():
        pts = [(e["step"], e[key]) for e in evals if key in e]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[scale * p[1] for p in pts],
                mode="lines+markers",
                name=label,
                line=dict(width=3, color=colors[label]),
                marker=dict(size=8),
            )
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=y_title)
    _legend_below(fig)
    return _style(fig, title, height=520)


def perplexity_over_steps(series: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """Control perplexity over steps, English and Spanish side by side, one line per run."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("control English", "control Spanish"), shared_yaxes=False
    )
    colors = series_colors(list(series))
    for label, evals in series.items():
        color = colors[label]
        for col, lang in ((1, "en"), (2, "es")):
            key = f"control_{lang}_ppl"
            pts = [(e["step"], e[key]) for e in evals if key in e]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    line=dict(width=3, color=color),
                    marker=dict(size=8),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="perplexity per character", row=1, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return _style(fig, "Control perplexity during fine-tuning", height=480)


def drift_bars(summary: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Final control drift per method with its spread over seeds:
    ``summary[method] = {control_en_drift_mean, control_en_drift_std, control_es_…}``."""
    methods = list(summary)
    fig = go.Figure()
    for lang, name, color in (("en", "English", "#4c78a8"), ("es", "Spanish", "#f58518")):
        means = [
            100 * float(summary[m].get(f"control_{lang}_drift_mean", math.nan)) for m in methods
        ]
        stds = [
            100 * float(summary[m].get(f"control_{lang}_drift_std", 0.0) or 0.0) for m in methods
        ]
        fig.add_trace(
            go.Bar(
                x=methods,
                y=means,
                name=f"control {name}",
                marker_color=color,
                error_y=dict(type="data", array=stds, visible=True, thickness=2),
                text=[f"{m:+.1f}%" for m in means],
                textposition="outside",
            )
        )
    fig.add_hline(y=5, line_dash="dash", line_color="#555", annotation_text="5% drift")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="perplexity drift vs base (%)")
    return _style(fig, "Forgetting: final control drift")


def metric_bars(
    summary: Mapping[str, Mapping[str, float]],
    key: str,
    title: str,
    y_title: str,
    percent: bool = True,
) -> go.Figure:
    """One bar per group (method, targets, ...) of ``summary[group][key + "_mean"]`` with
    ``key + "_std"`` as its error bar."""
    groups = list(summary)
    scale = 100.0 if percent else 1.0
    means = [scale * float(summary[g].get(f"{key}_mean", math.nan)) for g in groups]
    stds = [scale * float(summary[g].get(f"{key}_std", 0.0) or 0.0) for g in groups]
    fig = go.Figure(
        go.Bar(
            x=groups,
            y=means,
            error_y=dict(type="data", array=stds, visible=True, thickness=2),
            marker_color=[COLORS.get(g, PALETTE[i % len(PALETTE)]) for i, g in enumerate(groups)],
            text=[f"{m:.1f}%" if percent else f"{m:.3g}" for m in means],
            textposition="inside",
            insidetextanchor="middle",
            name=key,
        )
    )
    fig.update_yaxes(title_text=y_title, range=[0, 110] if percent else None)
    return _style(fig, title)


# ---------------------------------------------------------------------- completions
def candidate_bars(probs: Mapping[str, Mapping[str, float]], title: str = "") -> go.Figure:
    """Probability of each candidate answer, one bar group per model:
    ``probs[model_label][candidate] = p`` (renormalized over the candidates)."""
    fig = go.Figure()
    for i, (model, p) in enumerate(probs.items()):
        cands = list(p)
        fig.add_trace(
            go.Bar(
                x=cands,
                y=[100 * p[c] for c in cands],
                name=model,
                marker_color=COLORS["base"] if i == 0 else PALETTE[(i - 1) % len(PALETTE)],
                text=[f"{100 * p[c]:.1f}%" for c in cands],
                textposition="outside",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="probability among the candidates (%)", range=[0, 110])
    fig.update_xaxes(title_text="candidate answer")
    _legend_below(fig)
    return _style(fig, title or "Which answer does the model prefer?", height=460)


# ---------------------------------------------------------------------- spectrum
def _short_layer(name: str) -> str:
    # "blocks.0.attn.q_proj" -> "L0 q_proj"
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return f"L{parts[1]} {parts[-1]}"
    return name


def spectrum_side_by_side(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    normalized: bool = False,
    floor: float = NUMERICAL_ZERO,
) -> go.Figure:
    """Singular values of ΔW on a log scale, one panel per run (e.g. full | LoRA), one
    line per layer: ``panels[run_label][layer] = singular values``.

    Values at or below ``floor`` × σ₁ are float32 rounding of an exactly low-rank product
    (a rank-r LoRA update has only r non-zero singular values) and are not drawn."""
    labels = list(panels) or [""]
    fig = make_subplots(
        rows=1,
        cols=len(labels),
        subplot_titles=labels,
        shared_yaxes=True,
        horizontal_spacing=0.06,
    )
    layers = sorted({layer for p in panels.values() for layer in p})
    colors = {layer: PALETTE[i % len(PALETTE)] for i, layer in enumerate(layers)}
    for col, label in enumerate(labels, start=1):
        for layer, sv in panels.get(label, {}).items():
            y = [float(s) for s in sv]
            top = y[0] if y else 0.0
            if normalized and top > 0:
                y = [s / top for s in y]
                top = 1.0
            # a log axis cannot show 0; rounding noise is not a direction of the update
            pts = [(i + 1, s) for i, s in enumerate(y) if s > 0 and s > floor * top]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines",
                    name=_short_layer(layer),
                    legendgroup=layer,
                    showlegend=col == 1 or layer not in panels.get(labels[0], {}),
                    line=dict(width=2.5, color=colors[layer]),
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title_text="σᵢ / σ₁" if normalized else "singular value σᵢ", row=1, col=1)
    fig.update_xaxes(title_text="index i", type="log")
    return _style(fig, "Singular values of ΔW per layer", height=520)


def cumulative_energy(series: Mapping[str, Sequence[float]], max_k: int | None = None) -> go.Figure:
    """Share of ‖ΔW‖²_F held by the top-k singular values: ``series[label] = energies``."""
    fig = go.Figure()
    colors = series_colors(list(series))
    for label, energy in series.items():
        e = [float(v) for v in energy][: max_k or None]
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(e) + 1)),
                y=[100 * v for v in e],
                mode="lines+markers",
                name=label,
                line=dict(width=3, color=colors[label]),
                marker=dict(size=6),
            )
        )
    fig.add_hline(y=90, line_dash="dash", line_color="#555", annotation_text="90% of the energy")
    fig.update_xaxes(title_text="top-k singular values", type="log")
    fig.update_yaxes(title_text="cumulative energy (%)", range=[0, 102])
    _legend_below(fig)
    return _style(fig, "Cumulative energy of ΔW", height=520)


def stable_rank_bars(ranks: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Stable rank per layer, one bar group per run: ``ranks[run_label][layer] = value``."""
    fig = go.Figure()
    colors = series_colors(list(ranks))
    for label, per_layer in ranks.items():
        layers = list(per_layer)
        fig.add_trace(
            go.Bar(
                x=[_short_layer(x) for x in layers],
                y=[float(per_layer[x]) for x in layers],
                name=label,
                marker_color=colors[label],
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="stable rank ‖ΔW‖²_F / ‖ΔW‖²₂")
    fig.update_xaxes(tickangle=-45)
    _legend_below(fig, y=-0.35)
    return _style(fig, "Stable rank of ΔW per layer", height=560)


def truncation_curve(
    k: Sequence[int | str],
    accuracy: Sequence[float],
    drift: Sequence[float] | None = None,
) -> go.Figure:
    """Accuracy (and drift) when full fine-tuning's ΔW is cut to its top-k singular
    directions; ``k`` may end with "full"."""
    xs = [str(v) for v in k]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[100 * float(a) for a in accuracy],
            mode="lines+markers",
            name="irregular accuracy (%)",
            line=dict(width=3, color=COLORS["qlora"]),
            marker=dict(size=10),
        ),
        secondary_y=False,
    )
    if drift is not None:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[100 * float(d) for d in drift],
                mode="lines+markers",
                name="control EN drift (%)",
                line=dict(width=3, dash="dot", color=COLORS["full"]),
                marker=dict(size=10),
            ),
            secondary_y=True,
        )
    fig.update_xaxes(title_text="rank k kept of full fine-tuning's ΔW", type="category")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 101], secondary_y=False)
    fig.update_yaxes(title_text="drift (%)", tickformat=".1f", secondary_y=True, showgrid=False)
    return _style(fig, "Truncating full fine-tuning's update to rank k")


# ---------------------------------------------------------------------- rank sweep
def rank_elbow(
    ranks: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    params: Sequence[int] | None = None,
    elbow_r: int | None = None,
    full_mean: float | None = None,
    full_std: float | None = None,
    others: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> go.Figure:
    """Accuracy (mean ± std over seeds) and trainable parameters against r on a log
    axis; the elbow marked, full fine-tuning as a dashed line. ``others[label] = (mean,
    std)`` adds further accuracy lines (e.g. the regular-verb control)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    r = [int(v) for v in ranks]
    m = [100 * float(v) for v in mean]
    s = [100 * float(v or 0.0) for v in std]
    fig.add_trace(
        go.Scatter(
            x=r + r[::-1],
            y=[a + b for a, b in zip(m, s, strict=True)]
            + [a - b for a, b in zip(m, s, strict=True)][::-1],
            fill="toself",
            fillcolor="rgba(31,119,180,0.18)",
            line=dict(width=0),
            hoverinfo="skip",
            name="± 1 std over seeds",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=r,
            y=m,
            mode="lines+markers",
            name="irregular verbs (mean)",
            line=dict(width=3, color=COLORS["lora"]),
            marker=dict(size=10),
            error_y=dict(type="data", array=s, visible=True, thickness=2),
        ),
        secondary_y=False,
    )
    for i, (label, (om, osd)) in enumerate((others or {}).items()):
        fig.add_trace(
            go.Scatter(
                x=r,
                y=[100 * float(v) for v in om],
                mode="lines+markers",
                name=label,
                line=dict(width=3, color=PALETTE[(i + 3) % len(PALETTE)]),
                marker=dict(size=9, symbol="diamond"),
                error_y=dict(type="data", array=[100 * float(v or 0.0) for v in osd], visible=True),
            ),
            secondary_y=False,
        )
    if full_mean is not None:
        fm, fs = 100 * float(full_mean), 100 * float(full_std or 0.0)
        fig.add_trace(
            go.Scatter(
                x=[r[0], r[-1]],
                y=[fm, fm],
                mode="lines",
                name=f"full fine-tuning ({fm:.1f}% ± {fs:.1f})",
                line=dict(width=3, dash="dash", color=COLORS["full"]),
            ),
            secondary_y=False,
        )
    if params is not None:
        fig.add_trace(
            go.Scatter(
                x=r,
                y=[int(p) for p in params],
                mode="lines+markers",
                name="trainable parameters",
                line=dict(width=2, dash="dot", color="#555"),
                marker=dict(size=8, symbol="square"),
            ),
            secondary_y=True,
        )
    if elbow_r is not None:
        fig.add_vline(  # shapes take data values on a log axis, annotations log10
            x=int(elbow_r),
            line_dash="dash",
            line_color=COLORS["qlora"],
            line_width=3,
        )
        i = r.index(int(elbow_r)) if int(elbow_r) in r else None
        fig.add_annotation(
            x=math.log10(int(elbow_r)),
            y=(m[i] if i is not None else 50),
            text=f"elbow r = {elbow_r}",
            showarrow=True,
            arrowhead=2,
            ax=60,
            ay=40,
            font=dict(size=FONT_SIZE, color=COLORS["qlora"]),
        )
    fig.update_xaxes(title_text="rank r", type="log", tickvals=r, ticktext=[str(v) for v in r])
    fig.update_yaxes(title_text="accuracy (%)", secondary_y=False)
    fig.update_yaxes(
        title_text="trainable parameters",
        type="log",
        tickvals=[int(p) for p in params] if params is not None else None,
        ticktext=[f"{int(p):,}" for p in params] if params is not None else None,
        secondary_y=True,
        showgrid=False,
    )
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return _style(fig, "Rank sweep: where a larger r stops paying off", height=540)


def targets_bars(summary: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Accuracy (± std) per choice of target modules, trainable parameters as text; the
    regular-verb control next to it when the summary has it."""
    names = list(summary)
    params = [summary[n].get("trainable_params") for n in names]
    series = [("irregular_accuracy", "irregular verbs (task)", COLORS["lora"])]
    if all("regular_accuracy_mean" in summary[n] for n in names):
        series.append(("regular_accuracy", "regular verbs (control)", "#ff7f0e"))
    fig = go.Figure()
    for key, label, color in series:
        fig.add_trace(
            go.Bar(
                x=names,
                y=[100 * float(summary[n].get(f"{key}_mean", math.nan)) for n in names],
                error_y=dict(
                    type="data",
                    array=[100 * float(summary[n].get(f"{key}_std", 0.0) or 0.0) for n in names],
                    visible=True,
                    thickness=2,
                ),
                marker_color=color,
                text=[f"{p:,} params" if isinstance(p, int) else "" for p in params]
                if key == "irregular_accuracy"
                else None,
                textposition="inside",
                name=label,
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="target modules")
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 105])
    _legend_below(fig)
    return _style(fig, "Which layers to adapt", height=500)


# ---------------------------------------------------------------------- memory
def memory_stacked(rows: Sequence[Mapping], title: str = "Training memory") -> go.Figure:
    """Stacked bars, one bar per ``row["source"]`` (e.g. "LoRA predicted"), one colour per
    ``row["category"]``; rows as :func:`minituner.memory.breakdown_table` gives them."""
    sources: list[str] = []
    for row in rows:
        if row["source"] not in sources:
            sources.append(row["source"])
    categories: list[str] = []
    for row in rows:
        if row["category"] not in categories:
            categories.append(row["category"])
    fig = go.Figure()
    for cat in categories:
        by_source = {row["source"]: row for row in rows if row["category"] == cat}
        fig.add_trace(
            go.Bar(
                x=sources,
                y=[by_source[s]["bytes"] if s in by_source else 0 for s in sources],
                name=cat,
                marker_color=CATEGORY_COLORS.get(cat),
                customdata=[
                    by_source[s].get("label", "") if s in by_source else "" for s in sources
                ],
                hovertemplate="%{x}<br>" + cat + ": %{customdata}<extra></extra>",
            )
        )
    fig.update_layout(barmode="stack", legend=dict(traceorder="normal"))
    fig.update_yaxes(title_text="bytes")
    return _style(fig, title, height=500)


def scaling_bars(
    rows: Sequence[Mapping], title: str = "7B QLoRA: measured peak vs prediction"
) -> go.Figure:
    """Grouped bars in GiB, one group per configuration (``row["label"]``): our measured
    peak, the prediction (float32 LoRA + Adam) and, when any row has it, the PEFT +
    bitsandbytes peak; rows as :func:`minituner.scaling.scaling_rows` gives them."""
    labels = [row["label"] for row in rows]
    series = [
        ("measured peak (ours)", "peak_bytes", COLORS["qlora"]),
        ("predicted (fp32 LoRA + Adam)", "predicted_mixed_bytes", "#9d9da0"),
    ]
    if any(row.get("peft_peak_bytes") is not None for row in rows):
        series.append(("measured peak (PEFT + bitsandbytes)", "peft_peak_bytes", "#ff7f0e"))
    fig = go.Figure()
    for name, key, color in series:
        gib = [row[key] / 2**30 if row.get(key) is not None else math.nan for row in rows]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=gib,
                name=name,
                marker_color=color,
                text=["" if math.isnan(v) else f"{v:.2f}" for v in gib],
                textposition="outside",
                hovertemplate="%{x}<br>" + name + ": %{y:.3f} GiB<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="LoRA rank and targets")
    fig.update_yaxes(title_text="GiB (2³⁰ bytes)", rangemode="tozero")
    _legend_below(fig)
    return _style(fig, title, height=500)


# ---------------------------------------------------------------------- NF4
def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def nf4_codebook(
    codebooks: Mapping[str, Sequence[float]],
    scale: float,
) -> go.Figure:
    """The 4-bit value sets against the normal distribution they quantize.

    Values live in [-1, 1] (a block divided by its absmax); ``scale`` maps that range
    back onto a standard normal (the normal quantile NF4's outermost value stands for),
    so the curve is N(0, 1/scale²) drawn on the same axis. Each set is a row of markers.
    """
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.62, 0.38],
        shared_xaxes=True,
        vertical_spacing=0.05,
    )
    xs = [i / 200 for i in range(-230, 231)]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[_normal_pdf(x * scale) * scale for x in xs],
            mode="lines",
            name="normal weights (density)",
            line=dict(width=3, color="#555"),
            fill="tozeroy",
            fillcolor="rgba(120,120,120,0.15)",
        ),
        row=1,
        col=1,
    )
    names = list(codebooks)
    for i, name in enumerate(names):
        values = sorted({float(v) for v in codebooks[name]})
        color = COLORS.get(name, PALETTE[i % len(PALETTE)])
        if i == 0:  # the first set also as lines over the density
            for v in values:
                fig.add_vline(x=v, line_color=color, line_width=1.5, opacity=0.6, row=1, col=1)
        fig.add_trace(
            go.Scatter(
                x=values,
                y=[name] * len(values),
                mode="markers",
                name=f"{name} ({len(values)} values)",
                marker=dict(size=14, color=color, line=dict(width=1, color="white")),
            ),
            row=2,
            col=1,
        )
    fig.update_xaxes(title_text="value / block absmax", range=[-1.15, 1.15], row=2, col=1)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_yaxes(categoryorder="array", categoryarray=names[::-1], row=2, col=1)
    fig.update_layout(legend=dict(orientation="h", y=-0.18))
    return _style(fig, "4-bit value sets against the normal distribution", height=600)


def error_histograms(
    errors: Mapping[str, Sequence[float]], title: str = "", bins: int = 101
) -> go.Figure:
    """Histograms of per-weight quantization errors on shared bins, one outline per method
    (binned here, so a large layer does not ship every weight to the browser)."""
    arrays = {name: np.asarray(err, dtype=np.float64).ravel() for name, err in errors.items()}
    finite = [a[np.isfinite(a)] for a in arrays.values() if a.size]
    lim = max((float(np.abs(a).max()) for a in finite if a.size), default=1.0) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for i, (name, a) in enumerate(arrays.items()):
        counts, _ = np.histogram(a, bins=edges)
        color = COLORS.get(name, PALETTE[i % len(PALETTE)])
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=counts,
                mode="lines",
                line=dict(shape="hvh", width=2.5, color=color),
                fill="tozeroy",
                opacity=0.5,
                name=name,
            )
        )
    fig.update_xaxes(title_text="dequantized − original weight")
    fig.update_yaxes(title_text="weights per bin")
    return _style(fig, title or "Quantization error")


def error_rmse_bars(rows: Sequence[Mapping]) -> go.Figure:
    """Relative RMSE per layer and method (rows of ``quantization_error_report``)."""
    fig = go.Figure()
    methods: list[str] = []
    for row in rows:
        if row["method"] not in methods:
            methods.append(row["method"])
    for i, m in enumerate(methods):
        sel = [row for row in rows if row["method"] == m]
        fig.add_trace(
            go.Bar(
                x=[_short_layer(row["layer"].removesuffix(".weight")) for row in sel],
                y=[float(row["rel_rmse"]) for row in sel],
                name=m,
                marker_color=COLORS.get(m, PALETTE[i % len(PALETTE)]),
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="RMSE / weight std")
    fig.update_xaxes(tickangle=-45)
    return _style(fig, "Error per layer (lower is better)")


def bits_bars(bits: Mapping[str, float], title: str = "Storage per parameter") -> go.Figure:
    """Bits per parameter of each storage format: ``bits[label] = bits``."""
    labels = list(bits)
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[float(bits[k]) for k in labels],
            text=[f"{float(bits[k]):.3f}" for k in labels],
            textposition="outside",
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(labels))],
        )
    )
    fig.update_yaxes(title_text="bits per parameter")
    return _style(fig, title)
