"""The headline figures of a run, one definition for the Overview, Train and Teach pages.

The honest headline (issue 24): what a run learned (irregular-verb accuracy) is never
shown without what it cost (regular-verb accuracy, which falls from 100 % to about 72 %
for the default LoRA run, and control-English drift). Each accuracy comes with its change
against the base model; a change is the only thing drawn as a metric's delta (an arrow
and a colour). A device, a batch size or a parameter share is not a change, so it is
never a delta.

The parameter share has one definition, :func:`param_share`: trainable parameters over
the BASE model's parameters, as the chapter counts ("LoRA r=8 on a 7B model trains
about 0.7 %"). Dividing by the run's own ``total_params`` gave 1.97 % on Overview beside
2.01 % on Train for the same run (that total includes the adapter), and 35.7 % for QLoRA
(its 4-bit base weights are not parameters of the quantized model).

The figures are plain data (:class:`Figure`); :func:`show` draws them as st.metric;
:func:`live_line` is the same headline for the live panel (HTML, one line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

import streamlit as st

from app.helpers import pct


@dataclass(frozen=True)
class Figure:
    """One metric: label, value, and a change only where there is one."""

    label: str
    value: str
    delta: str | None = None
    delta_color: str = "normal"  # "inverse" where a fall is good
    help: str | None = None
    then: str | None = None  # what the change is against, shown beside it ("base model 22.9%")


# metric labels short enough for a quarter of a 1024 px page (the e2e layout test checks
# that no label is cut); what each figure is goes in its tooltip
IRREGULAR, REGULAR = "irregular verbs", "regular verbs"
OVERREGULARIZED, DRIFT = "over-regularized", "English drift"
HELP = {
    IRREGULAR: "irregular-verb accuracy: held-out irregular-verb prompts answered correctly",
    REGULAR: "regular-verb accuracy: prompts with the 12 regular verbs answered correctly",
    OVERREGULARIZED: "over-regularized answers: the share of irregular-verb prompts answered "
    'with a regular "-ed" form ("goed")',
    DRIFT: "control English drift: perplexity on held-out English sentences with regular "
    "verbs, against the base model's (0 % = unchanged)",
}


def change(now: float, then: float) -> str:
    """A change in percentage points: "+12.5 pts", "-27.9 pts" (an ASCII sign: st.metric
    reads it for the arrow and the colour)."""
    return f"{100 * (now - then):+.1f} pts"


def param_share(trainable: int, base_params: int) -> float:
    """Trainable parameters as a percentage of the base model's parameters."""
    return 100.0 * trainable / base_params if base_params > 0 else float("nan")


def share_text(trainable: int, base_params: int) -> str:
    """ "2.01% of the base model's 816,000 parameters" (the one wording of the share)."""
    return (
        f"{param_share(trainable, base_params):.2f}% of the base model's {base_params:,} parameters"
    )


def accuracy_figures(final, base) -> list[Figure]:
    """Irregular-verb accuracy, regular-verb accuracy and over-regularized answers of
    ``final`` (figures with irregular_accuracy, regular_accuracy, overregularized_rate),
    each with its change against ``base`` (the same figures of the base model; None:
    no change shown), and the control-English drift (itself a change against the base
    model: a value, no delta)."""

    def fig(label: str, key: str, color: str = "normal") -> Figure:
        now = getattr(final, key)
        then = getattr(base, key) if base is not None else None
        if then is None:
            return Figure(label, pct(now), help=HELP[label])
        return Figure(
            label,
            pct(now),
            change(now, then),
            color,
            then=f"base model {pct(then)}",
            help=f"{HELP[label]}; the change is against the base model {pct(then)}",
        )

    return [
        fig(IRREGULAR, "irregular_accuracy"),
        fig(REGULAR, "regular_accuracy"),
        fig(OVERREGULARIZED, "overregularized_rate", "inverse"),
        Figure(DRIFT, f"{100 * final.control_en_drift:+.2f}%", help=HELP[DRIFT]),
    ]


def by_figure(rows: Sequence[Mapping], names: Sequence[str], skip: Sequence[str] = ("run",)):
    """Rows of one run each (``final_figures_rows``) turned into one row per figure and one
    column per run, named ``names``: two runs' dozen figures fit a narrow column, where
    a dozen columns would not."""
    keys = [k for k in (rows[0] if rows else {}) if k not in skip]
    return [
        {"figure": k, **{n: row.get(k, "") for n, row in zip(names, rows, strict=False)}}
        for k in keys
    ]


def show(figures: Sequence[Figure], columns=None) -> None:
    """The figures as st.metric, one per column (``columns``: default one row)."""
    columns = columns if columns is not None else st.columns(len(figures))
    for col, f in zip(columns, figures, strict=False):
        col.metric(
            f.label,
            f.value,
            delta=f.delta,
            delta_color=f.delta_color,
            # what the change is against goes in the tooltip: beside the delta it is cut
            # short in a quarter of a 1024 px page
            help=f.help or (f"the change is against the {f.then}" if f.then else None),
        )


def live_line(evals, lemma: str = "") -> str:
    """The latest evaluation's figures in one line: a lesson's verb (held-out accuracy),
    irregular-verb and regular-verb accuracy (each with its change since step 0, the base
    model on the same sample: what was learned beside what it cost), control-English
    drift."""
    if not evals:
        return ""
    e, first = evals[-1], evals[0]

    def since(key: str) -> str:
        if first.step != 0 or e.step == 0:
            return ""
        return f" ({100 * (getattr(e, key) - getattr(first, key)):+.1f} pts)"

    taught = (
        f"<b>{escape(lemma)}</b> held-out accuracy <b>{pct(e.taught_accuracy.get(lemma))}</b> · "
        if lemma
        else ""
    )
    return (  # one line at 820 px (1280 x 720): the charts under it stay in view
        f"<p class='live-figures' style='font-size:1rem;margin:0 0 0.5rem 0'>step {e.step} "
        f"(sample): {taught}irregular verbs <b>{pct(e.irregular_accuracy)}</b>"
        f"{since('irregular_accuracy')} · regular verbs <b>{pct(e.regular_accuracy)}</b>"
        f"{since('regular_accuracy')} · control EN drift <b>{100 * e.control_en_drift:+.2f}%</b></p>"
    )
