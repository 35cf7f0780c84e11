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
from minituner.nf4.format import QLORA_DOUBLE_QUANT
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


def _unit_table(rows: list[dict], unit: str) -> list[dict]:
    """One row per source, one column per category and the total, all in ``unit``: the
    unit of the chart above it, so a cell and its bar read the same number."""
    table: dict[str, dict] = {}
    for row in rows:
        t = table.setdefault(row["source"], {"": row["source"]})
        t[row["category"]] = charts.in_unit(row["bytes"], unit)
    for source, total in charts.source_totals(rows).items():
        table[source]["total"] = charts.in_unit(total, unit)
    return list(table.values())


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
    rows = []  # by run, not by method: two LoRA runs are two bars, not one
    for label in picked:
        run = by_label[label]
        if (mem := run.metrics.memory) is None:
            continue
        short = f"{label.split(' · ')[0]} · {run.run_id[:6]}"
        for row in breakdown_table(mem.predicted, mem.measured):
            kind = row["source"]
            rows.append({**row, "run": short, "kind": kind, "source": f"{short} {kind}"})
    if not with_act:
        rows = [r for r in rows if r["category"] != "activations"]
    if rows:
        unit = charts.byte_unit(charts.source_totals(rows).values())
        st.plotly_chart(
            charts.memory_stacked(rows, "MiniGPT training memory", unit),
            key="mem_runs_chart",
            width="stretch",
        )
        st.dataframe(_unit_table(rows, unit), hide_index=True)
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
    return "–" if n is None else charts.in_unit(n, "GiB")


# The setting of the measured 7B runs (overwritten from the file when it is there): the
# calculator starts from it, so its first QLoRA figure is the prediction the 7B table
# compares with the measured peak, not a setting nobody measured.
MEASURED = {"batch": 1, "seq": 512, "checkpointing": True, "precision": "mixed", "r": 8,
            "targets": "qv", "double_quant": QLORA_DOUBLE_QUANT}  # fmt: skip
PREDICTED_KEY = {"mixed": "predicted_mixed_bytes", "bf16": "predicted_bf16_bytes"}
SHORT_TARGETS = {"qv": ["q", "v"], "all": [lin.target for lin in SHAPES["llama-7b"].layer_linears]}


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
    MEASURED.update(
        batch=int(setup["batch"]), seq=int(setup["seq"]), r=srows[0]["r"],
        checkpointing=bool(setup["checkpointing"]), targets=srows[0]["targets"],
        precision="bf16" if lora_dtype == "bfloat16" else "mixed",
    )  # fmt: skip
    st.markdown(
        "The same formula, checked at full size. A model of the LLaMA-7B shape "
        f"({llama.n_layers} layers, hidden size {llama.d_model:,}, MLP {llama.d_ff:,}, "
        f"{llama.total_params() / 1e9:.2f} B parameters) is filled with random weights and "
        "built one layer at a time straight into NF4, so it never exists whole in bf16. "
        f"Each configuration trains with batch {md_text(setup['batch'])} × "
        f"{md_text(setup['seq'])} tokens, {md_text(setup['dtype'])} compute, "
        f"**activation checkpointing {'on' if setup['checkpointing'] else 'off'}**, NF4 "
        f"{'with' if QLORA_DOUBLE_QUANT else 'without'} double quantization"
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
        "on `q_proj` and `v_proj`; *all*: on the seven Linears of every layer."
    )
    st.plotly_chart(charts.scaling_bars(srows), key="mem_scaling_chart", width="stretch")
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


def _setting(r: int, targets, precision: str, batch: int, seq: int, ckpt: bool, dq: bool):
    return {"rank r": int(r), "LoRA targets": sorted(targets), "precision": precision,
            "batch": int(batch), "sequence length": int(seq),
            "activation checkpointing": bool(ckpt), "NF4 double quantization": bool(dq)}  # fmt: skip


def _shown(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return ", ".join(v) if isinstance(v, list) else str(v)


def _against_measured(chosen: dict, qlora_bytes: int, srows: list[dict]) -> str:
    """The calculator's QLoRA figure next to the measured 7B peak: the same setting gives
    both numbers; another names what differs and quotes the prediction at the measured
    setting, so the two figures on the page never disagree unexplained."""
    runs = []
    for row in srows:
        if row["targets"] in SHORT_TARGETS:
            m = {**MEASURED, "r": row["r"], "targets": SHORT_TARGETS[row["targets"]]}
            setting = _setting(m["r"], m["targets"], m["precision"], m["batch"], m["seq"],
                               m["checkpointing"], m["double_quant"])  # fmt: skip
            runs.append((row, setting))
    if not runs:
        return ""
    for row, setting in runs:
        if setting == chosen:
            return (
                f"This is the setting of the measured 7B run {md_text(row['label'])}: QLoRA "
                f"predicted {charts.in_unit(qlora_bytes, 'GiB')}, measured peak "
                f"{charts.in_unit(row['peak_bytes'], 'GiB')} (measured / predicted "
                f"{row['peak_bytes'] / qlora_bytes:.3f})."
            )
    row, setting = min(runs, key=lambda rs: sum(rs[1][k] != chosen[k] for k in chosen))
    diffs = "; ".join(
        f"{k} {md_text(_shown(chosen[k]))} (measured: {md_text(_shown(v))})"
        for k, v in setting.items()
        if chosen[k] != v
    )
    return (
        f"Not a measured setting: {diffs}. At the setting of the measured run "
        f"{md_text(row['label'])} QLoRA is predicted at "
        f"{charts.in_unit(row[PREDICTED_KEY[MEASURED['precision']]], 'GiB')} and "
        f"measured at "
        f"{charts.in_unit(row['peak_bytes'], 'GiB')}."
    )


st.header("Calculator")
st.caption(
    "It starts from the setting of the measured 7B run above (LLaMA-7B shape, "
    f"r = {MEASURED['r']}, targets {MEASURED['targets']}, batch {MEASURED['batch']} × "
    f"{MEASURED['seq']} tokens, fp32 LoRA + Adam, activation checkpointing "
    f"{'on' if MEASURED['checkpointing'] else 'off'}), so its QLoRA figure is the one the "
    "7B table compares with the measured peak. Change any setting to see what it costs."
)
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
    n = shape.total_params()  # short enough for a quarter column at 1024 px (7B: 6.74 B)
    short = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"
    c2.metric("parameters", short, help=f"{n:,} parameters")
    c3.metric("layers, d_model", f"{shape.n_layers}, {shape.d_model}")
    c4.metric("d_ff", f"{shape.d_ff:,}")

targets_all = [lin.target for lin in shape.layer_linears]
d1, d2, d3, d4, d5 = st.columns([1, 2, 1, 1, 1])
r = d1.number_input("rank r", 1, 4096, MEASURED["r"], key="mem_r")
default_t = [t for t in SHORT_TARGETS.get(MEASURED["targets"], ["q", "v"]) if t in targets_all]
targets = d2.multiselect("LoRA targets", targets_all, default=default_t, key="mem_targets")
precision = d3.selectbox(
    "precision", list(memmath.PRECISIONS), index=list(memmath.PRECISIONS).index(
        MEASURED["precision"]), key="mem_prec",
    help="fp32: everything 4 B; mixed: 2 B weights and gradients, fp32 LoRA and Adam; "
    "bf16: all 2 B",
)  # fmt: skip
batch = d4.number_input("batch", 1, 4096, MEASURED["batch"], key="mem_batch")
seq = d5.number_input("sequence length", 1, 131072, MEASURED["seq"], step=128, key="mem_seq")
e1, e2, _ = st.columns([1, 1, 2])
dq = e1.checkbox("NF4 double quantization", value=MEASURED["double_quant"], key="mem_dq")
ckpt = e2.checkbox(
    "activation checkpointing", value=MEASURED["checkpointing"], key="mem_ckpt",
    help="keep only each layer's input for the backward pass and recompute the rest",
)  # fmt: skip

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
    st.warning(f"This shape cannot be computed: {md_text(e)}")
    st.stop()

unit = charts.byte_unit(charts.source_totals(rows).values())
st.plotly_chart(
    charts.memory_stacked(rows, f"Predicted training memory: {shape.name}", unit),
    key="mem_calc",
    width="stretch",
)
table = _unit_table(rows, unit)
for t, method in zip(table, ("full", "lora", "qlora"), strict=True):
    t["trainable params"] = f"{params[method]:,}"
st.dataframe(table, hide_index=True)
if scaling is not None and preset == "7B (LLaMA-7B shape)":
    qlora_total = charts.source_totals(rows)[helpers.METHOD_NAMES["qlora"]]
    chosen = _setting(r, targets, precision, batch, seq, ckpt, dq)
    st.caption(_against_measured(chosen, qlora_total, srows))

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
