"""minituner.scale.recompute and what the 7B model does with it: a checkpoint's recompute
skips work only the forward pass reads, and the residual adds ride in the GEMMs, with the
same loss and gradients as the plain path."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from minituner.lora.inject import add_lora
from minituner.scale import recompute
from minituner.scale.llama import LLAMA_LINEARS, LlamaConfig, build_nf4_llama

CFG = LlamaConfig.tiny()
ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_the_flag_is_set_in_the_recompute_only():
    seen = []

    def fn(x):
        seen.append((recompute.recomputing(), recompute.checkpointed()))
        return (x * x).sum()

    x = torch.randn(5, requires_grad=True)
    checkpoint(fn, x, use_reentrant=False, context_fn=recompute.contexts).backward()
    assert seen == [(False, True), (True, True)]  # checkpointed: both passes
    assert not recompute.recomputing() and not recompute.checkpointed()
    fn(x)
    assert seen[-1] == (False, False)


def _model(targets, checkpointing=True):
    model = build_nf4_llama(CFG, "cpu", torch.float32, checkpointing=checkpointing)
    torch.manual_seed(0)
    for path in add_lora(model, targets, r=4, alpha=8):
        with torch.no_grad():
            model.get_submodule(path).lora_B.normal_(0, 0.1)
    return model


def _loss_grads(model):
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, CFG.vocab_size, (2, 13), generator=g)
    model.zero_grad(set_to_none=True)
    loss = model(t[:, :-1], t[:, 1:])
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], list(LLAMA_LINEARS)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_residual_in_the_gemms_and_skipped_recompute_keep_loss_and_gradients(
    targets, checkpointing
):
    model = _model(targets, checkpointing)
    loss_new, grads_new = _loss_grads(model)  # fused kernels on: residual in the GEMMs
    model.use_fused_kernels(False)  # the separate adds, the whole recompute
    loss_old, grads_old = _loss_grads(model)
    torch.testing.assert_close(loss_new, loss_old)
    assert grads_new.keys() == grads_old.keys() and len(grads_new) == 2 * CFG.n_layers * len(
        targets
    )
    for k in grads_old:
        torch.testing.assert_close(grads_new[k], grads_old[k], rtol=1e-5, atol=1e-7)


def test_the_recompute_skips_a_lora_down_projections_base_gemm(monkeypatch):
    """Forward, recompute, backward of layer 1 (layer 0 needs no input gradient): three
    dequantizes of q_proj's weight, two of down_proj's (its output is not needed in the
    recompute; its LoRA input is)."""
    model = _model(list(LLAMA_LINEARS))
    calls = {"q_proj": 0, "down_proj": 0}
    for name in calls:
        base = (
            model.layers[1]
            .get_submodule(f"{'self_attn' if name == 'q_proj' else 'mlp'}.{name}")
            .base
        )
        original = base.dequantize_weight

        def counted(*a, _name=name, _f=original, **k):
            calls[_name] += 1
            return _f(*a, **k)

        monkeypatch.setattr(base, "dequantize_weight", counted)
    _loss_grads(model)
    assert calls == {"q_proj": 3, "down_proj": 2}
    model.use_fused_kernels(False)
    calls.update(q_proj=0, down_proj=0)
    _loss_grads(model)
    assert calls == {"q_proj": 3, "down_proj": 3}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_checkpointed_swiglu_backward_writes_over_its_inputs(monkeypatch, checkpointing):
    """The SwiGLU node whose backward runs is the forward pass's (non-reentrant
    checkpoint), with the recompute's gate and up: in a checkpointed layer it writes its
    gradients over them (no two (tokens, intermediate) gradients allocated); without
    checkpointing gate and up are the forward's and stay. Needs the fused kernel: Triton
    (the interpreted test below runs it)."""
    from minituner.scale import fused_swiglu

    model = _model(["q_proj", "v_proj"], checkpointing)
    x = torch.zeros(1, device="cpu")
    if not fused_swiglu.fused_applies(x, x):
        pytest.skip("the fused SwiGLU needs Triton on this device (or its interpreter)")
    seen = []
    backward = fused_swiglu._SwiGLU.backward

    def spy(ctx, gh):
        seen.append(ctx.free_inputs)
        return backward(ctx, gh)

    monkeypatch.setattr(fused_swiglu._SwiGLU, "backward", staticmethod(spy))
    _loss_grads(model)
    assert seen == [checkpointing] * CFG.n_layers


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="needs Triton, no GPU")
@pytest.mark.parametrize("one_gemm, new_paths", [(False, False), (True, False), (False, True)])
def test_interpreted_fused_model_keeps_loss_and_gradients(one_gemm, new_paths):
    """The tests above again with every Triton kernel running in Triton's interpreter
    (RMSNorm, rotary on q, k slices of one q, k, v output when one_gemm, SwiGLU skipped in
    the recompute, head + loss): the fused tiny model against the plain one."""
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import pytest; from minituner.scale.llama_layers import LlamaAttention; "
        f"LlamaAttention.qkv_one_gemm = {one_gemm}; "
        "from minituner.lora.qlora_group import LoRAInK; "
        "from minituner.scale.llama_layers import LlamaDecoderLayer; "
        f"LoRAInK.on = LlamaDecoderLayer.norm_residual = {new_paths}; "
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
        f"{str(Path(__file__))!r}, '-k', 'residual or skips or writes_over']))"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
