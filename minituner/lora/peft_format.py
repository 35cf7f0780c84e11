"""PEFT's LoRA adapter layout, written and read without importing PEFT.

A PEFT adapter folder holds ``adapter_config.json`` (``peft_type`` "LORA", ``r``,
``lora_alpha``, ``target_modules``, ``lora_dropout``, ``use_rslora``, ``bias``, ...) and
``adapter_model.safetensors``, whose keys are ``base_model.model.<module path>.lora_A.weight``
(r, in) and ``...lora_B.weight`` (out, r): the same A and B, the same ``scaling`` (alpha/r,
alpha/√r with rsLoRA) as :class:`~minituner.lora.layer.LoRALinear`. So the numbers move
across unchanged; only the names and the config differ.

Writing (:func:`save_peft`) needs one r, alpha, dropout and rslora for every adapted layer
(PEFT's ``rank_pattern``/``alpha_pattern`` are not written): a model whose layers differ
is refused. ``target_modules`` is the list of attribute names when they pick exactly the
adapted layers, else the list of full paths (PEFT matches a name or a dotted suffix).

Reading (:func:`read_peft`) turns the folder into the layer table and tensors that
:mod:`minituner.lora.adapter_io` loads, after checking everything: anything PEFT can hold
that this code does not run (DoRA, ``modules_to_save``, biases, non-uniform rank or alpha
patterns, another ``peft_type``, layer selection, ...) is refused with one line rather than
half-loaded; so are missing or extra tensors, shapes that disagree with the config, NaN
or inf, and a pickle ``adapter_model.bin`` (never unpickled). Which layers a PEFT
``target_modules`` selects is decided by :func:`peft_targets` against the model.

GPT-2's ``Conv1D`` (transformers' Linear with a transposed (in, out) weight) is marked in
PEFT by ``fan_in_fan_out``; A and B keep the same shapes. :class:`LoRALinear` needs a
Linear, so such a model is converted first (``minituner.hf.conv1d_to_linear``); the
converted layers carry ``fan_in_fan_out = True`` and the flag is written from them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from minituner.io import atomic_write_text, check_tensors, load_tensors, read_json, save_tensors
from minituner.lora.inject import leaf_name, linear_layers, lora_layers
from minituner.lora.targets import check_hparams

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PICKLE = "adapter_model.bin"
PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(.+)\.(lora_A|lora_B)\.weight")

# Config keys that must be empty (None, False, {} or []): each names something PEFT can
# hold that these layers do not compute. The reason goes into the error message.
UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "modules_to_save": "fully trained extra modules",
    "lora_bias": "a trained bias on lora_B",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA",
    "target_parameters": "LoRA on bare parameters",
    "trainable_token_indices": "trainable token embeddings",
    "layer_replication": "layer replication",
    "layers_to_transform": "a layer selection",
    "layers_pattern": "a layer selection",
    "exclude_modules": "excluded modules",
    "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "megatron_config": "Megatron parallel layers",
}


def is_peft_config(meta: object) -> bool:
    """True for a parsed ``adapter_config.json`` written by PEFT (it has ``peft_type``)."""
    return isinstance(meta, dict) and "peft_type" in meta


# ---------------------------------------------------------------------------- writing


def _uniform(layers: dict, key: str):
    values = {getattr(layer, key) for layer in layers.values()}
    if len(values) != 1:
        shown = ", ".join(f"{p}: {getattr(m, key)}" for p, m in list(layers.items())[:4])
        raise ValueError(
            f"PEFT's adapter_config.json holds one {key} for every layer, but this model's "
            f"LoRA layers differ ({shown}); save it with format='own'"
        )
    return values.pop()


def peft_target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    """The ``target_modules`` that make PEFT adapt exactly ``adapted``: attribute names when
    every layer with those names is adapted, else the full paths (sorted)."""
    plain, lora = linear_layers(model)
    names = sorted({leaf_name(p) for p in adapted})
    chosen = {p for p in [*plain, *lora] if leaf_name(p) in names}
    chosen |= {p for p, m in model.named_modules() if leaf_name(p) in names and _is_conv1d(m)}
    return names if chosen == set(adapted) else sorted(adapted)


def peft_config(model: nn.Module, base_model: str | None = None, task_type: str | None = None):
    """The ``adapter_config.json`` dict PEFT reads for ``model``'s LoRA layers.

    Raises:
        ValueError: no LoRA layers, or layers whose r, alpha, dropout or rslora differ.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save; call add_lora(model, ...) first")
    fan = {bool(getattr(m.base, "fan_in_fan_out", False)) for m in layers.values()}
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "r": _uniform(layers, "r"),
        "lora_alpha": _uniform(layers, "alpha"),
        "lora_dropout": _uniform(layers, "dropout"),
        "use_rslora": _uniform(layers, "rslora"),
        "target_modules": peft_target_modules(model, list(layers)),
        "bias": "none",
        "fan_in_fan_out": fan == {True},  # GPT-2's Conv1D layers, converted to Linear
        "modules_to_save": None,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def save_peft(
    path: str | os.PathLike,
    model: nn.Module,
    base_model: str | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> Path:
    """Write ``path/adapter_config.json`` + ``path/adapter_model.safetensors`` in PEFT's
    layout (``peft.PeftModel.from_pretrained(model, path)`` loads it); return ``path``.

    Raises:
        ValueError: see :func:`peft_config`; or ``path`` is a file.
    """
    meta = peft_config(model, base_model, task_type)
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot save an adapter to {out}: it is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for p, layer in lora_layers(model).items():
        tensors[f"{PREFIX}{p}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{PREFIX}{p}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous()
    save_tensors(out / PEFT_WEIGHTS, tensors, metadata={"format": "pt"})
    atomic_write_text(out / PEFT_CONFIG, json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return out


# ---------------------------------------------------------------------------- reading


def _is_conv1d(module: object) -> bool:
    """transformers' Conv1D (GPT-2): weight (in, out), ``nf`` = out, without importing it."""
    w = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(w, torch.Tensor)
        and w.dim() == 2
        and getattr(module, "nf", None) == w.shape[1]
    )


def _empty(value) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def _check_config(meta: dict, file: Path) -> None:
    """Raises ValueError for a config this code cannot apply exactly."""
    kind = meta.get("peft_type")
    if kind != "LORA":
        raise ValueError(f"{file} is a PEFT {kind} adapter; only LoRA adapters can be loaded")
    for key, what in UNSUPPORTED.items():
        if not _empty(meta.get(key)):
            raise ValueError(
                f"{file} uses {what} ({key}={meta[key]!r}), which minituner cannot run"
            )
    if meta.get("bias", "none") != "none":
        raise ValueError(
            f"{file} trains biases (bias={meta['bias']!r}); only bias='none' can be loaded"
        )
    r, alpha = meta.get("r"), meta.get("lora_alpha")
    for key, default in (("rank_pattern", r), ("alpha_pattern", alpha)):
        pattern = meta.get(key) or {}
        if not isinstance(pattern, dict):
            raise ValueError(f"{file}: {key} must be an object, not {type(pattern).__name__}")
        if any(v != default for v in pattern.values()):
            raise ValueError(
                f"{file} gives some layers another {key.split('_')[0]} ({key}={pattern}); "
                "only one r and one alpha for all layers can be loaded"
            )
    rslora = meta.get("use_rslora", False)
    dropout = meta.get("lora_dropout", 0.0)
    if not isinstance(rslora, bool):
        raise ValueError(f"{file}: use_rslora must be true or false, not {rslora!r}")
    try:
        check_hparams(r, alpha, dropout, rslora, None, None, "the adapter")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from None
    targets = meta.get("target_modules")
    ok = isinstance(targets, str) or (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    )
    if not ok:
        raise ValueError(f"{file}: target_modules must be a string or a list of names")


def _output_layer(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    return out if out is not None else getattr(model, "lm_head", None)


def peft_targets(model: nn.Module, target_modules: str | list[str]) -> set[str]:
    """The module paths of ``model`` a PEFT ``target_modules`` adapts: a list matches a
    path or a dotted suffix of it, a string is a regular expression the whole path must
    match, and "all-linear" is every Linear (or Conv1D) but the output layer."""
    plain, lora = linear_layers(model)
    conv = {p for p, m in model.named_modules() if _is_conv1d(m)}
    candidates = {*plain, *lora, *conv}
    if target_modules == "all-linear":
        out = _output_layer(model)
        return {p for p in candidates if model.get_submodule(p) is not out and p != "lm_head"}
    if isinstance(target_modules, str):
        try:
            return {p for p in candidates if re.fullmatch(target_modules, p)}
        except re.error as e:
            raise ValueError(
                f"target_modules {target_modules!r} is no regular expression ({e})"
            ) from None
    names = set(target_modules)
    return {p for p in candidates if p in names or any(p.endswith("." + n) for n in names)}


def read_peft(path: str | os.PathLike, root: str | os.PathLike | None = None):
    """(config, tensors) of a PEFT LoRA folder in :mod:`~minituner.lora.adapter_io`'s terms:
    the config's ``modules`` maps each adapted path to its in/out features, r, alpha,
    dropout and rslora; tensors are keyed ``<path>.lora_A`` / ``<path>.lora_B``. Nothing
    about the model is checked here (:func:`check_against_model` does).

    Raises:
        ValueError: an unsupported or malformed config, a pickle-only folder, a tensor
            under a name PEFT's LoRA does not write, a missing A or B, shapes that do not
            fit r, NaN or inf; one line naming the file.
    """
    folder = Path(path)
    root = Path(root) if root is not None else None
    file = folder / PEFT_CONFIG
    meta = read_json(file, root)
    _check_config(meta, file)
    weights = folder / PEFT_WEIGHTS
    if not (weights.exists() or weights.is_symlink()):
        if (folder / PEFT_PICKLE).exists():
            raise ValueError(
                f"{folder} holds {PEFT_PICKLE}, a pickle: minituner never unpickles files, "
                "since loading one can run any code. Re-save it with PEFT's "
                "save_pretrained(..., safe_serialization=True) to get " + PEFT_WEIGHTS
            )
        raise ValueError(f"no adapter at {folder}: {PEFT_WEIGHTS} is missing")
    raw = load_tensors(weights, root)
    check_tensors(raw, str(weights))
    tensors: dict[str, torch.Tensor] = {}
    for key, t in raw.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise ValueError(
                f"{weights} holds {key}, which is not a LoRA A or B of PEFT's layout "
                f"({PREFIX}<module>.lora_A.weight); it cannot be loaded"
            )
        tensors[f"{m.group(1)}.{m.group(2)}"] = t
    r = meta["r"]
    modules = {}
    for p in sorted({k.rpartition(".")[0] for k in tensors}):
        a, b = tensors.get(f"{p}.lora_A"), tensors.get(f"{p}.lora_B")
        if a is None or b is None:
            which = "lora_A" if a is None else "lora_B"
            raise ValueError(f"{weights}: {p} has no {which}")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ValueError(
                f"{weights}: {p} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                f"with r={r} they must be (r, in) and (out, r)"
            )
        m = {
            "in_features": a.shape[1],
            "out_features": b.shape[0],
            "r": r,
            "alpha": float(meta["lora_alpha"]),
            "dropout": float(meta.get("lora_dropout", 0.0)),
            "rslora": meta.get("use_rslora", False),
        }
        try:
            check_hparams(r, m["alpha"], m["dropout"], m["rslora"], a.shape[1], b.shape[0], p)
        except ValueError as e:
            raise ValueError(f"{weights}: {e}") from None
        modules[p] = m
    return {**meta, "format": "peft", "modules": modules}, tensors


def check_against_model(meta: dict, model: nn.Module) -> list[str]:
    """Problems between a PEFT adapter and the model it should go into: layers its
    ``target_modules`` selects without tensors (missing) or tensors of layers it does not
    select (extra), and GPT-2 Conv1D layers that must become Linears first."""
    adapted = set(meta["modules"])
    absent = sorted(p for p in adapted if _find(model, p) is None)
    if absent:
        made_for = meta.get("base_model_name_or_path")
        made_for = f" ({made_for!r})" if isinstance(made_for, str) else ""
        return [
            f"it was made for another model{made_for}: {type(model).__name__} has no {_few(absent)}"
        ]
    selected = peft_targets(model, meta["target_modules"])
    problems = []
    for p in sorted(adapted):
        if _is_conv1d(_find(model, p)):
            problems.append(
                f"{p} is a transformers Conv1D (GPT-2's Linear with a transposed weight); "
                "convert the model first with minituner.hf.conv1d_to_linear(model)"
            )
    missing = sorted(selected - adapted)
    extra = sorted(adapted - selected)
    if missing:
        problems.append(f"target_modules selects {_few(missing)} but the file has no tensors there")
    if extra:
        problems.append(f"the file has tensors for {_few(extra)}, which target_modules excludes")
    return problems


def _find(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _few(paths: list[str]) -> str:
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(paths[:3]) + more
