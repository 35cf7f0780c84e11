"""Completions: the base model and a fine-tuned model answer the same cloze prompts."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import completions as charts
from app.format import md_text
from minituner.minigpt.evaluate import candidate_logprobs, check_prompt, complete, greedy_answers

DEFAULT_PROMPT = "He __ to school yesterday."
DEFAULT_CANDIDATES = "went, goed"

st.title("Completions: before and after")
base = data.base_or_stop()
found = data.runs_with_warnings()
if not found:
    st.info("No fine-tuned runs in the store yet: train one on the **Train** page.")
    st.stop()

by_label = {helpers.run_label(r): r for r in found}
labels = list(by_label)
first = data.default_run(found)
run_label = st.selectbox(
    "fine-tuned run",
    labels,
    index=labels.index(helpers.run_label(first)) if first else 0,
    key="compl_run",
)
info = by_label[run_label]
model = data.run_model(info)
if model is None:
    st.stop()

examples = {f"{e.prompt}  →  {e.answer}": e for e in base.corpus.finetune_test}
seen_verbs: dict[str, str] = {}
for label, e in examples.items():
    seen_verbs.setdefault(e.verb, label)


def _use_example() -> None:
    e = examples.get(st.session_state["compl_example"])
    if e is not None:
        st.session_state["compl_prompt"] = e.prompt
        cands = [e.answer] + ([e.overregularized] if e.overregularized else [])
        st.session_state["compl_cands"] = ", ".join(cands)


st.session_state.setdefault("compl_prompt", DEFAULT_PROMPT)
st.session_state.setdefault("compl_cands", DEFAULT_CANDIDATES)
c1, c2 = st.columns([3, 2])
c1.text_input("prompt (write __ for the blank)", key="compl_prompt")
c2.text_input("candidate answers, comma-separated", key="compl_cands")
st.selectbox(
    "or take a held-out test prompt (never seen in training)",
    ["—", *seen_verbs.values()],
    key="compl_example",
    on_change=_use_example,
)

prompt = st.session_state["compl_prompt"].strip()
cands = [c.strip() for c in st.session_state["compl_cands"].split(",") if c.strip()]
try:  # empty, no blank __, unknown characters, too long: refused before any answer
    check_prompt(base.tok, prompt, base.model.config.block_size, cands)
    before = complete(base.model, base.tok, prompt)
    after = complete(model, base.tok, prompt)
    probs = None
    if cands:
        probs = {
            "base model": candidate_logprobs(base.model, base.tok, prompt, cands)["probs"],
            f"fine-tuned ({info.method})": candidate_logprobs(model, base.tok, prompt, cands)[
                "probs"
            ],
        }
except ValueError as e:
    st.error(f"The model cannot answer this prompt: {md_text(e)}")
    st.stop()

a, b = st.columns(2)
a.metric("base model's greedy answer", md_text(before) or "(nothing)")
b.metric(f"fine-tuned model's greedy answer ({info.method})", md_text(after) or "(nothing)")
if probs:
    st.plotly_chart(charts.candidate_bars(probs, f"“{prompt}”"), key="compl_bars")
    st.caption(
        "log P(answer | prompt) summed over the answer's characters, renormalized over "
        "the candidates you listed."
    )
else:
    st.info("Add candidate answers to compare their probabilities.")

st.subheader("One held-out prompt per verb")
sample = [examples[label] for label in seen_verbs.values()]
prompts = [e.prompt for e in sample]
ans_base = greedy_answers(base.model, base.tok, prompts)
ans_ft = greedy_answers(model, base.tok, prompts)
st.dataframe(
    [
        {
            "prompt": e.prompt,
            "correct": e.answer,
            "base model": f"{'✓' if x == e.answer else '✗'} {x}",
            "fine-tuned": f"{'✓' if y == e.answer else '✗'} {y}",
        }
        for e, x, y in zip(sample, ans_base, ans_ft, strict=True)
    ],
    hide_index=True,
)
