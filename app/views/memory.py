"""Memory: where training memory goes, predicted and measured, and a calculator for
other model shapes."""

from __future__ import annotations

import streamlit as st

from app import charts, data, helpers
from minituner import memory as memmath
from minituner.memory import SHAPES, ModelShape, format_bytes

st.title("Memory")
base = data.base_or_stop()
found = data.runs_with_warnings()

st.markdown(
    "Training memory is the weights, the gradients of what is trained, the optimizer's "
    "state (AdamW keeps two moments per trained number), the LoRA matrices, the 4-bit "
    "base of QLoRA, and the activations saved for the backward pass. *Predicted* is "
    "`memory.predict_memory`'s formula; *measured* counts the live tensors of the real "
    "training step (activations are not measured on a CPU, so they appear only in the "
    "prediction, as an estimate)."
)

st.header("MiniGPT, as trained here")
if not found:
    st.info("No runs in the store yet: train some on the **Train** page.")
else:
    by_label = {helpers.run_label(r): r for r in found}
    default = [
        helpers.run_label(r) for r in helpers.one_per_method(found, data.preferred_run_ids())
    ]
    picked = st.multiselect("runs", list(by_label), default=default, key="mem_runs")
    with_act = st.toggle("include predicted activations", value=False, key="mem_act")
    rows = helpers.memory_rows(by_label[label] for label in picked)
    if not with_act:
        rows = [r for r in rows if r["category"] != "activations"]
    if rows:
        st.plotly_chart(
            charts.memory_stacked(rows, "MiniGPT training memory"), key="mem_runs_chart"
        )
        st.dataframe(helpers.bytes_table(rows), hide_index=True)
        cuda = {
            label: by_label[label]
            .metrics.get("memory", {})
            .get("measured", {})
            .get("cuda_peak_allocated")
            for label in picked
        }
        cuda = {k: v for k, v in cuda.items() if v}
        if cuda:
            st.caption(
                "CUDA peak allocated during the first step: "
                + "; ".join(f"{k}: {format_bytes(v)}" for k, v in cuda.items())
            )
    elif picked:
        st.warning("The chosen runs hold no memory figures.")

st.header("Calculator")
minigpt = ModelShape.from_gpt_config(base.model.config)
PRESETS = {
    "MiniGPT (this app)": minigpt,
    "GPT-2 small (124M)": SHAPES["gpt2-small"],
    "7B (LLaMA-7B shape)": SHAPES["llama-7b"],
}
c1, c2, c3, c4 = st.columns(4)
preset = c1.selectbox("model", [*PRESETS, "custom"], index=2, key="mem_preset")
if preset == "custom":
    d_model = c2.number_input("d_model", 8, 32768, 1024, step=64, key="mem_d")
    d_ff = c3.number_input("d_ff", 8, 131072, 4096, step=256, key="mem_ff")
    n_layers = c4.number_input("layers", 1, 256, 24, key="mem_L")
    c5, c6, c7, _ = st.columns(4)
    n_heads = c5.number_input("heads", 1, 256, 16, key="mem_h")
    vocab = c6.number_input("vocabulary", 2, 1_000_000, 32000, step=1000, key="mem_V")
    gated = c7.checkbox("gated MLP (LLaMA)", value=False, key="mem_gated")
    shape = ModelShape(
        "custom", int(d_model), int(d_ff), int(n_layers), int(n_heads), int(vocab),
        gated_mlp=gated, tie_embeddings=not gated, bias=False, norm_bias=not gated,
        n_positions=0 if gated else 2048,
    )  # fmt: skip
else:
    shape = PRESETS[preset]
    c2.metric("parameters", f"{shape.total_params():,}")
    c3.metric("layers × d_model", f"{shape.n_layers} × {shape.d_model}")
    c4.metric("d_ff", f"{shape.d_ff:,}")

targets_all = [lin.target for lin in shape.layer_linears]
d1, d2, d3, d4, d5 = st.columns([1, 2, 1, 1, 1])
r = d1.number_input("rank r", 1, 4096, 8, key="mem_r")
default_t = [t for t in ("q", "v") if t in targets_all]
targets = d2.multiselect("LoRA targets", targets_all, default=default_t, key="mem_targets")
precision = d3.selectbox(
    "precision", list(memmath.PRECISIONS), index=1, key="mem_prec",
    help="fp32: everything 4 B; mixed: 2 B weights and gradients, fp32 Adam; bf16: all 2 B",
)  # fmt: skip
batch = d4.number_input("batch", 1, 4096, 1, key="mem_batch")
seq = d5.number_input("sequence length", 1, 131072, 512, step=128, key="mem_seq")
e1, e2, _ = st.columns([1, 1, 2])
dq = e1.checkbox("NF4 double quantization", value=True, key="mem_dq")
ckpt = e2.checkbox("activation checkpointing", value=False, key="mem_ckpt")

if not targets:
    st.warning("Choose at least one LoRA target.")
    st.stop()
rows, params = [], {}
try:
    for method in ("full", "lora", "qlora"):
        pred = memmath.predict_memory(
            shape, method, r=int(r), targets=targets, batch=int(batch), seq=int(seq),
            precision=precision, double_quant=dq, activation_checkpointing=ckpt,
        )  # fmt: skip
        params[method] = memmath.trainable_params(shape, method, int(r), targets)
        for row in memmath.breakdown_table(pred):
            rows.append({**row, "source": helpers.METHOD_NAMES[method]})
except ValueError as e:
    st.warning(f"This shape cannot be computed: {e}")
    st.stop()

st.plotly_chart(
    charts.memory_stacked(rows, f"Predicted training memory: {shape.name}"), key="mem_calc"
)
table = helpers.bytes_table(rows)
for t, method in zip(table, ("full", "lora", "qlora"), strict=True):
    t["trainable params"] = f"{params[method]:,}"
st.dataframe(table, hide_index=True)

with st.expander("The source chapter's figures, recomputed exactly"):
    st.caption(
        "Each rounded figure of the chapter the project grew from, next to the exact value "
        "this code computes (the chapter counts 7×10⁹ parameters and decimal gigabytes)."
    )
    st.dataframe(
        [
            {
                "claim": f["claim"],
                "chapter": f"{f['seed']:g}",
                "exact": f"{f['exact']:,.4g}",
                "unit": f["unit"],
                "difference": f"{100 * f['rel_diff']:+.1f}%",
                "note": f.get("note", ""),
            }
            for f in memmath.seed_figures().values()
        ],
        hide_index=True,
    )
