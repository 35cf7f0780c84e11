"""Measured memory (minituner.memory.measure): the bytes of a model's and an optimizer's live
tensors, by category, each shared byte once, against a recomputation from the tensors'
sizes; the CUDA peak. (Measured == predicted to the byte: tests/memory/test_predict.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner.lora.inject import add_lora
from minituner.memory.measure import measure_cuda_step, measured_memory_cpu
from minituner.memory.predict import predict_memory
from minituner.memory.shapes import ModelShape
from minituner.minigpt.model import MiniGPT, preset_config
from minituner.nf4.linear import quantize_model_nf4


class _Holder(nn.Module):
    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.register_buffer("t", t)


def test_measured_memory_dedupes_tied_weights():
    cfg = preset_config("tiny", vocab_size=30, block_size=16)
    model = MiniGPT(cfg)
    m = measured_memory_cpu(model)
    assert model.lm_head.weight is model.tok_emb.weight
    assert m["weights"] == 4 * model.num_params()
    assert m["gradients"] == m["optimizer"] == 0
    assert m["storage_slack"] == 0
    m = measured_memory_cpu(nn.ModuleDict({"a": model, "view": _Holder(model.tok_emb.weight[:3])}))
    assert m["weights"] == 4 * model.num_params()  # a view of a parameter ...
    assert m["storage_slack"] == 0  # ... is inside storage already counted
    m = measured_memory_cpu(_Holder(torch.zeros(10, 4)[:2]))
    assert (m["weights"], m["storage_slack"]) == (4 * 2 * 4, 4 * 8 * 4)
    half = measured_memory_cpu(model.to(torch.bfloat16))
    assert half["weights"] == predict_memory(ModelShape.from_gpt_config(cfg), "full")["weights"]


def test_measure_cuda_step():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            measure_cuda_step(lambda: None)
        return
    peak = measure_cuda_step(lambda: torch.ones(1024, 1024, device="cuda").sum().item())
    assert peak >= 4 * 1024 * 1024


# ---------------------------------------------------------------- bytes, recomputed
def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_a_tiny_float64_models_bytes_are_counted_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    n = 3 * 5 + 5 + 5 * 2 + 2
    m = measured_memory_cpu(model)
    assert (m["weights"], m["lora"], m["nf4"], m["gradients"], m["optimizer"]) == (
        8 * n,
        0,
        0,
        0,
        0,
    )
    assert (m["total"], m["storage_slack"], m["n_params"], m["n_trainable"]) == (8 * n, 0, n, n)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    opt.step()
    m = measured_memory_cpu(model, opt)
    state = [t for s in opt.state.values() for t in s.values()]
    assert len(state) == 3 * 4  # exp_avg, exp_avg_sq and step for each of the 4 tensors
    assert m["gradients"] == 8 * n
    assert m["optimizer"] == 2 * 8 * n + _nbytes(t for t in state if t.dim() == 0)
    assert m["optimizer"] == _nbytes(state)
    assert m["total"] == m["weights"] + m["gradients"] + m["optimizer"]


def test_frozen_parameters_have_no_gradient_bytes():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model(torch.randn(2, 4)).sum().backward()
    m = measured_memory_cpu(model)
    assert m["n_params"] == 20 + 10 and m["n_trainable"] == 10
    assert m["gradients"] == 4 * 10 and m["weights"] == 4 * 30


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 9), st.integers(1, 9), st.booleans()), min_size=1, max_size=4
    ),
    st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]),
)
def test_weights_are_numel_times_element_size(layers, dtype):
    model = nn.ModuleList(nn.Linear(i, o, bias=b) for i, o, b in layers).to(dtype)
    m = measured_memory_cpu(model)
    assert m["weights"] == m["total"] == _nbytes(model.parameters())
    assert m["weights"] == torch.finfo(dtype).bits // 8 * sum(i * o + b * o for i, o, b in layers)
    assert m["storage_slack"] == 0


def test_lora_parameters_are_their_own_category():
    cfg = preset_config("tiny", vocab_size=30, block_size=16)
    model = MiniGPT(cfg)
    add_lora(model, ["q", "v"], r=2, alpha=4)
    lora = [p for n, p in model.named_parameters() if n.split(".")[-1].startswith("lora_")]
    assert lora
    m = measured_memory_cpu(model)
    assert m["lora"] == _nbytes(lora)
    assert m["weights"] == _nbytes(model.parameters()) - m["lora"]  # tied weights: once
    assert m["n_trainable"] == sum(p.numel() for p in lora)


def test_a_parameter_shared_by_two_layers_is_counted_once():
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    m = measured_memory_cpu(nn.Sequential(a, b))
    assert m["weights"] == 4 * (36 + 6 + 6)
    assert m["n_params"] == 36 + 6 + 6


def test_a_strided_view_counts_the_bytes_it_spans():
    base = torch.zeros(4, 6)
    m = measured_memory_cpu(_Holder(base[:, ::2]))  # (4, 3), strides (6, 2)
    span = 1 + 3 * 6 + 2 * 2  # first to last element, inclusive
    assert m["weights"] == 4 * span
    assert m["storage_slack"] == 4 * (24 - span)
    assert measured_memory_cpu(_Holder(torch.zeros(0, 3)))["weights"] == 0


def test_nf4_storage_is_counted_as_nf4_not_weights():
    cfg = preset_config("tiny", vocab_size=30, block_size=16)
    model = MiniGPT(cfg)
    dense = measured_memory_cpu(model)
    quantize_model_nf4(model, block_size=64, double_quant=False)
    m = measured_memory_cpu(model)
    n_quantized = (dense["weights"] - m["weights"]) // 4  # float32 weights that went
    assert n_quantized > 0
    assert m["nf4"] * 8 == 4.5 * n_quantized  # 4-bit codes + a float32 absmax per 64
