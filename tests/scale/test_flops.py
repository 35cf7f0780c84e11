"""minituner.scale.flops: the model FLOPs of a QLoRA step and MFU.

The forward counts are checked against PyTorch's own FLOP counter on a dense model of the
same shape (never typed-in numbers); the pass multipliers follow the docstring's rule.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from minituner.scale.flops import peak_bf16, step_flops
from minituner.scale.llama import LLAMA_LINEARS


def _dense_forward_flops(C, Fd, L, V, B, T, r, targets) -> dict:
    """PyTorch's count of one forward of a dense stand-in: the Linears, the head, LoRA."""
    shapes = {"q_proj": (C, C), "k_proj": (C, C), "v_proj": (C, C), "o_proj": (C, C),
              "gate_proj": (C, Fd), "up_proj": (C, Fd), "down_proj": (Fd, C)}  # fmt: skip
    x = {n: torch.randn(B, T, i) for n, (i, _) in shapes.items()}
    counts = {}
    for part in ("linears", "lm_head", "lora"):
        with FlopCounterMode(display=False) as fc:
            for _ in range(L if part != "lm_head" else 1):
                if part == "linears":
                    for n, (i, o) in shapes.items():
                        F.linear(x[n], torch.randn(o, i))
                elif part == "lora":
                    for n in targets:
                        i, o = shapes[n]
                        F.linear(F.linear(x[n], torch.randn(r, i)), torch.randn(o, r))
                else:
                    nn.Linear(C, V, bias=False)(torch.randn(B, T, C))
        counts[part] = fc.get_total_flops()
    return counts


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), LLAMA_LINEARS])
def test_forward_parts_match_pytorchs_flop_counter(targets):
    C, Fd, L, V, B, T, r = 32, 88, 2, 50, 2, 16, 4
    got = step_flops(C, Fd, L, V, B, T, r, targets)
    fwd = _dense_forward_flops(C, Fd, L, V, B, T, r, targets)
    assert got.linears == 3 * fwd["linears"]  # forward + recompute + input gradient
    assert got.lm_head == 2 * fwd["lm_head"]  # forward + input gradient
    assert got.lora == 4 * fwd["lora"]  # + the weight gradients


def test_attention_counts_the_causal_half_of_sdpa():
    B, T, C, H = 2, 16, 32, 4
    q = torch.randn(B, H, T, C // H)
    with FlopCounterMode(display=False) as fc:  # attention's two products, written out
        torch.softmax(q @ q.transpose(-1, -2), dim=-1) @ q
    got = step_flops(C, 8, 1, 8, B, T, 1, ["q_proj"]).attention
    assert got == 4 * fc.get_total_flops() / 2  # the full square, halved: causal


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(1, 64), st.sampled_from([("q_proj",), LLAMA_LINEARS]))
def test_flops_grow_linearly_with_the_batch(batch, r, targets):
    one = step_flops(64, 172, 2, 97, 1, 32, r, targets)
    many = step_flops(64, 172, 2, 97, batch, 32, r, targets)
    assert many.total == pytest.approx(batch * one.total)
    assert one.mfu(1.0, one.total) == pytest.approx(1.0)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown targets"):
        step_flops(64, 172, 2, 97, 1, 32, 8, ["fc_in"])
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        step_flops(64, 172, 2, 97, 0, 32, 8, ["q_proj"])
    with pytest.raises(ValueError, match="positive"):
        step_flops(64, 172, 2, 97, 1, 32, 8, ["q_proj"]).mfu(0.0, 1e15)


def test_peaks_by_device_name():
    assert peak_bf16("NVIDIA H100 80GB HBM3") == peak_bf16("NVIDIA H200") == 989.4e12
    assert peak_bf16("cpu") is None
