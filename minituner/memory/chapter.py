"""The source chapter's figures, recomputed exactly.

The course chapter this project grew from quotes rounded parameter counts and memory
sizes (a Linear(768, 768), a 32-layer 4096-wide model, a 7B model under full
fine-tuning, LoRA and QLoRA). :func:`seed_figures` sets each one beside the exact value
from :mod:`minituner.memory.shapes` and :mod:`minituner.memory.predict`, with the chapter's own
convention where it explains the difference (7 × 10⁹ parameters, decimal gigabytes).
"""

from __future__ import annotations

from minituner.memory.predict import (
    PRECISIONS,
    linear_params,
    lora_params,
    predict_memory,
    trainable_params,
    trainable_state_bytes,
)
from minituner.memory.shapes import SHAPES, ModelShape
from minituner.nf4.storage import bits_per_param

GiB, MiB, KiB = 2**30, 2**20, 2**10
SEED_7B_PARAMS = 7e9  # the chapter's round parameter count


def _fig(claim: str, seed: float, exact: float, unit: str, note: str = "", **extra) -> dict:
    rel = (exact - seed) / seed if seed else 0.0
    return {
        "claim": claim,
        "seed": seed,
        "exact": exact,
        "unit": unit,
        "rel_diff": rel,
        "note": note,
        **extra,
    }


def seed_figures() -> dict[str, dict]:
    """Each figure of the source chapter next to the exact figure computed here.

    ``seed`` is the chapter's rounded number, ``exact`` ours, both in ``unit``; where the
    chapter's own convention reproduces its figure, ``seed_convention`` gives that value.
    Why they differ:

    * The chapter uses 7 × 10⁹ parameters for "a 7B model" and divides bytes by 10⁹ while
      writing "GiB". The real LLaMA-7B shape (``SHAPES["llama-7b"]``) has 6,738,415,616
      parameters, and a GiB is 2³⁰ bytes: 7e9 × 12 B = 84 "GiB", but 6.74e9 × 12 B is
      75.3 GiB. Both are listed.
    * "590K × 4 buffers … ~4.7 MiB" for Linear(768, 768) counts 2 B per buffer (the
      weight, its gradient, Adam m and v, all half precision: ``precision="bf16"``):
      4,718,592 B, which is 4.72 MB or 4.5 MiB. The LoRA figure, 12,288 × 8 B, is
      exactly 96 KiB. (In the "mixed" convention of :func:`predict_memory`, fp32 Adam,
      these are 6.75 MiB and 192 KiB.)
    * The MLP and "7B, all Linears" LoRA counts in the chapter are rounded loosely
      (30 M and 50 M); the exact sums are 18.9 M for its 4096/16384 example and 20.0 M
      (0.30 %) for LLaMA-7B with q, k, v, o, gate, up, down at r = 8.
    * "14 GiB" LoRA and "3.6 GiB" QLoRA include no activations; ours are the
      ``states_total`` of :func:`predict_memory` with LoRA r = 8 on q and v, fp32 LoRA
      and Adam; QLoRA keeps embeddings and lm_head in bf16 and quantizes the layer Linears
      with double quantization.
    """
    f: dict[str, dict] = {}
    p768, l768 = linear_params(768, 768), lora_params(768, 768, 8)
    f["linear768_full_params"] = _fig("Linear(768,768) full FT trainable", 590e3, p768, "params")
    f["linear768_lora8_params"] = _fig("Linear(768,768) LoRA r=8 trainable", 12e3, l768, "params")
    full_b = trainable_state_bytes(p768, "bf16")
    lora_b = trainable_state_bytes(l768, "bf16", lora=True)
    f["linear768_full_state"] = _fig(
        "Linear(768,768) full FT state (4 buffers x 2 B)",
        4.7,
        full_b / MiB,
        "MiB",
        "the chapter's 4.7 is 4,718,592 B in decimal MB",
        seed_convention=full_b / 1e6,
        mixed_fp32_adam=trainable_state_bytes(p768, "mixed") / MiB,
    )
    f["linear768_lora8_state"] = _fig(
        "Linear(768,768) LoRA r=8 state (4 buffers x 2 B)",
        96,
        lora_b / KiB,
        "KiB",
        seed_convention=lora_b / KiB,
        mixed_fp32_adam=trainable_state_bytes(l768, "mixed", lora=True) / KiB,
    )
    f["linear768_ratio"] = _fig("Linear(768,768) full / LoRA r=8", 50, p768 / l768, "x")

    p4k = linear_params(4096, 4096)
    f["linear4096_full_params"] = _fig("Linear(4096,4096) full FT", 16.78e6, p4k, "params")
    for r, seed in ((8, 65e3), (16, 131e3)):
        n = lora_params(4096, 4096, r)
        f[f"linear4096_lora{r}_params"] = _fig(f"Linear(4096,4096) LoRA r={r}", seed, n, "params")
        f[f"linear4096_lora{r}_ratio"] = _fig(
            f"Linear(4096,4096) full / LoRA r={r}", 256 if r == 8 else 128, p4k / n, "x"
        )

    # The chapter's 32-layer example: q, k, v, o all (4096, 4096); MLP 4096 -> 16384 -> 4096.
    ex = ModelShape("seed-32x4096", 4096, 16384, 32, 32, 32000, bias=False, norm_bias=False)
    attn_full = sum(
        i * o for n, i, o in ex.linears() if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
    )
    attn_lora = trainable_params(ex, "lora", 8, "attn")
    f["attn32_full_params"] = _fig("32 layers x q,k,v,o full FT", 2.15e9, attn_full, "params")
    f["attn32_lora8_params"] = _fig("32 layers x q,k,v,o LoRA r=8", 8.3e6, attn_lora, "params")
    f["attn32_lora8_percent"] = _fig(
        "LoRA r=8 / full, attention (< 0.4 %)", 0.4, 100 * attn_lora / attn_full, "%"
    )
    mlp_full = linear_params(4096, 16384) + linear_params(16384, 4096)
    mlp_lora = trainable_params(ex, "lora", 8, "mlp") // ex.n_layers
    f["mlp_layer_full_params"] = _fig("one layer's MLP full", 134e6, mlp_full, "params")
    f["mlp_layer_lora8_params"] = _fig("one layer's MLP LoRA r=8", 328e3, mlp_lora, "params")
    f["mlp_layer_ratio"] = _fig("MLP full / LoRA r=8", 408, mlp_full / mlp_lora, "x")
    all_full = sum(i * o for _, i, o in ex.linears())
    all_lora = trainable_params(ex, "lora", 8, "all")
    f["layers32_full_params"] = _fig("32 layers attn + MLP full", 7e9, all_full, "params")
    f["layers32_lora8_params"] = _fig(
        "32 layers attn + MLP LoRA r=8", 30e6, all_lora, "params", "the chapter rounds up"
    )

    llama = SHAPES["llama-7b"]
    n7 = llama.total_params()
    l7 = trainable_params(llama, "lora", 8, "all")
    f["llama7b_params"] = _fig("7B model parameters", SEED_7B_PARAMS, n7, "params")
    f["llama7b_lora8_all_params"] = _fig("7B LoRA r=8, every layer Linear", 50e6, l7, "params")
    f["llama7b_lora8_all_percent"] = _fig("7B LoRA r=8 trainable share", 0.7, 100 * l7 / n7, "%")

    full = predict_memory(llama, "full", precision="mixed")
    p = PRECISIONS["mixed"]
    for key, seed, per_param in (
        ("weights", 14, p["weight"]),
        ("gradients", 14, p["weight"]),
        ("optimizer", 56, 2 * p["adam"]),
        ("states_total", 84, 2 * p["weight"] + 2 * p["adam"]),
    ):
        f[f"llama7b_full_{key}"] = _fig(
            f"7B full FT, mixed precision: {key}",
            seed,
            full[key] / GiB,
            "GiB",
            seed_convention=SEED_7B_PARAMS * per_param / 1e9,
        )
    lora = predict_memory(llama, "lora", r=8, targets=("q", "v"), precision="mixed")
    f["llama7b_lora_total"] = _fig(
        "7B LoRA r=8 (q, v): base fp16 + LoRA + Adam",
        14,
        lora["states_total"] / GiB,
        "GiB",
        seed_convention=SEED_7B_PARAMS * 2 / 1e9,
    )
    f["llama7b_lora_params_bytes"] = _fig("7B LoRA weights", 7, lora["lora"] / MiB, "MiB")
    f["llama7b_lora_adam_bytes"] = _fig("7B Adam for LoRA", 56, lora["optimizer"] / MiB, "MiB")
    q = predict_memory(llama, "qlora", r=8, targets=("q", "v"), precision="mixed")
    f["llama7b_qlora_nf4_base"] = _fig(
        "7B NF4 base",
        3.5,
        q["nf4"] / GiB,
        "GiB",
        "ours: layer Linears only, with double-quant absmax; embeddings stay bf16",
        seed_convention=SEED_7B_PARAMS * 0.5 / 1e9,
    )
    f["llama7b_qlora_total"] = _fig("7B QLoRA total", 3.6, q["states_total"] / GiB, "GiB")
    f["nf4_base_saving"] = _fig(
        "NF4 vs 16-bit base weights", 4, 16 / bits_per_param(64, double_quant=True), "x"
    )
    return f
