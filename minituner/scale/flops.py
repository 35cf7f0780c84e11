"""Model FLOPs of one QLoRA training step, and model FLOPs utilisation (MFU).

MFU = (the FLOPs the step must do) / (step time x the GPU's dense bf16 peak). It counts
matrix products only, the same for every system that trains the same model on the same
batch, whatever each one does besides (so a system that recomputes more is not paid for
it, except where every system must: activation checkpointing is on for all of them).
With N = batch x seq tokens, a frozen Linear (in -> out) costs 2·N·in·out per pass:

* decoder Linears (frozen NF4 base): forward + recompute (checkpointing) + input
  gradient = 3 passes. A frozen weight has no weight gradient.
* lm_head (frozen): forward + input gradient = 2 passes (every system keeps or recomputes
  its head differently; only the two every system needs are counted).
* LoRA, per adapted Linear, 2·N·r·(in + out) per pass: forward + recompute + input
  gradient + the weight gradients of A and B = 4 passes.
* attention, per layer, causal (only the lower triangle is computed, as FlashAttention
  does): Q·Kᵀ and P·V cost 2·2·B·T²·C / 2 forward; forward + recompute + backward
  (2x forward) = 4x that.

The peak is the vendor's dense (not sparse) bf16 Tensor Core figure: 989.4 TFLOP/s for
the H100 SXM and the H200 (same chip, same clocks; 132 SMs at 1830 MHz). A GEMM-only step
on these cards reaches about 75-80 % of it (an 8192³ bf16 product measured 770-800
TFLOP/s here), so that is the practical ceiling of MFU. A step that keeps the GPU busy
also meets the card's power limit: NVML put the SM clock of our 7B step at 1542-1680 MHz
on an H100, power-capped in every sample (``bench_7b_qlora.py --clocks``, runs 11-13),
so its GEMMs ran at most 84-92 % of the quoted peak's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

# dense bf16 Tensor Core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_bf16(device_name: str) -> float | None:
    """The dense bf16 peak of the named GPU, or None for one not in :data:`PEAK_BF16`."""
    for key, flops in PEAK_BF16.items():
        if key in device_name:
            return flops
    return None


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one step, by part (see the module docstring for what each counts)."""

    linears: float
    lm_head: float
    lora: float
    attention: float

    @property
    def total(self) -> float:
        return self.linears + self.lm_head + self.lora + self.attention

    def mfu(self, step_s: float, peak: float) -> float:
        """Model FLOPs utilisation of a step that took ``step_s`` seconds."""
        if step_s <= 0 or peak <= 0:
            raise ValueError(f"step time and peak must be positive, got {step_s}, {peak}")
        return self.total / (step_s * peak)


def step_flops(
    hidden: int,
    intermediate: int,
    n_layers: int,
    vocab: int,
    batch: int,
    seq: int,
    r: int,
    targets: tuple[str, ...] | list[str],
) -> StepFlops:
    """FLOPs of one checkpointed QLoRA step of a LLaMA-shaped model (gated MLP, no GQA).

    ``targets`` are the adapted Linears of each layer by name (``q_proj`` ... ``down_proj``).

    Raises:
        ValueError: a size is not positive, or a target is not a LLaMA Linear.
    """
    for name, v in (("hidden", hidden), ("intermediate", intermediate), ("n_layers", n_layers),
                    ("vocab", vocab), ("batch", batch), ("seq", seq), ("r", r)):  # fmt: skip
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    C, F = hidden, intermediate
    shapes = {
        "q_proj": (C, C), "k_proj": (C, C), "v_proj": (C, C), "o_proj": (C, C),
        "gate_proj": (C, F), "up_proj": (C, F), "down_proj": (F, C),
    }  # fmt: skip
    unknown = sorted(set(targets) - shapes.keys())
    if unknown:
        raise ValueError(f"unknown targets {unknown}; LLaMA Linears are {sorted(shapes)}")
    N = batch * seq
    per_layer = sum(2 * N * i * o for i, o in shapes.values())
    lora = sum(2 * N * r * (shapes[t][0] + shapes[t][1]) for t in set(targets))
    attn_fwd = 2 * 2 * batch * seq * seq * C / 2  # QKᵀ and PV, causal half
    return StepFlops(
        linears=3.0 * n_layers * per_layer,
        lm_head=2.0 * 2 * N * C * vocab,
        lora=4.0 * n_layers * lora,
        attention=4.0 * n_layers * attn_fwd,
    )
