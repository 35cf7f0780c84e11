"""Teach your own verb: type a verb and its past form (swim / swam, or a made-up one), see
the cloze prompts the corpus's templates make of it, fine-tune live, compare before and
after.

Everything shown is computed by minituner.minigpt.teach (the prompts, the vocabulary check) and
minituner.minigpt.evaluate (the answers); the run is an ordinary fine-tune with
``FinetuneConfig.teach`` set, queued for this browser on the server's run queue
(app/trainer.py: up to K train at once, each in a child process; the others wait in
line), so the store keeps it and the Class page lists it. A character the model cannot
read is named, with a hint, before anything runs.

The tab follows its own run (app/follow.py; the Train page follows the same one): while it
waits, its place in the queue and estimated start; while it trains, the Train page's
live panel (app/live.py): progress, the loss/evaluation chart and the per-verb chart
(the taught verb bold), drawn in the browser from the run's own feed file, so the page
redraws nothing until the run starts or ends.
"""

from __future__ import annotations

import streamlit as st

from app import data, follow, headline, helpers, live
from app.charts import verbs as verb_charts
from app.format import md_text
from app.run_state import WAITING
from minituner.finetune.config import DEFAULT_LR, FinetuneConfig
from minituner.minigpt.evaluate import cloze_metrics
from minituner.minigpt.teach import TeachVerb, check_teach, check_vocab, teach_examples, teach_split
from minituner.store.runs import run_id

DEFAULT_LEMMA, DEFAULT_PAST = "swim", "swam"
# LoRA r=8, 20 steps: held-out accuracy swim 96.7%, drink 100% (`python -m minituner
# finetune --teach swim:swam --steps 20 --no-save`), about 3.5 minutes on a busy 2-core CPU
DEFAULT_STEPS = 20
EVAL_EVERY = 5  # a point of the per-verb curves every 5 steps
TEACH_METHODS = ("lora", "full")
FINISHED_MARK = "Teaching finished"

st.title("Teach your own verb")
st.markdown(
    "Can the model learn a verb it has never seen? Type a verb and its past form "
    "(*swim / swam*, *drink / drank*, or one you make up). The app puts it into the "
    "corpus's sentence templates (subject, verb, a complement of its own, a past-time "
    "adverb) and fine-tunes on some of those cloze prompts, mixed with as many of the "
    "eight irregular verbs' prompts, so the model has to read the sentence and not "
    "answer the new verb everywhere. The held-out prompts are never trained on: they "
    "show whether it learned the verb."
)
base = data.base_or_stop()
_D = FinetuneConfig()  # the lesson's LoRA settings are the defaults

st.session_state.setdefault("teach_lemma", DEFAULT_LEMMA)
st.session_state.setdefault("teach_past", DEFAULT_PAST)
with st.container(border=True):
    c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 1, 1])
    c1.text_input("verb", key="teach_lemma", help="the plain form, as in “to swim”")
    c2.text_input("its past form", key="teach_past", help="as in “yesterday she swam”")
    method = c3.radio(
        "method",
        TEACH_METHODS,
        format_func=lambda m: helpers.METHOD_NAMES[m],
        horizontal=True,
        key="teach_method",
        help=f"LoRA r={_D.r}, α={_D.alpha:g} (α/r = {_D.alpha / _D.r:g}) on "
        f"{', '.join(_D.targets)} (the app's default), or full fine-tuning, each at its "
        "default learning rate",
    )
    steps = c4.number_input(
        "steps", min_value=1, max_value=helpers.MAX_STEPS, value=DEFAULT_STEPS, step=5,
        key="teach_steps",
    )  # fmt: skip
    seed = c5.number_input("seed", min_value=0, max_value=2**31 - 1, value=0, key="teach_seed")

# ---------------------------------------------------------------- checked before anything runs
lemma_in = st.session_state["teach_lemma"].strip()
past_in = st.session_state["teach_past"].strip()
try:  # every character the model cannot read is named first, with a hint where one exists
    check_vocab(f"{lemma_in} {past_in}".lower(), base.tok)
    verb = check_teach(TeachVerb.parse(f"{lemma_in}:{past_in}"), base.tok)
except ValueError as e:
    st.error(f"This verb cannot be taught: {md_text(e)}")
    st.stop()

# the button, the live lesson and its result go right under the form, before the prompts:
# where the button was clicked (the browser keeps that place), in view on a projector
action = st.container()
split = teach_split(verb, base.corpus_config)
cfg = FinetuneConfig(
    method=method, lr=DEFAULT_LR[method], steps=int(steps), seed=int(seed),
    eval_every=min(EVAL_EVERY, int(steps)), teach=str(verb),
)  # fmt: skip
n_train = len(teach_examples(split, base.corpus, cfg.seed))


@st.cache_data(show_spinner="The base model answers…", max_entries=16)
def _base_answers(taught: str, model_id: str) -> dict:
    """The base model's greedy answers and accuracy on a verb's held-out prompts."""
    held_out = teach_split(TeachVerb.parse(taught), base.corpus_config).held_out
    m = cloze_metrics(base.model, base.tok, held_out)
    return {"answers": m["answers"], "accuracy": m["accuracy"]}


def _mark(answer: str, correct: str) -> str:
    return f"{'✓' if answer == correct else '✗'} {answer}"


before = _base_answers(str(verb), base.model_id)
st.subheader(f"The prompts for “{verb.lemma} / {verb.past}”")
st.caption(
    f"{len(split.train)} training prompts and {len(split.held_out)} held-out prompts, from "
    f"the same split for every run of this verb; a run trains on the {len(split.train)} "
    f"plus {n_train - len(split.train)} prompts of the eight irregular verbs. The base "
    f"model gets {helpers.pct(before['accuracy'])} of the held-out prompts right."
)
a, b = st.columns(2)
with a:
    st.markdown(f"**Training prompts** ({len(split.train)})")
    st.dataframe(
        [{"prompt": e.prompt, "answer": e.answer} for e in split.train],
        hide_index=True, height=250,
    )  # fmt: skip
with b:
    st.markdown(f"**Held-out prompts** ({len(split.held_out)}) and the base model's answers")
    st.dataframe(
        [
            {"prompt": e.prompt, "answer": e.answer, "base model": _mark(x, e.answer)}
            for e, x in zip(split.held_out, before["answers"], strict=True)
        ],
        hide_index=True, height=250,
    )  # fmt: skip

rid = run_id(cfg, base.model_id, data.base_metrics().corpus_version)
stored = data.run_by_id(rid)
snap = follow.follow()  # this tab's run (a reload or a reopened tab finds it again)


# ---------------------------------------------------------------- live
@st.fragment(run_every=live.fragment_timer())
def _live_panel(drawn: str) -> None:
    s = follow.follow()
    if s.status != drawn:  # it started or ended: a full rerun shows the new header or result
        st.rerun()
    live.draw_live(s)  # it asks for this fragment's rerun when the run starts or ends


def _show_result(info) -> None:
    """Before and after on the held-out prompts, the figures, the per-verb curves."""
    model = data.run_model(info)
    if model is None:
        return
    after = cloze_metrics(model, base.tok, split.held_out)
    f, bm = info.final, data.base_metrics()
    st.subheader(f"Before and after: run {info.run_id}")
    then = f"base model {helpers.pct(before['accuracy'])}"
    taught = headline.Figure(  # a short label (a quarter of 1024 px); the rest in the tooltip
        f"taught “{verb.lemma}”",
        helpers.pct(after["accuracy"]),
        headline.change(after["accuracy"], before["accuracy"]),
        then=then,
        help=f"held-out accuracy of the taught verb; the change is against the {then}",
    )
    irregular, regular, _, drift = headline.accuracy_figures(f, bm)  # four fit at 1024 px
    headline.show([taught, irregular, regular, drift])
    st.dataframe(
        [
            {
                "held-out prompt": e.prompt,
                "correct": e.answer,
                "before (base model)": _mark(x, e.answer),
                "after (fine-tuned)": _mark(y, e.answer),
            }
            for e, x, y in zip(split.held_out, before["answers"], after["answers"], strict=True)
        ],
        hide_index=True,
    )
    points = verb_charts.per_verb_points(info.metrics.evals)
    if points:
        st.plotly_chart(
            verb_charts.verb_curves(points, "Accuracy per verb during the lesson", verb.lemma),
            key="teach_verb_curves",
        )
    st.markdown(verb_charts.order_sentence(points, info.finetune_config().steps))
    limited = f" (capped at {info.metrics.eval_limit} per split)" if info.metrics.eval_limit else ""
    st.caption(
        "The table and the first metric: every held-out prompt of the verb. Irregular, "
        f"regular and drift figures: the run's final evaluation{limited}. The curves: the "
        "periodic evaluation on a sample, a few prompts per verb."
    )


# ---------------------------------------------------------------- the run
live.hide_status()
live.keep_owner()
if snap.running or snap.status == WAITING:
    with action:  # under the form: the place in line, or the progress and the charts
        word = "Teaching" if snap.config.get("teach") else "Training"
        title = f"{word} live: {md_text(snap.label, 200)}"
        if snap.status == WAITING:
            title = f"Waiting to start: {md_text(snap.label, 200)}"
        if follow.mine(snap):
            a, b = st.columns([5, 1], vertical_alignment="center")
            a.subheader(f"{title} (run #{snap.job_id})")
            b.button(
                "Stop", icon=":material/stop:", key="teach_stop", on_click=follow.stop,
                args=(snap.job_id,),
            )  # fmt: skip
        else:
            st.subheader(f"{title} (run #{snap.job_id}, read-only)")
        _live_panel(snap.status)
    st.stop()

with action:
    just_finished = live.show_outcome(snap, cfg, FINISHED_MARK) == "completed"
    label = "Teach it live"
    if stored is not None and not just_finished:
        where = "shipped with the app" if stored.shipped else "in your cache"
        st.info(f"This lesson is in the store ({where}): run **{stored.run_id}**, shown below.")
    if stored is not None:
        label = "Teach it live anyway"
    st.caption(
        f"{cfg.label()} · an evaluation every {cfg.eval_every} steps · on {data.device_label()}"
    )
    if st.button(
        label,
        icon=":material/school:",
        key="teach_start",
        type="primary" if stored is None else "secondary",
    ):
        jid, why = follow.submit(cfg)
        if jid is None:  # the pre-flight, or 2 runs of this browser waiting: nothing queued
            st.error(md_text(why), icon=":material/error:")
        else:
            st.rerun()  # this tab's run: waiting in line or training
    if stored is not None:
        _show_result(stored)
