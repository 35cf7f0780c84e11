"""Class: every run of this server today (waiting, training, finished, failed), who
trained it, and where the finished ones landed on the learning-forgetting frontier.

The runs come from the server's run queue (app/trainer.py over
minituner/finetune/queue.py), so the page lists what every session submitted today, a
closed tab's runs included; a learner can give their session a nickname (kept with the
session's jobs in the queue, so it names their earlier and later runs too). The
finished runs' figures are read from the run store, the same records every other page
reads, and drawn over the shipped frontier grid (experiments.json), so the class sees
one learner's r = 1 next to another's r = 64 and both against what the grid found.

While any run waits or trains, the list refreshes itself every ``REFRESH_S`` (a fragment;
nothing else on the page reruns); once all have ended it stops. What a learner typed (a
nickname) is shown as text (app.format.md_text). Each row links to the Train page with
``?job=<id>``, which follows that run live (read-only unless it is the learner's own).
"""

from __future__ import annotations

import streamlit as st

from app import data, helpers, live
from app.charts import class_chart as charts
from app.format import md_rows, md_text
from app.run_state import RUNNING, WAITING
from minituner.finetune.queue import NICKNAME_MAX

REFRESH_S = 3.0
NICK_KEY = "class_nickname"
STATUS_WORDS = {
    "completed": "finished",
    "error": "failed",
    "stopped": "stopped",
    "diverged": "diverged",
    "interrupted": "interrupted (the server stopped)",
}

st.title("Class")
st.markdown(
    "Every run trained on this server today, by every learner: waiting in line, training, "
    "finished or failed. Give your session a name so the class can find your runs; the "
    "finished runs are drawn below on the learning–forgetting frontier, over the grid "
    "that shipped with the app."
)
trainer = data.get_trainer()
for problem in trainer.problems:
    st.warning(md_text(problem))
me = live.owner()
live.keep_owner()


def _nickname_changed() -> None:
    st.session_state[NICK_KEY] = trainer.set_nickname(me, st.session_state[NICK_KEY])


if NICK_KEY not in st.session_state:
    mine = trainer.jobs(owner=me)
    st.session_state[NICK_KEY] = mine[-1].nickname if mine else ""
st.text_input(
    "your name in the class (optional)",
    key=NICK_KEY,
    max_chars=NICKNAME_MAX,
    on_change=_nickname_changed,
    help="Shown beside your runs on this page, for everyone on this server.",
)
st.caption(
    f"{trainer.max_runs} run(s) train at once on this server ({data.device_label()}); "
    "the others wait in line, at most 2 per session."
)


def _who(s) -> str:
    name = s.nickname or f"run #{s.job_id}"
    return f"{name} (you)" if s.owner == me else name


def _status(s) -> str:
    if s.status == WAITING:
        eta = "" if s.eta_s is None else f", starts in about {s.eta_s:.0f} s"
        return f"waiting: {s.position} in line{eta}"
    if s.status == RUNNING:
        return f"training: step {s.step}/{s.steps}" if s.step else "training: starting"
    word = STATUS_WORDS.get(s.status, s.status)
    return f"{word}: {s.message}" if s.message and s.status != "completed" else word


def _row(s) -> dict:
    info = data.run_by_id(s.run_id) if s.run_id else None
    f = info.final if info is not None else None
    return {
        "#": s.job_id,
        "who": _who(s),
        "configuration": s.label,
        "status": _status(s),
        "irregular accuracy": helpers.pct(f.irregular_accuracy) if f else "–",
        "regular accuracy": helpers.pct(f.regular_accuracy) if f else "–",
        "control EN drift": f"{100 * f.control_en_drift:+.2f}%" if f else "–",
        "run": s.run_id or "–",
    }


def points(states) -> list[charts.ClassPoint]:
    """The finished runs that are in the store, as chart points."""
    out = []
    for s in states:
        info = data.run_by_id(s.run_id) if s.status == "completed" and s.run_id else None
        if info is None:
            continue
        f = info.final
        out.append(
            charts.ClassPoint(
                run_id=info.run_id, method=info.method, label=s.label, who=_who(s),
                irregular_accuracy=f.irregular_accuracy, control_en_drift=f.control_en_drift,
                regular_accuracy=f.regular_accuracy,
            )
        )  # fmt: skip
    return out


states = trainer.jobs()
active = any(s.status in (WAITING, RUNNING) for s in states)


@st.fragment(run_every=REFRESH_S if active else None)
def _runs() -> None:
    now = trainer.jobs()
    if active and not any(s.status in (WAITING, RUNNING) for s in now):
        st.rerun()  # all ended: the whole page redraws the chart and stops refreshing
    if not now:
        st.info("No run on this server today yet: train one on the Train or Teach page.")
        return
    rows = md_rows([_row(s) for s in now])
    for row, s in zip(rows, now, strict=True):  # the Train page follows it (read-only if not yours)
        row["open"] = f"[on the Train page](train?job={int(s.job_id)})"
    st.table(rows)


st.subheader("Today's runs")
_runs()

st.subheader("Where the class landed")
finished = points(states)
experiments = data.load_experiments()
frontier = data.experiment_section(experiments, "frontier", "frontier summary")
if not finished:
    st.caption("The finished runs of the class appear here.")
for measure, title in charts.PANELS:
    st.plotly_chart(
        charts.class_frontier(finished, frontier, measure, title),
        key=f"class_{measure}",
        width="stretch",
    )
st.caption(
    "Stars: the class's finished runs (their final evaluation on the held-out splits); "
    "faint points and dotted steps: the shipped frontier grid, each configuration's mean "
    "over seeds and each method's Pareto front. Right is more learning; on the drift "
    "chart lower is less forgetting, on the regular-verb chart higher is."
)
