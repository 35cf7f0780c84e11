"""minituner.scale.graphs: a training step captured in a CUDA graph gives the eager step's numbers.

The GPU tests run only where CUDA is present (they are skipped on the CPU); the argument
checks run everywhere.
"""

from __future__ import annotations

import pytest
import torch

from minituner.lora.inject import add_lora, lora_layers
from minituner.scale.graphs import CapturedTrainStep, optimizer_is_capturable
from minituner.scale.llama import LLAMA_LINEARS, LlamaConfig, build_nf4_llama

CFG = LlamaConfig.tiny()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")


def _loss(model, x, y):
    return model(x, y)


def _model(device: str, targets=LLAMA_LINEARS, checkpointing: bool = True, fused_kernels=True):
    model = build_nf4_llama(CFG, device, torch.bfloat16, seed=0, checkpointing=checkpointing)
    model.use_fused_kernels(fused_kernels)
    torch.manual_seed(0)
    add_lora(model, list(targets), r=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 would leave lora_A's gradient zero in the first step
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
    return model, [p for p in model.parameters() if p.requires_grad]


def _batches(device: str, n: int, batch: int = 2, seq: int = 16):
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, CFG.vocab_size, (n, batch, seq + 1), generator=g)
    return [(b[:, :-1].to(device), b[:, 1:].to(device)) for b in t]


def _eager_steps(batches, capturable: bool, checkpointing: bool = True, fused_kernels=True):
    model, params = _model("cuda", checkpointing=checkpointing, fused_kernels=fused_kernels)
    opt = torch.optim.AdamW(params, lr=1e-2, capturable=capturable)
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in params]


@needs_cuda
@pytest.mark.parametrize("fused_kernels", [True, False])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_captured_steps_equal_eager_steps(checkpointing, fused_kernels, new_paths):
    """Also with the Triton kernels of minituner.scale.fused_* (norm, rotary, SwiGLU, head
    + loss) inside the captured step."""
    batches = _batches("cuda", 6)
    ref_losses, ref_params = _eager_steps(batches, True, checkpointing, fused_kernels)
    model, params = _model("cuda", checkpointing=checkpointing, fused_kernels=fused_kernels)
    step = CapturedTrainStep(model, torch.optim.AdamW(params, lr=1e-2, capturable=True), _loss)
    losses = []
    for i, (x, y) in enumerate(batches):
        losses.append(step(x, y).item())
        assert step.captured == (i >= step.warmup)
    assert step.steps == len(batches)
    # the same kernels on the same data: equal up to (at most) reduction-order rounding
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-6, atol=0)
    assert len(set(losses)) == len(losses)  # every step saw its own batch
    for got, want in zip(params, ref_params, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # and the parameters moved: the replays trained
    first, _ = _model("cuda", checkpointing=checkpointing, fused_kernels=fused_kernels)
    moved = [
        (a - b).abs().max().item()
        for a, b in zip(params, [p for p in first.parameters() if p.requires_grad], strict=True)
    ]
    assert min(moved) > 0


@needs_cuda
def test_capturable_adamw_trains_as_the_default_adamw():
    # capturable AdamW keeps its step count on the GPU and so rounds a little differently;
    # through bf16 forwards that shows at ~1e-5 in the loss: the updates must still agree
    batches = _batches("cuda", 4)
    start = [p.detach().clone() for p in _model("cuda")[1]]
    a_losses, a_params = _eager_steps(batches, capturable=True)
    b_losses, b_params = _eager_steps(batches, capturable=False)
    torch.testing.assert_close(torch.tensor(a_losses), torch.tensor(b_losses), rtol=1e-4, atol=0)
    for a, b, p0 in zip(a_params, b_params, start, strict=True):
        step_a, step_b = a - p0, b - p0
        assert step_b.norm() > 0
        assert ((step_a - step_b).norm() / step_b.norm()).item() < 1e-2


@needs_cuda
def test_fused_qlora_on_cuda_agrees_with_the_lora_modules():
    x, y = _batches("cuda", 1)[0]
    model, params = _model("cuda")
    runs = []
    for fused in (True, False):
        model.use_fused_lora(fused)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = _loss(model, x, y)
        loss.backward()
        runs.append((loss.item(), [p.grad.clone() for p in params]))
    (loss_f, grads_f), (loss_m, grads_m) = runs
    assert loss_f == pytest.approx(loss_m, rel=1e-2)
    for a, b in zip(grads_f, grads_m, strict=True):
        assert ((a - b).norm() / b.norm()).item() < 3e-2


@needs_cuda
@pytest.mark.parametrize("checkpointing", [True, False])
def test_fused_kernels_step_agrees_with_the_eager_ops(checkpointing, new_paths):
    """The fused norm, rotary, SwiGLU and head + loss compute the eager ops' function: the
    same loss and LoRA gradients to bf16 rounding, on a model with one of every piece."""
    x, y = _batches("cuda", 1)[0]
    y[0, :3] = -100  # ignored positions too
    runs = []
    for fused in (True, False):
        model, params = _model("cuda", checkpointing=checkpointing, fused_kernels=fused)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = _loss(model, x, y)
        loss.backward()
        runs.append((loss.item(), [p.grad.clone() for p in params]))
    (loss_f, grads_f), (loss_e, grads_e) = runs
    assert loss_f == pytest.approx(loss_e, rel=5e-3)
    for a, b in zip(grads_f, grads_e, strict=True):
        assert ((a - b).norm() / b.norm()).item() < 3e-2


@needs_cuda
def test_captured_step_refuses_another_shape():
    model, params = _model("cuda", targets=("q_proj", "v_proj"))
    step = CapturedTrainStep(
        model, torch.optim.AdamW(params, lr=1e-3, capturable=True), _loss, warmup=1
    )
    (x, y), (x2, y2) = _batches("cuda", 1)[0], _batches("cuda", 1, seq=8)[0]
    step(x, y)
    step(x, y)  # captured here
    with pytest.raises(ValueError, match="captured step takes"):
        step(x2, y2)


def test_optimizer_must_be_capturable_and_on_cuda():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert optimizer_is_capturable(torch.optim.SGD(p, lr=0.1))
    assert not optimizer_is_capturable(torch.optim.AdamW(p))
    assert optimizer_is_capturable(torch.optim.AdamW(p, capturable=True))
    with pytest.raises(ValueError, match="capturable=True"):
        CapturedTrainStep(torch.nn.Linear(3, 3), torch.optim.AdamW(p), _loss)
    capturable = torch.optim.AdamW(p, capturable=True)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="warmup"):
            CapturedTrainStep(torch.nn.Linear(3, 3), capturable, _loss, warmup=bad)
    with pytest.raises(ValueError, match="CUDA device"):
        CapturedTrainStep(torch.nn.Linear(3, 3), capturable, _loss)
