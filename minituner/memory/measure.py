"""Measured memory: the bytes a model and its optimizer really hold.

:func:`measured_memory_cpu` counts the live tensors of a model (and optimizer) by the
categories :func:`minituner.memory.predict.predict_memory` predicts, each shared byte once; on a
CPU float32 run the two agree to the byte. :func:`measure_cuda_step` reads the CUDA
allocator's peak around one step, activations and temporaries included.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) bytes of ``t`` inside its storage (a strided view: the span it covers)."""
    if t.numel() == 0:
        return (0, 0)
    size = t.element_size()
    start = t.storage_offset() * size
    extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
    return start, start + extent * size


def _uncovered(span: tuple[int, int], covered: list[tuple[int, int]]) -> int:
    """Bytes of ``span`` outside the (disjoint, merged) intervals ``covered``."""
    lo, hi = span
    inside = sum(max(0, min(hi, b) - max(lo, a)) for a, b in covered)
    return hi - lo - inside


def _merge(covered: list[tuple[int, int]], span: tuple[int, int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted([*covered, span]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _is_nf4_module(module: torch.nn.Module) -> bool:
    # NF4Linear, or any quantized Linear stand-in (the duck type LoRALinear accepts as a base)
    return not isinstance(module, torch.nn.Linear) and callable(
        getattr(module, "dequantize_weight", None)
    )


def measured_memory_cpu(model: torch.nn.Module, optimizer=None) -> dict:
    """Exact bytes of the live tensors of ``model`` (and ``optimizer``), by category.

    A tensor's bytes are numel × element size (a strided view: the bytes it spans). Bytes
    are counted once even when tensors share them (tied weights, views, shared buffers),
    in the first category that meets them:
    ``nf4`` (parameters and buffers of an ``NF4Linear`` other than its bias: packed codes,
    absmax and its double-quantization state), ``lora`` (parameters named ``lora_*``),
    ``weights`` (every other parameter and buffer), ``gradients`` (``.grad`` of the
    parameters) and ``optimizer`` (every tensor in the optimizer state: AdamW's m, v and
    step). Measure after ``optimizer.step()`` and before ``zero_grad()``.

    Also gives ``total`` (the sum of those five), ``storage_slack`` (bytes that the
    underlying storages hold beyond these tensors, e.g. a buffer that is a slice of a
    larger padded allocation; 0 when every tensor owns its storage) and the parameter
    counts ``n_params`` and ``n_trainable``. Works on any device.
    """
    covered: dict[int, list[tuple[int, int]]] = {}  # storage -> byte intervals counted
    sizes: dict[int, int] = {}
    out = {"weights": 0, "lora": 0, "nf4": 0, "gradients": 0, "optimizer": 0}

    def add(category: str, t: torch.Tensor | None) -> None:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return
        storage = t.untyped_storage()
        sid = storage.data_ptr() or id(storage)
        sizes[sid] = storage.nbytes()
        span = _byte_span(t)
        have = covered.get(sid, [])
        out[category] += _uncovered(span, have)
        covered[sid] = _merge(have, span)

    for module in model.modules():
        nf4 = _is_nf4_module(module)
        for name, t in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            if nf4 and name != "bias":
                add("nf4", t)
            elif name.startswith("lora_"):
                add("lora", t)
            else:
                add("weights", t)
    for p in model.parameters():
        add("gradients", p.grad)
    if optimizer is not None:
        for state in optimizer.state.values():
            for t in state.values():
                add("optimizer", t)
    params = {id(p): p for p in model.parameters()}.values()
    out["total"] = sum(out.values())
    out["storage_slack"] = sum(
        sizes[sid] - sum(b - a for a, b in spans) for sid, spans in covered.items()
    )
    out["n_params"] = sum(p.numel() for p in params)
    out["n_trainable"] = sum(p.numel() for p in params if p.requires_grad)
    return out


def measure_cuda_step(fn: Callable[[], object], device=None) -> int:
    """Peak bytes allocated on CUDA while ``fn()`` runs (one training step, say).

    Resets the peak statistics, runs ``fn`` and returns ``torch.cuda.max_memory_allocated``,
    which includes what was already allocated before the step (weights, optimizer state).
    Raises RuntimeError when CUDA is not available.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("measure_cuda_step needs a CUDA device")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))
