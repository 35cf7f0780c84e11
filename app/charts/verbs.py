"""Per-verb accuracy over the training steps: which irregular verb is learned first, and
which last.

The figures are the periodic evaluations of a run (records or live events): each holds
the cloze accuracy of every verb on the evaluation sample (a few prompts per verb, so
one prompt moves a verb's accuracy by a large step). Two drawings of the same series:
:func:`live_verbs`, small inline SVG panels for the Train page's live panel (no chart
library, as :func:`app.charts.train.live_training`; one panel per verb), and :func:`verb_curves`, a plotly
figure for stored runs (the Compare page). :func:`learning_order` and
:func:`order_sentence` say, as measured, when each verb was learned.

A verb counts as *learned* at the first evaluation from which its accuracy stays at or
above ``LEARNED`` (80%) at every later evaluation of the run, so a verb that reaches
the bar once and falls back is not learned there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts.common import CATEGORY_PALETTE, style
from app.charts.svg import Axis, Box, Line, grid, panel
from app.format import md_text
from minituner.minigpt.verbs import IRREGULAR_VERBS

VERB_COLS = 4  # small multiples per row: 8 irregular verbs in two rows

LEARNED = 0.8  # the accuracy a verb must keep from some evaluation on to count as learned
MINI = Box(width=210, height=150, left=62, right=14, top=34, bottom=44)  # one verb's panel
NO_DATA = "no per-verb accuracy in this run's evaluations (it was stored before they were kept)"
NOT_YET = "the per-verb accuracy appears with the first evaluation"

Points = Sequence[tuple[int, Mapping[str, float]]]  # (step, {verb: accuracy in [0, 1]})


def per_verb_points(evals: Sequence) -> list[tuple[int, dict[str, float]]]:
    """(step, {verb: accuracy}) of each evaluation (records or events) that has per-verb
    figures; evaluations without any are left out."""
    out = []
    for e in evals:
        acc = dict(e.verb_accuracy)
        if acc:
            out.append((int(e.step), acc))
    return out


def verb_order(points: Points, highlight: str | None = None) -> list[str]:
    """The verbs of a run: the highlighted (taught) verb first, then the corpus's
    irregular verbs in their order, then any others alphabetically."""
    seen = {v for _, acc in points for v in acc}
    known = [v for v in IRREGULAR_VERBS if v in seen]
    rest = sorted(seen - set(known))
    verbs = known + rest
    if highlight in verbs:
        verbs.remove(highlight)
        verbs.insert(0, highlight)
    return verbs


def verb_colors(verbs: Sequence[str]) -> dict[str, str]:
    """A fixed colour per verb: a corpus verb keeps its colour from run to run."""
    extra = [v for v in verbs if v not in IRREGULAR_VERBS]
    index = {v: i for i, v in enumerate((*IRREGULAR_VERBS, *extra))}
    return {v: CATEGORY_PALETTE[index[v] % len(CATEGORY_PALETTE)] for v in verbs}


@dataclass(frozen=True)
class Learning:
    """When one verb was learned: ``step`` (None: not within the run), ``known`` (already
    at the bar at the first evaluation and never below it later), its last accuracy."""

    verb: str
    step: int | None
    known: bool
    final: float


def learning_order(points: Points, threshold: float = LEARNED) -> list[Learning]:
    """Each verb's :class:`Learning`, ordered: known before training, then by the step
    it was learned at, then the verbs not learned (highest final accuracy first)."""
    out = []
    for verb in verb_order(points):
        series = [(s, acc[verb]) for s, acc in points if verb in acc]
        step = None
        for i, (s, _) in enumerate(series):
            if all(a >= threshold for _, a in series[i:]):
                step = s
                break
        known = step is not None and step == series[0][0] == points[0][0]
        out.append(Learning(verb, step, known, series[-1][1]))
    return sorted(
        out,
        key=lambda x: (not x.known, x.step is None, x.step or 0, -x.final),
    )


def _names(items: Sequence[Learning]) -> str:
    names = [f"**{md_text(x.verb, 100)}**" for x in items]  # verb names come from records
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def order_sentence(points: Points, total_steps: int, threshold: float = LEARNED) -> str:
    """Which verb was learned first and which last, in words (Markdown, the verb names
    as text), from the measured series; :data:`NO_DATA` when there is none."""
    if not points:
        return f"Per-verb curves: {NO_DATA}."
    order = learning_order(points, threshold)
    bar = f"{100 * threshold:.0f}%"
    known = [x for x in order if x.known]
    learned = [x for x in order if x.step is not None and not x.known]
    missed = [x for x in order if x.step is None]
    parts = []
    if learned:
        first = [x for x in learned if x.step == learned[0].step]
        last = [x for x in learned if x.step == learned[-1].step]
        if learned[0].step == learned[-1].step:
            parts.append(f"Learned together at step {first[0].step}: {_names(first)}.")
        else:
            parts.append(
                f"Learned first: {_names(first)} (step {first[0].step}); "
                f"learned last: {_names(last)} (step {last[0].step})."
            )
    if known:
        parts.append(f"Already at {bar} before training: {_names(known)}.")
    if missed:
        finals = ", ".join(f"{md_text(x.verb, 100)} {100 * x.final:.0f}%" for x in missed)
        parts.append(f"Not learned within {total_steps} steps: {_names(missed)} (last: {finals}).")
    rule = (
        f"(learned: at least {bar} of its evaluation prompts right from that step to the "
        "end of the run)"
    )
    return " ".join(parts) + " " + rule


# ---------------------------------------------------------------------- plotly (stored runs)
def verb_curves(points: Points, title: str, highlight: str | None = None) -> go.Figure:
    """Accuracy (%) per verb over the steps as small multiples: one panel per verb on the
    same axes, ``highlight`` first and drawn thicker. In one panel the verbs that sit at
    the same accuracy (several at 100 % by the end) lay on top of each other and hid
    each other; in their own panels none can. Tick labels and axis titles sit on the
    outer panels only (the axes are shared)."""
    verbs = verb_order(points, highlight)
    colors = verb_colors(verbs)
    cols = min(VERB_COLS, max(1, len(verbs)))
    rows = max(1, math.ceil(len(verbs) / cols))
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=verbs or None, shared_xaxes="all",
        shared_yaxes="all", horizontal_spacing=0.03, vertical_spacing=0.16,
    )  # fmt: skip
    for i, verb in enumerate(verbs):
        pts = [(s, 100 * acc[verb]) for s, acc in points if verb in acc]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=verb,
                showlegend=False,
                line=dict(width=6 if verb == highlight else 3, color=colors[verb]),
                marker=dict(size=7),
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_yaxes(range=[-5, 105], dtick=50, showticklabels=False)
    fig.update_xaxes(showticklabels=False, nticks=4)
    for c in range(1, cols + 1):  # the bottom panel of each column (the last row may be short)
        last = max(r for r in range(1, rows + 1) if (r - 1) * cols + c <= max(1, len(verbs)))
        fig.update_xaxes(title_text="step", showticklabels=True, row=last, col=c)
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text="accuracy (%)", showticklabels=True, row=r, col=1)
    return style(fig, title, height=150 + 210 * rows)


# ---------------------------------------------------------------------- SVG (live)
def live_verbs(
    points: Points, total_steps: int, highlight: str | None = None, empty: str = NOT_YET
) -> str:
    """Per-verb accuracy (%) over the steps as small multiples: one small SVG panel per
    verb (the taught verb first, its line and name bold), all on the same axes (0-100 %,
    the whole run), in a grid that wraps to the column's width.

    Why small multiples rather than one chart with a line per verb: most verbs end at
    100 %, and many move in the same steps of one prompt, so in one chart their lines lie
    on top of each other and a verb that was learned early hides one that was not.
    Offsets or dashes would move the values or still cross; a panel per verb shows each
    line whole and its last value in its title. ``empty``: what shows without data."""
    heading = (
        '<div class="chart-row-title" style="font-size:1.05rem;margin:0.25rem 0">'
        "accuracy per verb on the evaluation sample (%), over the steps</div>"
    )
    verbs = verb_order(points, highlight)
    if not verbs:
        return (
            f'<div class="verb-grid">{heading}<p style="color:#555;font-size:1rem">'
            f"{escape(empty)}</p></div>"
        )
    colors = verb_colors(verbs)
    x = Axis.steps(max(1, int(total_steps)), max_ticks=4)
    y = Axis(0.0, 100.0, [0, 50, 100], "acc. (%)", 50.0)
    panels = []
    for verb in verbs:
        pts = [(float(s), 100 * float(acc[verb])) for s, acc in points if verb in acc]
        pts = [(a, b) for a, b in pts if math.isfinite(b)]
        bold = verb == highlight
        last = f" {pts[-1][1]:.0f}%" if pts else ""
        line = Line(pts, colors[verb], verb, width=6 if bold else 3, css="verb")
        panels.append(
            panel(
                f"verb-{verb}",
                f"{verb}{last}",
                x,
                y,
                [line],
                box=MINI,
                legend=False,
                title_attrs=' font-weight="bold"' if bold else "",
            )  # fmt: skip
        )
    return f'<div class="verb-grid">{heading}{grid(panels, 180)}</div>'
