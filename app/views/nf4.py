"""NF4: the 4-bit codebook, its error on the base model's real weights, and its size."""

from __future__ import annotations

import math

import streamlit as st
import torch

from app import data
from app.charts import nf4 as charts
from app.format import common_unit, format_bytes, md_text
from minituner.nf4.format import (
    DEFAULT_BLOCK_SIZE,
    FP4_CODEBOOK,
    INT4_CODEBOOK,
    NF4_CODEBOOK,
    NF4_OFFSET,
)
from minituner.nf4.storage import bits_per_param, nf4_model_bytes

st.title("NF4: 4-bit NormalFloat")
st.markdown(
    "QLoRA stores each frozen weight as one of 16 values times a per-block scale (the "
    "block's largest magnitude). Trained weights are roughly normally distributed, so NF4 "
    "puts its 16 values at quantiles of the normal distribution: dense near zero, where "
    "most weights are, sparse in the tails. int4 spaces its levels evenly; FP4 (1 sign, 2 "
    "exponent, 1 mantissa bit) bunches them near zero on a power-of-two grid."
)
base = data.base_or_stop()

scale = float(torch.special.ndtri(torch.tensor(NF4_OFFSET, dtype=torch.float64)))
st.plotly_chart(
    charts.nf4_codebook({"nf4": NF4_CODEBOOK, "int4": INT4_CODEBOOK, "fp4": FP4_CODEBOOK}, scale),
    key="nf4_codebook",
    width="stretch",
)
st.caption(
    f"The density is a standard normal squeezed so that NF4's outermost level ±1 sits at "
    f"its {100 * NF4_OFFSET:.2f}% quantile (±{scale:.3f} σ)."
)

st.header("Error on the base model's weights")
layers = data.base_linear_names()
c1, c2 = st.columns([3, 1])
layer = c1.selectbox("layer", layers, index=0, key="nf4_layer")
block = c2.select_slider(
    "block size", [16, 32, 64, 128, 256], value=DEFAULT_BLOCK_SIZE, key="nf4_block"
)
errors = data.quant_errors(layer, int(block), base.model_id)
a, b = st.columns([3, 2])
with a:
    st.plotly_chart(
        charts.error_histograms(errors, f"Quantization error: {layer}"),
        key="nf4_hist",
        width="stretch",
    )
with b:
    w_std = float(base.model.get_submodule(layer).weight.detach().float().std())
    st.dataframe(
        [
            {
                "format": charts.FORMAT_NAMES.get(m, m),
                "RMSE": f"{math.sqrt(float((e.astype('float64') ** 2).mean())):.3e}",
                "RMSE / weight std": f"{math.sqrt(float((e.astype('float64') ** 2).mean())) / w_std:.3f}",
                "max |error|": f"{float(abs(e).max()):.3e}",
            }
            for m, e in errors.items()
        ],
        hide_index=True,
    )
    st.caption(
        f"{md_text(layer)}: {errors['nf4'].size:,} weights, std {w_std:.3e}, blocks of {block}."
    )

report = data.quant_report(int(block), base.model_id)
st.plotly_chart(charts.error_rmse_bars(report), key="nf4_layers", width="stretch")

st.header("Bits per parameter")
shapes = [tuple(base.model.get_submodule(n).weight.shape) for n in layers]
c3, c4 = st.columns(2)
with c3:
    bits = {
        "fp32": 32.0,
        "bf16": 16.0,
        f"NF4, blocks of {block}": bits_per_param(int(block), False),
        "NF4 + double quant.": bits_per_param(int(block), True),
    }
    st.plotly_chart(charts.bits_bars(bits), key="nf4_bits", width="stretch")
with c4:
    sizes = {dq: nf4_model_bytes(shapes, int(block), dq) for dq in (False, True)}
    s = sizes[True]
    st.markdown(f"**MiniGPT's {len(shapes)} layer Linears, {s['n_params']:,} weights**")
    unit = common_unit([s["fp32"], s["bf16"], sizes[False]["nf4"], s["nf4"]])

    def size(n: float) -> str:  # one unit down the column
        return format_bytes(n, digits=2, unit=unit)

    st.dataframe(
        [
            {"stored as": "fp32", "bytes": size(s["fp32"]), "bits / weight": "32"},
            {"stored as": "bf16", "bytes": size(s["bf16"]), "bits / weight": "16"},
            {
                "stored as": f"NF4 (absmax fp32, blocks of {block})",
                "bytes": size(sizes[False]["nf4"]),
                "bits / weight": f"{sizes[False]['nf4_bits_per_param']:.3f}",
            },
            {
                "stored as": "NF4 + double quantization",
                "bytes": size(s["nf4"]),
                "bits / weight": f"{s['nf4_bits_per_param']:.3f}",
            },
        ],
        hide_index=True,
    )
    st.caption(
        "Exact bytes per tensor (padding and the per-tensor constants included), so they "
        "sit a little above the formula's bits per parameter on the left. Embeddings and "
        "norms stay in full precision."
    )
