"""Teach your own verb: type a verb and its past form (swim / swam, or a made-up one), see
the cloze prompts the corpus's templates make of it, fine-tune live, compare before and
after.

Everything shown is computed by minituner.minigpt.teach (the prompts, the vocabulary check) and
minituner.minigpt.evaluate (the answers); the run is an ordinary fine-tune with
``FinetuneConfig.teach`` set, trained by the server's one live run (app/trainer.py, a
child process), so the Train page shows it live too and the store keeps it. A character
the model cannot read is named, with a hint, before anything runs.

The live panel is the Train page's (app/live.py): progress, the loss/evaluation chart and
the per-verb chart (the taught verb bold), drawn in the browser from the server's live
feed, so the page redraws nothing until the run ends. An idle page holds the invisible
watcher of the same feed: a run that another tab starts reruns it.
"""

from __future__ import annotations

import streamlit as st

from app import data, headline, helpers, live
from app.charts import verbs as verb_charts
from app.format import md_text
from app.trainer import RUNNING
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
trainer = data.get_trainer()
_D = FinetuneConfig()  # the lesson's LoRA settings are the defaults
me = live.owner()  # this browser's token: a reload still owns its run

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
snap = trainer.snapshot()


# ---------------------------------------------------------------- live
@st.fragment(run_every=live.fragment_timer())
def _live_panel() -> None:
    s = data.get_trainer().snapshot()
    if s.status != RUNNING:  # ended: a full rerun shows the result
        st.rerun()
    live.draw_live(s)  # it asks for this fragment's rerun when the run ends


def _stop() -> None:
    data.get_trainer().stop(me)  # the trainer stops only its owner's run


def _show_result(info) -> None:
    """Before and after on the held-out prompts, the figures, the per-verb curves."""
    model = data.run_model(info)
    if model is None:
        return
    after = cloze_metrics(model, base.tok, split.held_out)
    f, bm = info.final, data.base_metrics()
    st.subheader(f"Before and after: run {info.run_id}")
    taught = headline.Figure(
        f"“{verb.lemma}”: held-out accuracy",
        helpers.pct(after["accuracy"]),
        headline.change(after["accuracy"], before["accuracy"]),
        then=f"base model {helpers.pct(before['accuracy'])}",
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
if snap.running:
    with action:  # under the form: the progress and the charts in view
        taught = snap.config.get("teach", "")
        if snap.owner == me and taught:
            a, b = st.columns([5, 1], vertical_alignment="center")
            a.subheader(f"Teaching live: {md_text(snap.label, 200)}")
            b.button("Stop", icon=":material/stop:", key="teach_stop", on_click=_stop)
        else:
            st.info(
                f"Training is busy: **{md_text(snap.label)}** is training. One run at a time "
                "per server; it is shown here and on the Train page; teach yours when it ends."
            )
        _live_panel()
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
        try:
            started = trainer.start(
                cfg, owner=me, cache=data.cache_dir(), eval_limit=data.eval_limit()
            )
        except ValueError as e:  # the pre-flight: nothing was started
            st.error(f"Training cannot start: {md_text(e)}", icon=":material/error:")
        else:
            if not started:
                st.info("Training is busy: another session started a run a moment ago.")
            st.rerun()
    live.watch(snap)  # a run that another tab starts reruns this page (it shows that run)
    if stored is not None:
        _show_result(stored)
