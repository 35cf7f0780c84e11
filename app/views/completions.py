"""Completions: the base model and any number of fine-tuned runs answer the same cloze
prompt, side by side.

The candidate answers follow the prompt (minituner/minigpt/candidates.py: a sentence of a known verb
gets its irregular past and its "-ed" form) and stay editable. Runs are found as on
Compare (app/run_picker.py: newest first, a filter, the run just trained selected, the
selection and the prompt kept in the URL)."""

from __future__ import annotations

import streamlit as st

from app import data, helpers, live
from app.charts import completions as charts
from app.format import md_text
from app.run_picker import pick_runs
from minituner.minigpt.candidates import candidates_for
from minituner.minigpt.evaluate import candidate_logprobs, check_prompt, complete, greedy_answers

DEFAULT_PROMPT = "He __ to school yesterday."
BASE = "base model"
EXPLAIN = (
    "**Greedy answer**: what each model writes, its most likely character each time; "
    "**bars**: each candidate's probability *among these candidates only*, so a model "
    "may write a word that is not listed."
)

st.title("Completions: before and after")
base = data.base_or_stop()
found = data.runs_with_warnings()
if not found:
    st.info("No fine-tuned runs in the store yet: train one on the **Train** page.")
    st.stop()

examples = {f"{e.prompt}  →  {e.answer}": e for e in base.corpus.finetune_test}
seen_verbs: dict[str, str] = {}
for label, e in examples.items():
    seen_verbs.setdefault(e.verb, label)


def _follow(prompt: str) -> None:
    """Candidates for a new prompt: its verb's forms; none (to be typed) when the
    sentence names no known verb, unless the user typed their own."""
    guess = candidates_for(prompt)
    if guess is not None:
        st.session_state["compl_cands"] = ", ".join(guess.candidates)
        st.session_state["compl_cands_auto"] = True
    elif st.session_state.get("compl_cands_auto", True):
        st.session_state["compl_cands"] = ""


def _prompt_changed() -> None:
    _follow(st.session_state["compl_prompt"])


def _cands_changed() -> None:
    st.session_state["compl_cands_auto"] = False


def _use_example() -> None:
    e = examples.get(st.session_state["compl_example"])
    if e is not None:
        st.session_state["compl_prompt"] = e.prompt
        _follow(e.prompt)


if "compl_prompt" not in st.session_state:  # the URL's prompt on the page's first visit
    url_prompt = st.query_params.get("prompt", "")
    st.session_state["compl_prompt"] = url_prompt.strip() or DEFAULT_PROMPT
    _follow(st.session_state["compl_prompt"])
st.session_state.setdefault("compl_cands", "")
c1, c2, c3 = st.columns([3, 2, 3])
c1.text_input("prompt (write __ for the blank)", key="compl_prompt", on_change=_prompt_changed)
c2.text_input(
    "candidates (follow the prompt; editable)",
    key="compl_cands",
    on_change=_cands_changed,
    help="Comma-separated answers whose probabilities the chart compares.",
)
c3.selectbox(
    "or a held-out test prompt (never trained on)",
    ["—", *seen_verbs.values()],
    key="compl_example",
    on_change=_use_example,
)
prompt = st.session_state["compl_prompt"].strip()
guess = candidates_for(prompt)
if guess is not None:
    st.caption(
        f"The sentence belongs to the verb **{md_text(guess.verb)}**: its candidates are "
        "its correct form and the form a learner writes instead."
    )

first = data.default_run(found)
chosen, params = pick_runs(
    found,
    "compl",
    helpers.run_label,
    data.run_stamp,
    [first.run_id] if first else [],
    just_trained=data.just_trained(live.owner()),
)

st.query_params.from_dict({**params, "prompt": prompt})
models = {BASE: base.model}
runs = {BASE: ("base", "base")}
for r in chosen:
    model = data.run_model(r)
    if model is not None:
        label = helpers.short_label(r)
        models[label] = model
        runs[label] = (r.method, r.run_id)
if len(models) == 1:
    st.info("Pick one or more fine-tuned runs above to compare them with the base model.")

cands = [c.strip() for c in st.session_state["compl_cands"].split(",") if c.strip()]
try:  # empty, no blank __, unknown characters, too long: refused before any answer
    check_prompt(base.tok, prompt, base.model.config.block_size, cands)
    greedy = {label: complete(m, base.tok, prompt) for label, m in models.items()}
    probs = {
        label: candidate_logprobs(m, base.tok, prompt, cands)["probs"]
        for label, m in models.items()
    }
except ValueError as e:
    st.error(f"The model cannot answer this prompt: {md_text(e)}")
    st.stop()

st.markdown(EXPLAIN)
cols = st.columns(min(len(greedy), 4))
for i, (label, answer) in enumerate(greedy.items()):
    name = "base model's greedy answer" if label == BASE else md_text(label)
    cols[i % len(cols)].metric(name, md_text(answer) or "(nothing)")
unlisted = [f"{label}: {answer}" for label, answer in greedy.items() if answer not in cands]
if cands and unlisted:
    st.caption(
        "Greedy answers that are not among the candidates (add them to see their "
        f"probability): {md_text('; '.join(unlisted))}."
    )
if cands:
    st.plotly_chart(
        charts.candidate_bars(probs, f"“{prompt}”", runs=runs), key="compl_bars", width="stretch"
    )
else:
    st.info("Add candidate answers to compare their probabilities.")

st.subheader("One held-out prompt per verb")
sample = [examples[label] for label in seen_verbs.values()]
prompts = [e.prompt for e in sample]
answers = {label: greedy_answers(m, base.tok, prompts) for label, m in models.items()}
st.dataframe(
    [
        {
            "prompt": e.prompt,
            "correct": e.answer,
            **{
                label: f"{'✓' if got[i] == e.answer else '✗'} {got[i]}"
                for label, got in answers.items()
            },
        }
        for i, e in enumerate(sample)
    ],
    hide_index=True,
)
