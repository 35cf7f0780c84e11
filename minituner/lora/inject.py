"""Putting LoRA into a model and taking it out again: add_lora, merge_lora, counting.

``add_lora`` works on any ``nn.Module``. It picks Linear layers by attribute name: the
short names q, k, v, o, fc_in, fc_out, the groups attn / mlp / all
(:mod:`minituner.lora.targets`), any other attribute name (``lm_head``), or a full path
(``blocks.0.attn.q_proj``). It freezes everything that is not LoRA. Names from a group
that a model lacks are skipped; a name given explicitly must exist. ``merge_lora(model)``
replaces each LoRA layer by a plain Linear holding W + ΔW, also for a 4-bit base or a
weight tied to another module (where ``LoRALinear.merge()`` refuses). Parameters are
counted once even when tied.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from minituner.lora.layer import LoRALinear, is_linear_like
from minituner.lora.targets import check_hparams, expand_targets


def leaf_name(path: str) -> str:
    """The attribute name at the end of a module path: ``blocks.0.attn.q_proj`` -> q_proj."""
    return path.rpartition(".")[2]


def linear_layers(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, LoRALinear]]:
    """(plain Linear-like layers, LoRA layers) by path; never looks inside a LoRA layer."""
    plain: dict[str, nn.Module] = {}
    lora: dict[str, LoRALinear] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, LoRALinear):
                lora[path] = child
            elif is_linear_like(child):
                plain[path] = child
            else:
                visit(child, path)

    visit(model, "")
    return plain, lora


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by module path (e.g. ``blocks.0.attn.q_proj``)."""
    return linear_layers(model)[1]


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _tied_ids(model: nn.Module) -> set[int]:
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {i for i, n in counts.items() if n > 1}


def wrap_layers(model: nn.Module, settings: dict[str, tuple]) -> None:
    """Wrap the Linear at each path of ``settings`` (path -> (r, alpha, dropout, rslora)) in
    a ``LoRALinear``, in place, and freeze everything that is not LoRA. The caller has
    checked the paths and hyper-parameters."""
    tied = _tied_ids(model)
    for path, (r, alpha, dropout, rslora) in settings.items():
        layer = LoRALinear(model.get_submodule(path), r, alpha, dropout, rslora)
        w = getattr(layer.base, "weight", None)
        layer.weight_is_tied = isinstance(w, torch.Tensor) and id(w) in tied
        _set_submodule(model, path, layer)
    keep = {id(p) for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def add_lora(
    model: nn.Module,
    targets: str | Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    rslora: bool = False,
) -> list[str]:
    """Wrap each targeted Linear of ``model`` (in place) in a ``LoRALinear``; freeze the rest.

    Returns the adapted module paths, e.g. ``["blocks.0.attn.q_proj", ...]``. Nothing in
    the model changes when a ValueError is raised.

    Raises:
        ValueError: for no targets, an explicit name that is no Linear of the model (the
            message lists the Linear names available), a layer that already has LoRA, no
            layer matched at all, or a hyperparameter out of range.
    """
    wanted = expand_targets(targets)
    plain, lora = linear_layers(model)
    available = ", ".join(sorted({leaf_name(p) for p in [*plain, *lora]})) or "(none)"
    model_name = type(model).__name__
    for path in lora:
        if leaf_name(path) in wanted or path in wanted:
            raise ValueError(f"LoRA already added to {path}")
    for name, strict in wanted.items():
        if strict and not any(leaf_name(p) == name or p == name for p in plain):
            kinds = sorted(
                {type(m).__name__ for p, m in model.named_modules() if leaf_name(p) == name}
            )
            what = (
                f"is a {'/'.join(kinds)} in {model_name}, not an nn.Linear"
                if kinds
                else f"matches no module of {model_name}"
            )
            raise ValueError(
                f"target {name!r} {what}; Linear attribute names available: {available}"
            )
    hits = [p for p in plain if leaf_name(p) in wanted or p in wanted]
    if not hits:
        raise ValueError(
            f"targets {list(wanted)} matched no Linear layer of {model_name}; "
            f"Linear attribute names available: {available}"
        )
    for path in hits:  # validate everything before changing anything
        layer = plain[path]
        check_hparams(r, alpha, dropout, rslora, layer.in_features, layer.out_features, path)
    wrap_layers(model, {path: (r, alpha, dropout, rslora) for path in hits})
    return hits


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by a plain frozen ``nn.Linear`` holding W + ΔW, in place.

    Returns ``model`` itself. A 4-bit (NF4) base is dequantized: its merged layer is a
    float32 ``nn.Linear`` (W + ΔW cannot be stored in 4 bits without losing the update).
    Tied weights are not touched: the merged layer gets its own copy.
    """
    for path, layer in lora_layers(model).items():
        _set_submodule(model, path, layer.merged_linear())
    return model


def count_parameters(model: nn.Module) -> dict:
    """Trainable and total parameter counts, overall and per module.

    ``per_module`` lists, for each module that owns parameters directly, its name and
    counts (a LoRA layer shows up twice: its own lora_A/lora_B and ``<path>.base``). A
    parameter shared by several modules (tied weights) is counted once, under the first
    module that owns it, so the totals equal ``sum(p.numel() for p in model.parameters())``.
    Buffers (e.g. packed 4-bit codes kept as buffers) are not parameters and are not counted.
    """
    seen: set[int] = set()
    per_module = []
    for name, module in model.named_modules():
        fresh = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        if not fresh:
            continue
        seen.update(id(p) for p in fresh)
        per_module.append(
            {
                "name": name,
                "trainable": sum(p.numel() for p in fresh if p.requires_grad),
                "total": sum(p.numel() for p in fresh),
            }
        )
    return {
        "trainable": sum(m["trainable"] for m in per_module),
        "total": sum(m["total"] for m in per_module),
        "per_module": per_module,
    }
