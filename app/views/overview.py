"""Overview: what LoRA and QLoRA do, the base model's figures, and a default run to start from."""

from __future__ import annotations

import streamlit as st

from app import data, headline, helpers
from app.charts.compare import loss_curves
from app.charts.completions import candidate_bars
from app.format import md_text
from minituner.minigpt.evaluate import candidate_logprobs, complete
from minituner.nf4.storage import bits_per_param

PROMPT = "He __ to school yesterday."

st.title("LoRA and QLoRA, from scratch, on a tiny GPT")

left, right = st.columns([3, 2], gap="large")
with left:
    st.markdown(
        """
**The question.** A pretrained model knows a lot; we want to teach it one more thing
without paying for, or damaging, everything it already knows.

**Full fine-tuning** updates every weight. Each trained weight also needs a gradient and
two AdamW moments, so the training state is about four times the model, and the update
can move the whole model, including what it knew before.

**LoRA** freezes the model and learns, next to a chosen weight matrix *W* (out × in), a
low-rank correction ΔW = (α / r) · B · A with A of shape r × in and B of shape out × r.
B starts at zero, so training starts exactly from the base model. Only A and B are
trained: r · (in + out) numbers in place of in · out. The bet is that the change a
small task needs has few important directions; the **Spectrum** page checks it on the
update full fine-tuning actually makes.

**QLoRA** stores the frozen base in 4 bits (the NF4 format: 16 levels placed where
normally distributed weights are dense, one scale per block of 64 weights) and
dequantizes each layer on the fly; the LoRA matrices stay in full precision. A quantized
weight takes {BITS:.3f} bits instead of 32 (fp32) or 16 (bf16), and the adapter learns to
work around the rounding.
""".replace("{BITS:.3f}", f"{bits_per_param(64, double_quant=True):.3f}")
    )
with right:
    st.markdown(
        """
**The experiment.** MiniGPT, a character-level GPT with under a million parameters,
was pretrained on generated English and Spanish sentences in which irregular past
tenses are rare and often wrong ("He goed to school yesterday."). So it prefers "-ed".

A short fine-tune on about 500 cloze pairs (`He __ to school yesterday. = went`)
teaches the 8 irregular verbs *be, have, do, go, come, see, eat, write*. Held-out
sentences with 12 regular verbs and Spanish sentences measure what else moved:
the **control perplexity drift** (0 % = unchanged).

**Where to go next**
"""
    )
    st.page_link(
        "views/train.py",
        label="Train a run live (or load it from the store)",
        icon=":material/model_training:",
    )
    st.page_link(
        "views/completions.py", label="Ask base and fine-tuned models", icon=":material/chat:"
    )
    st.page_link("views/spectrum.py", label="Is ΔW really low-rank?", icon=":material/equalizer:")
    st.page_link("views/memory.py", label="Where the memory goes", icon=":material/memory:")

base = data.base_or_stop()
bm = data.base_metrics()
st.header("The base model")
cols = st.columns(4)  # four: a value of 7 characters fits a column at 1024 px wide
cols[0].metric("parameters", f"{bm.num_params:,}")
for col, label, value in zip(
    cols[1:],
    (headline.IRREGULAR, headline.REGULAR, headline.OVERREGULARIZED),
    (bm.irregular_accuracy, bm.regular_accuracy, bm.overregularized_rate),
    strict=True,
):
    col.metric(label, helpers.pct(value), help=headline.HELP[label])
per_verb = ""
if bm.irregular_accuracy_per_verb:
    per_verb = "Irregular-verb accuracy per verb: " + ", ".join(
        f"{md_text(v, 100)} {100 * a:.0f}%" for v, a in bm.irregular_accuracy_per_verb.items()
    )
st.caption(
    f"{per_verb}{' · ' if per_verb else ''}control English perplexity "
    f"{bm.control_en_ppl:.3f} per character (the drift of a run is measured against it) · "
    f"corpus {md_text(bm.corpus_version)}"
)

st.header("A run to start from")
found = data.runs_with_warnings()
run = data.default_run(found)
if run is None:
    st.info(
        "The run store is empty. Open **Train** and press *Train live* (the default LoRA "
        "run takes well under a minute on a CPU), or run `python -m minituner precompute`."
    )
    st.stop()

m, f = run.metrics, run.final
st.markdown(f"**{md_text(helpers.run_label(run))}** ({'shipped' if run.shipped else 'your cache'})")
# what the run learned beside what it cost: the regular verbs fall as the irregular rise
headline.show(headline.accuracy_figures(f, bm))
st.caption(
    f"Each change is against the base model. {m.trainable_params:,} trainable parameters, "
    f"{headline.share_text(m.trainable_params, bm.num_params)}; trained in "
    f"{m.wall_time_s:.1f} s on {md_text(m.device, 100)}."
)

label = helpers.run_label(run)
c1, c2 = st.columns(2, gap="large")
with c1:
    st.plotly_chart(
        loss_curves(
            {label: (m.curves.step, m.curves.loss)}, runs={label: (run.method, run.run_id)}
        ),
        key="overview_loss",
    )
with c2:
    model = data.run_model(run)
    if model is not None:
        st.markdown(f"**{PROMPT}**")
        before = complete(base.model, base.tok, PROMPT)
        after = complete(model, base.tok, PROMPT)
        a, b = st.columns(2)
        a.metric("base model answers", md_text(before))
        b.metric("fine-tuned answers", md_text(after))
        probs = {  # the legend names the run (and its colour is the run's on every page)
            "base model": candidate_logprobs(base.model, base.tok, PROMPT, ["went", "goed"])[
                "probs"
            ],
            label: candidate_logprobs(model, base.tok, PROMPT, ["went", "goed"])["probs"],
        }
        st.plotly_chart(
            candidate_bars(probs, "went or goed?", runs={label: (run.method, run.run_id)}),
            key="overview_bars",
        )
