"""What a LoRA adapter is configured with, as data and rules: no torch, no model.

MiniGPT's target names live here as a table, so the fine-tuning config and the memory
calculator read them without importing torch or the model: the short names q, k, v, o,
fc_in, fc_out map to the attribute names of MiniGPT's Linears (``q_proj`` ...), and the
groups attn / mlp / all stand for several of them. :func:`resolve_targets` reads a target
choice as ``add_lora`` does (any other name is kept: an attribute name or a module path,
since ``add_lora`` works on any model).

:func:`check_hparams` is the one rule for r, alpha, dropout and rslora; ``LoRALinear``,
``add_lora``, the adapter reader and ``FinetuneConfig`` all call it (and the CLI's
``--alpha`` its r-free part, :func:`check_alpha`).

Alpha's upper bound comes from what alpha does: the update is ΔW = scaling · B·A with
scaling = alpha/r (alpha/√r with rslora, :func:`lora_scaling`), so scaling is the number
that can break a run. It may be at most :data:`MAX_SCALING` = 1024. The usual choices
are 1 to 2 (alpha = r or 2r; the shipped runs use 16/r, 0.25 to 16) and the app offers
alpha up to 1024 at r >= 1, so 1024 leaves them all inside. Far above it a run breaks
while it trains: Adam moves B by about lr a step whatever the scale, so ΔW moves by
scaling · lr · |A| (issue 23: alpha = 1e30 at r = 8 "succeeded" with the base model's
figures, nothing learned; alpha = 1e308 overflowed mid-run).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

TARGET_ALIASES: dict[str, str] = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "fc_in": "fc_in",
    "fc_out": "fc_out",
}
TARGET_GROUPS: dict[str, list[str]] = {
    "attn": ["q", "k", "v", "o"],
    "mlp": ["fc_in", "fc_out"],
    "all": ["q", "k", "v", "o", "fc_in", "fc_out"],
}


def target_names(targets: str | Iterable[str]) -> list[str]:
    """The names in ``targets`` as given, in order: ``"q, v"`` and ``["q", "v"]`` are
    ``["q", "v"]``; groups are not expanded, empty parts are dropped.

    Raises:
        ValueError: ``targets`` is not a string or a list of strings.
    """
    if isinstance(targets, str):
        items: list = [targets]
    elif isinstance(targets, (list, tuple)):
        items = list(targets)
    else:
        raise ValueError(
            "targets must be a list of names or a comma-separated string like 'q,v', "
            f"got {type(targets).__name__}"
        )
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"target names must be strings, got {item!r}")
        names.extend(filter(None, (part.strip() for part in item.split(","))))
    return names


def expand_targets(targets: str | Iterable[str]) -> dict[str, bool]:
    """Attribute names (or paths) -> strict; names that come from a group are not strict
    (``add_lora`` skips a group's names that a model lacks, never an explicit name).

    Raises:
        ValueError: for an empty target list or a name that is not a string.
    """
    out: dict[str, bool] = {}
    for name in target_names(targets):
        if name in TARGET_GROUPS:
            for alias in TARGET_GROUPS[name]:
                out.setdefault(TARGET_ALIASES[alias], False)
        else:
            out[TARGET_ALIASES.get(name, name)] = True
    if not out:
        raise ValueError(
            "no LoRA targets given; name at least one of q, k, v, o, fc_in, fc_out, "
            "a group (attn, mlp, all) or another Linear attribute name"
        )
    return out


def resolve_targets(targets: str | Iterable[str]) -> list[str]:
    """Expand ``"q,v"`` / ``["attn", "fc_in"]`` to attribute names, in order, without repeats.

    Short names and groups are expanded; any other name is kept as given (an attribute
    name or a full module path), since ``add_lora`` works on any model.

    Raises:
        ValueError: for an empty target list or a name that is not a string.
    """
    return list(expand_targets(targets))


MAX_SCALING = 1024.0  # the largest alpha/r (alpha/sqrt(r) with rslora): see the docstring


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """The factor of the update: alpha/r, or alpha/sqrt(r) with rslora."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def check_alpha(alpha) -> None:
    """Raises ValueError unless alpha is a positive, finite number (the part of the rule
    that needs no rank; :func:`check_hparams` also bounds alpha/r)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"LoRA alpha must be finite, got {alpha!r}")


def check_hparams(
    r,
    alpha,
    dropout,
    rslora,
    in_features: int | None = None,
    out_features: int | None = None,
    where: str = "the layer",
) -> None:
    """Raises ValueError naming the bad value and the allowed range.

    r is a whole number >= 1 (and, given the layer's ``in_features`` and ``out_features``,
    at most the smaller of them), alpha a finite number > 0 whose scaling (alpha/r, or
    alpha/sqrt(r) with rslora) is at most :data:`MAX_SCALING`, dropout in [0, 1), rslora a
    bool. ``where`` names the layer in the message about a rank too large for it.
    """
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise ValueError(f"LoRA rank r must be a whole number >= 1, got {r!r}")
    if in_features is None or out_features is None:
        if r < 1:
            raise ValueError(f"LoRA rank r must be a whole number >= 1, got {r!r}")
    else:
        limit = min(in_features, out_features)
        if not 1 <= r <= limit:
            raise ValueError(
                f"LoRA rank r={r} does not fit {where} (in_features={in_features}, "
                f"out_features={out_features}); r must be between 1 and {limit}"
            )
    check_alpha(alpha)
    if not isinstance(rslora, bool):
        raise ValueError(f"rslora must be True or False, got {rslora!r}")
    if lora_scaling(r, alpha, rslora) > MAX_SCALING:
        most = MAX_SCALING * (math.sqrt(r) if rslora else r)
        over = "alpha/sqrt(r)" if rslora else "alpha/r"
        raise ValueError(
            f"LoRA alpha={alpha:g} is too large for r={r}: the update is scaled by {over} "
            f"= {lora_scaling(r, alpha, rslora):.4g}, which must be at most {MAX_SCALING:g} "
            f"(so alpha at most {most:g} at this rank; alpha = r to 2r is usual)"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
