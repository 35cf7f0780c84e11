"""LoRA adapter files: save_adapter, load_adapter, in minituner's own layout or PEFT's.

``save_adapter(path, model)`` writes the own layout (below); ``format="peft"`` writes
PEFT's (:mod:`minituner.lora.peft_format`: adapter_config.json + adapter_model.safetensors
that ``peft.PeftModel.from_pretrained`` loads). ``load_adapter`` recognises either by its
adapter_config.json (PEFT's has ``peft_type``, ours ``"format": "minituner-lora"``).

The own layout is a folder with ``adapter.safetensors`` (the ``<path>.lora_A`` / ``lora_B``
tensors, keyed like ``model.state_dict()``) and ``adapter_config.json`` (format name and
version, r, alpha, rslora, dropout, the adapted module paths with their shapes, and the
caller's own config). Each file is written atomically; nothing is ever unpickled, and a
damaged or mismatched adapter is refused with a message before the model changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from minituner.io import atomic_write_text, check_tensors, load_tensors, read_json, save_tensors
from minituner.lora.inject import leaf_name, linear_layers, lora_layers, wrap_layers
from minituner.lora.peft_format import check_against_model, is_peft_config, read_peft, save_peft
from minituner.lora.targets import check_hparams

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_FORMAT, _VERSION = "minituner-lora", 1
FORMATS = ("own", "peft")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors, keyed like ``model.state_dict()`` (``<path>.lora_A``).

    The tensors are detached views of the live parameters, not copies.
    """
    out: dict[str, torch.Tensor] = {}
    for path, layer in lora_layers(model).items():
        out[f"{path}.lora_A"] = layer.lora_A.detach()
        out[f"{path}.lora_B"] = layer.lora_B.detach()
    return out


def save_adapter(
    path: str | os.PathLike,
    model: nn.Module,
    config: dict | None = None,
    format: str = "own",
    base_model: str | None = None,
) -> Path:
    """Write ``path/adapter.safetensors`` and ``path/adapter_config.json``; return ``path``.

    ``format="peft"`` writes PEFT's layout instead (``adapter_model.safetensors``, PEFT's
    key names and config; ``base_model`` goes into its ``base_model_name_or_path``, and
    ``config`` is not written: PEFT's file has no place for it). The own layout's JSON records r, alpha, rslora, dropout (null where layers differ), the targeted
    attribute names, every adapted module path with its in/out features and
    hyperparameters, and ``config`` (any JSON-serializable dict of the caller's). Each file
    is written to a temporary file in the same folder and renamed into place.

    Raises:
        ValueError: if the model has no LoRA layers, ``config`` is not a JSON-serializable
            dict, ``path`` is a file, ``format`` is unknown, or (PEFT) the layers differ in
            r, alpha, dropout or rslora.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown adapter format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format == "peft":
        return save_peft(path, model, base_model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save; call add_lora(model, ...) first")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")

    def uniform(key: str):
        values = {getattr(layer, key) for layer in layers.values()}
        return values.pop() if len(values) == 1 else None

    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        **{key: uniform(key) for key in ("r", "alpha", "rslora", "dropout")},
        "targets": sorted({leaf_name(p) for p in layers}),
        "modules": {
            p: {
                "in_features": m.in_features,
                "out_features": m.out_features,
                **{key: getattr(m, key) for key in ("r", "alpha", "rslora", "dropout")},
            }
            for p, m in layers.items()
        },
        "config": config,
    }
    try:
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"config cannot be written as JSON: {e}") from e
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot save an adapter to {out}: it is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    save_tensors(out / ADAPTER_WEIGHTS, tensors)
    atomic_write_text(out / ADAPTER_CONFIG, text)
    return out


def _read_meta(folder: Path, root: Path | None = None) -> dict:
    file = folder / ADAPTER_CONFIG
    if not (file.exists() or file.is_symlink()):
        raise ValueError(f"no adapter at {folder}: {ADAPTER_CONFIG} is missing")
    try:
        meta = read_json(file, root)
    except ValueError as e:
        raise ValueError(f"{file} is not a readable adapter config: {e}") from None
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{file} is not a minituner LoRA adapter config")
    if meta.get("version") != _VERSION:
        raise ValueError(f"{file} has version {meta.get('version')!r}; this code reads {_VERSION}")
    modules = meta.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError(f"{file} lists no adapted modules")
    for p, m in modules.items():
        try:
            if not isinstance(m, dict):
                raise ValueError(f"an entry must be an object, not {type(m).__name__}")
            in_f, out_f = m["in_features"], m["out_features"]
            if not (isinstance(in_f, int) and isinstance(out_f, int) and in_f > 0 and out_f > 0):
                raise ValueError(f"bad in/out features {in_f!r}, {out_f!r}")
            check_hparams(m["r"], m["alpha"], m["dropout"], m["rslora"], in_f, out_f, p)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{file}: bad entry for {p}: {e}") from e
    return meta


def _read_tensors(folder: Path, root: Path | None = None) -> dict[str, torch.Tensor]:
    file = folder / ADAPTER_WEIGHTS
    if not (file.exists() or file.is_symlink()):
        raise ValueError(f"no adapter at {folder}: {ADAPTER_WEIGHTS} is missing")
    return load_tensors(file, root)


def _is_peft(file: Path, root: Path | None) -> bool:
    try:
        return is_peft_config(read_json(file, root))
    except ValueError:
        return False  # _read_meta reports it


def _shape(t) -> str:
    return f"({', '.join(str(int(s)) for s in t)})"


def read_adapter(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and tensors of an adapter folder (either layout; a PEFT one in the own
    layout's terms, :func:`minituner.lora.peft_format.read_peft`), checked against each other: every
    module's lora_A and lora_B present with the shapes its config gives, floating point,
    non-empty and finite. Files are read by minituner.io (regular files, size-capped; inside
    ``root`` when given: a run store).

    Raises:
        ValueError: a missing, special, oversized or corrupt file, or a tensor that is
            missing, of another shape, or holds NaN, inf or no floats (naming the file).
    """
    folder = Path(path)
    root = Path(root) if root is not None else None
    file = folder / ADAPTER_CONFIG
    if (file.exists() or file.is_symlink()) and _is_peft(file, root):
        return read_peft(folder, root)
    meta = _read_meta(folder, root)
    tensors = _read_tensors(folder, root)
    modules: dict[str, dict] = meta["modules"]
    for p, m in modules.items():
        for key, shape in (
            ("lora_A", (m["r"], m["in_features"])),
            ("lora_B", (m["out_features"], m["r"])),
        ):
            t = tensors.get(f"{p}.{key}")
            if t is None or tuple(t.shape) != shape:
                got = "missing" if t is None else _shape(t.shape)
                raise ValueError(
                    f"{folder}: {ADAPTER_WEIGHTS} does not match {ADAPTER_CONFIG}: "
                    f"{p}.{key} is {got}, the config says {_shape(shape)}"
                )
    named = {f"{p}.{key}": tensors[f"{p}.{key}"] for p in modules for key in ("lora_A", "lora_B")}
    check_tensors(named, str(folder / ADAPTER_WEIGHTS))
    return meta, tensors


def load_adapter(
    path: str | os.PathLike, model: nn.Module, root: str | os.PathLike | None = None
) -> dict:
    """Load an adapter saved by ``save_adapter`` (either format) or by PEFT into ``model``
    (in place).

    A model without LoRA gets LoRA layers at the saved paths first (everything else frozen,
    as in ``add_lora``); a model that has LoRA must have it at exactly those paths, with the
    same shapes, alpha and rslora. Returns the saved JSON config (user config under "config").
    ``root``: the store the files must stay inside (a symlink leaving it is refused).

    Raises:
        ValueError: for a missing or corrupt file, a tensor holding NaN, inf or no floats
            (the message names the file and the tensor), or a model that does not match;
            the message says what differs. The model is unchanged when this is raised.
    """
    folder = Path(path)
    meta, tensors = read_adapter(folder, root)
    modules: dict[str, dict] = meta["modules"]

    plain, lora = linear_layers(model)
    problems: list[str] = []
    if meta.get("format") == "peft":
        problems += check_against_model(meta, model)
    if lora:
        problems += [
            f"adapter has {p} but the model has no LoRA layer there"
            for p in modules
            if p not in lora
        ]
        problems += [
            f"the model has LoRA on {p} but the adapter does not" for p in lora if p not in modules
        ]
    else:
        for p in modules:
            if p not in plain:
                try:
                    kind = type(model.get_submodule(p)).__name__
                    problems.append(
                        f"adapter has {p} but in the model that is a {kind}, not a Linear"
                    )
                except AttributeError:
                    problems.append(f"adapter has {p} but the model has no such layer")
    for p, m in modules.items():
        layer = lora.get(p) if lora else plain.get(p)
        if layer is None:
            continue
        want_a, want_b = (m["r"], layer.in_features), (layer.out_features, m["r"])
        if p in lora:
            want_a, want_b = tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)
            if layer.merged:
                problems.append(f"{p} is merged; call unmerge() before loading an adapter")
            for key in ("alpha", "rslora"):
                if m[key] != getattr(layer, key):
                    problems.append(
                        f"{p}: adapter {key} is {m[key]}, the model's is {getattr(layer, key)}"
                    )
        for key, want in (("lora_A", want_a), ("lora_B", want_b)):
            got = tuple(tensors[f"{p}.{key}"].shape)
            if got != want:
                problems.append(
                    f"{p}: adapter {key} is {_shape(got)}, model expects {_shape(want)}"
                )
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ValueError(f"cannot load adapter {folder}: " + "; ".join(problems[:6]) + more)

    if not lora:
        settings = {p: (m["r"], m["alpha"], m["dropout"], m["rslora"]) for p, m in modules.items()}
        wrap_layers(model, settings)
        lora = lora_layers(model)
    with torch.no_grad():
        for p, layer in lora.items():
            layer.lora_A.copy_(tensors[f"{p}.lora_A"])
            layer.lora_B.copy_(tensors[f"{p}.lora_B"])
    return meta
