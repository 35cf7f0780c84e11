"""Measured at scale: what ``benchmarks/bench_7b_qlora.py`` measured on a GPU.

:func:`qlora_7b_h200` is QLoRA on a random LLaMA-7B-shaped model on one H200, next to
Hugging Face + bitsandbytes + PEFT on the same shape and settings, in one command.
:func:`load_scaling_result` reads and checks such a file (JSON only) and
:func:`scaling_rows` sets each measured peak beside
:func:`minituner.memory.predict.predict_memory`'s total (stored in the file by the
benchmark) and beside PEFT's.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from minituner.io import read_json
from minituner.paths import scaling_dir


def qlora_7b_full_load() -> Path:
    """QLoRA at batch 8 x 512 (the GPU busy), ours next to every peer of
    benchmarks/bench_7b_qlora.py (PEFT + bitsandbytes, + Liger-Kernel, torchao + compile)
    in one command: ``<data>/scaling/qlora_7b_batch8.json``.

    Raises:
        ValueError: no data folder (see :func:`minituner.paths.data_dir`).
    """
    return scaling_dir() / "qlora_7b_batch8.json"


def qlora_7b_h200() -> Path:
    """QLoRA on a random LLaMA-7B-shaped model, measured on one NVIDIA H200 by
    benchmarks/bench_7b_qlora.py (ours and Hugging Face + bitsandbytes + PEFT, one command):
    ``<data>/scaling/qlora_7b_h200.json``.

    Raises:
        ValueError: no data folder (see :func:`minituner.paths.data_dir`).
    """
    return scaling_dir() / "qlora_7b_h200.json"


RUN_KEY = re.compile(r"^r(\d+)_(\w+)$")  # "r8_qv": rank 8, targets "qv"
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "dict": ((dict,), "an object"),
    "str": ((str,), "a string"),
    "bool": ((bool,), "true or false"),
    "int": ((int,), "a whole number"),
    "number": ((int, float), "a number"),
}


def _first_non_finite(obj, where: str = "") -> tuple[str, float] | None:
    """The JSON path and value of the first NaN or infinity in ``obj``, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the top level", obj
    if isinstance(obj, dict):
        children = ((f"{where}.{k}", v) for k, v in obj.items())
    elif isinstance(obj, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for at, v in children:
        found = _first_non_finite(v, at)
        if found:
            return found
    return None


def _field(d: Mapping, key: str, kind: str, source: str, where: str, positive: bool = False):
    """``d[key]`` checked to be of ``kind`` (a key of ``_TYPES``), > 0 when ``positive``."""
    at = f"{where}.{key}" if where else key
    if key not in d:
        raise ValueError(f"{source}: missing key {at!r}")
    v = d[key]
    types, name = _TYPES[kind]
    if not isinstance(v, types) or (kind != "bool" and isinstance(v, bool)):
        raise ValueError(f"{source}: {at} should be {name}, got {type(v).__name__} {v!r:.60}")
    if positive and not v > 0:
        raise ValueError(f"{source}: {at} should be > 0, got {v!r}")
    return v


STEP_MODES = ("eager", "cuda_graph")  # how the benchmark ran our step


def _check_profile(run: Mapping, source: str, where: str) -> None:
    """A profiled step (``--profile`` on CUDA) holds its wall time, the GPU's busy time
    and their ratio, which cannot exceed 1 by more than the clocks' disagreement."""
    if not isinstance(run.get("profile"), dict) or run["profile"].get("device_busy_s") is None:
        return
    prof = run["profile"]
    at = f"{where}.profile"
    _field(prof, "wall_s", "number", source, at, positive=True)
    _field(prof, "device_busy_s", "number", source, at, positive=True)
    frac = _field(prof, "device_busy_fraction", "number", source, at, positive=True)
    if frac > 1.05:
        raise ValueError(f"{source}: {at}.device_busy_fraction is {frac}, above 1")


def validate_scaling_result(result, source: str = "scaling result") -> dict:
    """Check a scaling benchmark result (see :func:`load_scaling_result`) and return it.

    Raises ValueError naming ``source`` and the first problem: a missing key, a value of
    the wrong type, a NaN or infinity anywhere, a run name not of the form
    ``r<rank>_<targets>``, a size or time that is not positive, an unknown ``step_mode``,
    or a profiled GPU busy fraction above 1.
    """
    if not isinstance(result, dict):
        raise ValueError(f"{source}: should hold a JSON object, got {type(result).__name__}")
    bad = _first_non_finite(result)
    if bad:
        raise ValueError(f"{source}: {bad[0].lstrip('.')} is not a finite number ({bad[1]})")
    _field(result, "command", "str", source, "")
    _field(result, "device_name", "str", source, "")
    args = _field(result, "args", "dict", source, "")
    _field(args, "batch", "int", source, "args", positive=True)
    _field(args, "seq", "int", source, "args", positive=True)
    _field(args, "dtype", "str", source, "args")
    _field(args, "checkpointing", "bool", source, "args")
    runs = _field(result, "runs", "dict", source, "")
    if not runs:
        raise ValueError(f"{source}: 'runs' is empty")
    for key, run in runs.items():
        if not RUN_KEY.match(key):
            raise ValueError(f"{source}: run name {key!r} is not of the form r<rank>_<targets>")
        where = f"runs.{key}"
        if not isinstance(run, dict):
            raise ValueError(f"{source}: {where} should be an object")
        if run.get("peak_bytes", 0) is None:
            note = run.get("peak_note", "no peak measured")
            raise ValueError(f"{source}: {where}.peak_bytes is null ({note})")
        _field(run, "peak_bytes", "int", source, where, positive=True)
        _field(run, "step_s_median", "number", source, where, positive=True)
        _field(run, "tokens_per_s", "number", source, where, positive=True)
        _field(run, "trainable_params", "int", source, where, positive=True)
        predicted = _field(run, "predicted", "dict", source, where)
        for precision in ("mixed", "bf16"):
            p = _field(predicted, precision, "dict", source, f"{where}.predicted")
            _field(p, "total", "int", source, f"{where}.predicted.{precision}", positive=True)
        if "step_mode" in run:
            mode = _field(run, "step_mode", "str", source, where)
            if mode not in STEP_MODES:
                raise ValueError(f"{source}: {where}.step_mode should be one of {STEP_MODES}")
        _check_profile(run, source, where)
    if "peft" in result:
        peft = _field(result, "peft", "dict", source, "")
        peft_runs = _field(peft, "runs", "dict", source, "peft") if "runs" in peft else {}
        for key, run in peft_runs.items():
            where = f"peft.runs.{key}"
            if not isinstance(run, dict):
                raise ValueError(f"{source}: {where} should be an object")
            _field(run, "peak_bytes", "int", source, where, positive=True)
            _field(run, "step_s_median", "number", source, where, positive=True)
            _check_profile(run, source, where)
    return result


def load_scaling_result(path: str | os.PathLike | None = None) -> dict:
    """Read and check a result of ``benchmarks/bench_7b_qlora.py`` (JSON, never pickle;
    default: :func:`qlora_7b_h200`).

    The file holds ``command`` (the command line that made it), ``device_name``, ``args``
    (``batch``, ``seq``, ``dtype``, ``checkpointing``, ...), ``runs`` -- one entry per
    configuration named ``r<rank>_<targets>`` (``r8_qv``) with ``peak_bytes``
    (``torch.cuda.max_memory_allocated`` over the training steps), ``step_s_median``,
    ``tokens_per_s``, ``trainable_params`` and ``predicted`` (:func:`predict_memory` for
    precision ``"mixed"`` and ``"bf16"``, each with ``total``), optionally ``step_mode``
    (``"cuda_graph"``: the step was captured once and replayed, ``"eager"``; absent in
    older files: eager) and ``profile`` (one profiled step: ``wall_s``, ``device_busy_s``,
    ``device_busy_fraction``) -- and optionally ``peft.runs``, the same configurations
    run with Hugging Face + bitsandbytes + PEFT (``peak_bytes``, ``step_s_median``,
    ``profile``), and ``runs_eager``, our step run eagerly (not checked here).

    Raises:
        ValueError: a missing file, invalid JSON, a missing key, a wrong type or a
            non-finite number; the message names the file and the problem. No data
            folder (default path only).
    """
    path = Path(path) if path is not None else qlora_7b_h200()
    return validate_scaling_result(read_json(path), source=str(path))


def busy_fraction(run: Mapping) -> float | None:
    """The GPU's busy share of a profiled step's wall time, or None without a profile."""
    prof = run.get("profile")
    frac = prof.get("device_busy_fraction") if isinstance(prof, dict) else None
    return None if frac is None else float(frac)


def scaling_rows(result: Mapping) -> list[dict]:
    """One row per configuration of a scaling result, in the file's order.

    Each row: ``config`` (``"r8_qv"``), ``r``, ``targets`` (``"qv"``, ``"all"``),
    ``label`` (``"r=8 qv"``), ``trainable_params``, ``peak_bytes`` (measured),
    ``predicted_mixed_bytes`` and ``predicted_bf16_bytes`` (the ``total`` of
    :func:`predict_memory` with float32 LoRA and Adam -- what the benchmark runs -- and with
    everything in bf16), ``peak_over_mixed`` and ``peak_over_bf16`` (measured / predicted),
    ``step_s`` (median step time), ``tokens_per_s``, ``step_mode`` (``"eager"`` when the
    file does not say), ``busy_fraction`` (the GPU's busy time over the profiled step's
    wall time, None without a profile), and from the PEFT run of the same configuration,
    when there is one (else None): ``peft_peak_bytes``, ``peft_step_s``,
    ``peft_busy_fraction``, ``peak_ours_over_peft`` and ``step_ours_over_peft``.

    Raises ValueError as :func:`validate_scaling_result` does.
    """
    result = validate_scaling_result(result)
    peft = result.get("peft", {}).get("runs", {})
    rows = []
    for key, run in result["runs"].items():
        m = RUN_KEY.match(key)
        r, targets = int(m[1]), m[2]
        mixed = run["predicted"]["mixed"]["total"]
        bf16 = run["predicted"]["bf16"]["total"]
        peak, step = run["peak_bytes"], float(run["step_s_median"])
        row = {
            "config": key,
            "r": r,
            "targets": targets,
            "label": f"r={r} {targets}",
            "trainable_params": run["trainable_params"],
            "peak_bytes": peak,
            "predicted_mixed_bytes": mixed,
            "predicted_bf16_bytes": bf16,
            "peak_over_mixed": peak / mixed,
            "peak_over_bf16": peak / bf16,
            "step_s": step,
            "tokens_per_s": float(run["tokens_per_s"]),
            "step_mode": run.get("step_mode", "eager"),
            "busy_fraction": busy_fraction(run),
            "peft_peak_bytes": None,
            "peft_step_s": None,
            "peft_busy_fraction": None,
            "peak_ours_over_peft": None,
            "step_ours_over_peft": None,
        }
        theirs = peft.get(key)
        if theirs is not None:
            row["peft_peak_bytes"] = theirs["peak_bytes"]
            row["peft_step_s"] = float(theirs["step_s_median"])
            row["peft_busy_fraction"] = busy_fraction(theirs)
            row["peak_ours_over_peft"] = peak / theirs["peak_bytes"]
            row["step_ours_over_peft"] = step / row["peft_step_s"]
        rows.append(row)
    return rows
