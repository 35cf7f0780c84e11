"""Memory: where training memory goes, predicted and measured, and a calculator for
other model shapes."""

from __future__ import annotations

import streamlit as st

from app import data, helpers
from app.charts import memory as charts
from app.format import breakdown_table, format_bytes, md_code, md_text
from minituner.memory import predict as memmath
from minituner.memory.chapter import seed_figures
from minituner.memory.shapes import SHAPES, ModelShape
from minituner.paths import data_dir
from minituner.scale import scaling as scaling_mod

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
            label: mem.measured.get("cuda_peak_allocated")
            for label in picked
            if (mem := by_label[label].metrics.memory) is not None
        }
        cuda = {k: v for k, v in cuda.items() if v}
        if cuda:
            st.caption(
                "CUDA peak allocated during the first step: "
                + "; ".join(f"{md_text(k)}: {format_bytes(v)}" for k, v in cuda.items())
            )
    elif picked:
        st.warning("The chosen runs hold no memory figures.")

st.header("7B QLoRA, measured on an H200")


def _ratio(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1000 * seconds:.0f} ms"


def _bytes(n: int | None) -> str:
    return "–" if n is None else format_bytes(n, 2)


scaling_path = scaling_mod.qlora_7b_h200()
try:
    scaling = scaling_mod.load_scaling_result(scaling_path)
except ValueError as e:
    scaling = None
    if not scaling_path.is_file():
        st.info(
            f"The 7B measurements ({scaling_path.name}) are not in this checkout: "
            "`benchmarks/bench_7b_qlora.py` makes them on a CUDA GPU."
        )
    else:
        st.warning(f"The 7B measurements cannot be shown: {md_text(e)}")
if scaling is not None:
    llama = SHAPES["llama-7b"]
    setup = scaling["args"]
    srows = scaling_mod.scaling_rows(scaling)
    with_peft = any(r["peft_peak_bytes"] is not None for r in srows)
    lora_dtype = scaling.get("lora_dtype")
    timed = setup.get("steps", "a few")
    st.markdown(
        "The same formula, checked at full size. A model of the LLaMA-7B shape "
        f"({llama.n_layers} layers, hidden size {llama.d_model:,}, MLP {llama.d_ff:,}, "
        f"{llama.total_params() / 1e9:.2f} B parameters) is filled with random weights and "
        "built one layer at a time straight into NF4, so it never exists whole in bf16. "
        f"Each configuration trains with batch {md_text(setup['batch'])} × "
        f"{md_text(setup['seq'])} tokens, {md_text(setup['dtype'])} compute"
        + (", activation checkpointing" if setup["checkpointing"] else "")
        + (
            f", LoRA A, B and AdamW's state in {md_text(lora_dtype)}"
            if isinstance(lora_dtype, str)
            else ""
        )
        + ". *Measured peak* is `torch.cuda.max_memory_allocated` over the training steps "
        "(weights, LoRA, gradients, optimizer state, activations and temporaries); "
        "*predicted* is `memory.predict_memory` for the same shape and settings. "
        + (
            "The same configurations ran with Hugging Face transformers + bitsandbytes NF4 "
            "+ PEFT in the same command, on the same GPU. "
            if with_peft
            else ""
        )
        + f"Step times are medians of {md_text(timed)} timed steps and change from "
        "one run of the command to the next: treat the step ratios as rough. *qv*: LoRA "
        "on q_proj and v_proj; *all*: on the seven Linears of every layer."
    )
    st.plotly_chart(charts.scaling_bars(srows), key="mem_scaling_chart")
    st.dataframe(
        [
            {
                "configuration": r["label"],
                "trainable params": f"{r['trainable_params']:,}",
                "measured peak": _bytes(r["peak_bytes"]),
                "predicted (fp32 LoRA + Adam)": _bytes(r["predicted_mixed_bytes"]),
                "predicted (all bf16)": _bytes(r["predicted_bf16_bytes"]),
                "measured / predicted": _ratio(r["peak_over_mixed"]),
                "step (median)": _ms(r["step_s"]),
                "tokens/s": f"{r['tokens_per_s']:,.0f}",
                "PEFT peak": _bytes(r["peft_peak_bytes"]),
                "PEFT step": _ms(r["peft_step_s"]),
                "ours / PEFT peak": _ratio(r["peak_ours_over_peft"]),
                "ours / PEFT step": _ratio(r["step_ours_over_peft"], 2),
            }
            for r in srows
        ],
        hide_index=True,
    )
    fit = [r["peak_over_mixed"] for r in srows]
    summary = f"Measured / predicted (fp32 LoRA + Adam): {min(fit):.3f} to {max(fit):.3f}"
    if with_peft:
        vs = [r["peak_ours_over_peft"] for r in srows if r["peak_ours_over_peft"] is not None]
        summary += f"; our peak / PEFT's: {min(vs):.3f} to {max(vs):.3f}"
    shown = (
        scaling_path.relative_to(data_dir().parent)
        if scaling_path.is_relative_to(data_dir().parent)
        else scaling_path
    )
    st.caption(
        f"{summary}. Measured on {md_text(scaling['device_name'])}"
        + (f", torch {md_text(scaling['torch'])}" if isinstance(scaling.get("torch"), str) else "")
        + (
            f"; {md_text(scaling['measured_on'])}"
            if isinstance(scaling.get("measured_on"), str)
            else ""
        )
        + f". {md_code(shown)} was written by:"
    )
    st.code(scaling["command"], language="bash")

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
        for row in breakdown_table(pred):
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
            for f in seed_figures().values()
        ],
        hide_index=True,
    )
