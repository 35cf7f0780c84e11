"""Typed, versioned run records: what a run directory's JSON files hold.

* :class:`RunConfig`      ``config.json``   the FinetuneConfig, base model and corpus;
* :class:`MetricsRecord`  ``metrics.json``  status, curves, periodic evaluations
  (:class:`EvalPoint`), final figures (:class:`Figures`), memory (:class:`MemoryRecord`);
* :class:`SpectrumRecord` ``spectrum.json`` the ΔW spectrum of each adapted layer
  (:class:`LayerSpectrum`).

Each record is validated once, in ``from_json(data, source)``: every required field
present, of the right type, numbers finite and in range, parallel lists of equal length.
A problem raises ValueError naming the file (``source``) and the field, so a readable
but malformed file is refused where it is loaded, never deep inside a page. ``to_json()``
gives the form written to disk, with ``schema_version``; a file without one is version 1
(the runs shipped before the version was written). The figures' JSON names
(``irregular_accuracy`` …) are the field names, spelled here and in evaluate.py only.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from minituner.finetune.config import FinetuneConfig
from minituner.io import read_json

SCHEMA_VERSION = 1
STATUSES = ("completed", "stopped", "diverged", "failed")
RUN_ID_RE = re.compile(r"[0-9a-f]{12}")  # use fullmatch: "…\n" is not a run id
_MAX_INT = 2**62  # byte and parameter counts: any larger is not a real run
_MISSING = object()


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}" if len(repr(v)) < 40 else "a huge number"
    if isinstance(v, str):
        return f"the string {v[:30]!r}" + ("…" if len(v) > 30 else "")
    return {list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


class _Obj:
    """One JSON object being read; every accessor raises ValueError naming the file
    and the field. ``finish()`` refuses keys nobody read."""

    def __init__(self, data, source: str, prefix: str = ""):
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            raise self.error("", f"must be a JSON object, not {_kind(data)}")
        self.data = data
        self.read: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str) -> ValueError:
        where = self.name(key) if key else (self.prefix or "the file")
        return ValueError(f"{self.source}: {where} {problem}")

    def get(self, key: str, optional: bool = False):
        self.read.add(key)
        if key not in self.data:
            if optional:
                return _MISSING
            raise self.error(key, "is missing")
        return self.data[key]

    def number(self, key: str, low: float | None = None, high: float | None = None,
               strict_low: bool = False, optional: bool = False):  # fmt: skip
        v = self.get(key, optional)
        return v if v is _MISSING else _number(v, self, key, low, high, strict_low)

    def integer(self, key: str, low: int = 0, high: int = _MAX_INT) -> int:
        return _integer(self.get(key), self, key, low, high)

    def string(self, key: str, optional: bool = False):
        v = self.get(key, optional)
        if v is _MISSING or isinstance(v, str):
            return v
        raise self.error(key, f"must be a string, not {_kind(v)}")

    def boolean(self, key: str, optional: bool = False):
        v = self.get(key, optional)
        if v is _MISSING or isinstance(v, bool):
            return v
        raise self.error(key, f"must be true or false, not {_kind(v)}")

    def numbers(self, key: str, low: float | None = None, high: float | None = None):
        v = self.get(key)
        if not isinstance(v, list):
            raise self.error(key, f"must be a list of numbers, not {_kind(v)}")
        return [_number(x, self, f"{key}[{i}]", low, high) for i, x in enumerate(v)]

    def obj(self, key: str, optional: bool = False):
        v = self.get(key, optional)
        return v if v is _MISSING else _Obj(v, self.source, self.name(key))

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.read)
        if extra:
            raise self.error(extra[0], "is not a known field")


def _number(v, o: _Obj, key: str, low, high, strict_low: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise o.error(key, f"must be a number, not {_kind(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise o.error(key, f"must be a finite number, not {_kind(v)}")
    if low is not None and (f < low or (strict_low and f == low)):
        raise o.error(key, f"must be {'>' if strict_low else '>='} {low:g}, not {_kind(v)}")
    if high is not None and f > high:
        raise o.error(key, f"must be <= {high:g}, not {_kind(v)}")
    return f


def _integer(v, o: _Obj, key: str, low: int = 0, high: int = _MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise o.error(key, f"must be a whole number, not {_kind(v)}")
    if not low <= v <= high:
        raise o.error(key, f"must be between {low} and {high}, not {_kind(v)}")
    return v


def _check_version(o: _Obj) -> None:
    v = o.get("schema_version", optional=True)
    if v is _MISSING:
        return  # version 1: written before the version was recorded
    v = _integer(v, o, "schema_version", low=1)
    if v > SCHEMA_VERSION:
        raise o.error("schema_version", f"is {v}: written by a newer minituner (this one "
                      f"reads up to {SCHEMA_VERSION})")  # fmt: skip


def read_record(path: str | Path, cls):
    """``cls.from_json`` of the JSON file at ``path``.

    Raises:
        ValueError: missing file, invalid JSON or an invalid record (naming the file).
    """
    return cls.from_json(read_json(path), str(path))


# --------------------------------------------------------------------------- config.json
def _finetune_config(o: _Obj) -> FinetuneConfig:
    """A FinetuneConfig from JSON, each value of the JSON type its field's default has
    (FinetuneConfig checks the ranges)."""
    kinds = {f.name: f.default for f in fields(FinetuneConfig)}
    kw = {}
    for key in list(o.data):
        if key not in kinds:
            raise o.error(key, "is not a fine-tuning setting")
        default = kinds[key]
        if isinstance(default, bool):
            kw[key] = o.boolean(key)
        elif isinstance(default, int):
            kw[key] = _integer(o.get(key), o, key, low=-_MAX_INT)
        elif isinstance(default, float) or default is None:  # lr: None means the default
            kw[key] = o.number(key)
        elif isinstance(default, str):
            kw[key] = o.string(key)
        else:  # targets: a list of names
            v = o.get(key)
            if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                raise o.error(key, f"must be a list of module names, not {_kind(v)}")
            kw[key] = tuple(v)
    if "method" not in kw:
        raise o.error("method", "is missing")
    try:
        return FinetuneConfig(**kw)
    except (TypeError, ValueError) as e:
        raise o.error("", f"is not a valid fine-tuning configuration: {e}") from None


@dataclass(frozen=True)
class RunConfig:
    """config.json: what was trained, from which base model, on which corpus."""

    FILE: ClassVar[str] = "config.json"
    run_id: str
    finetune: FinetuneConfig
    base_model_id: str
    corpus_version: str

    @classmethod
    def from_json(cls, data, source: str) -> RunConfig:
        """Raises: ValueError naming ``source`` and the field."""
        o = _Obj(data, source)
        _check_version(o)
        rid = o.string("run_id")
        if not RUN_ID_RE.fullmatch(rid):
            raise o.error("run_id", f"must be 12 hex digits, not {_kind(rid)}")
        rec = cls(
            run_id=rid,
            finetune=_finetune_config(o.obj("finetune")),
            base_model_id=o.string("base_model_id"),
            corpus_version=o.string("corpus_version"),
        )
        o.finish()
        return rec

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "finetune": self.finetune.to_dict(),
            "base_model_id": self.base_model_id,
            "corpus_version": self.corpus_version,
        }


# --------------------------------------------------------------------------- metrics.json
def _accuracies(o: _Obj, key: str, optional: bool = False) -> dict[str, float]:
    """An object of accuracies by verb lemma (each a number in [0, 1]); {} when an
    optional one is missing."""
    d = o.obj(key, optional)
    return {} if d is _MISSING else {v: d.number(v, 0.0, 1.0) for v in list(d.data)}


@dataclass(frozen=True)
class Figures:
    """The evaluation figures of a model (minituner.minigpt.evaluate): accuracies and rates in
    [0, 1], per-character perplexities, drift = ppl / base ppl − 1.

    ``irregular_accuracy_per_verb``: accuracy on the irregular cloze examples evaluated,
    by verb lemma. ``taught_accuracy``: a teach run's held-out accuracy on its taught
    verb, under its lemma (minituner.minigpt.teach); {} otherwise, and then left out of the JSON
    (records written before it existed read as {}). ``verb_accuracy`` is both in one
    dict."""

    irregular_accuracy: float
    irregular_accuracy_per_verb: dict[str, float]
    overregularized_rate: float
    regular_accuracy: float
    control_en_ppl: float
    control_es_ppl: float
    control_en_drift: float
    control_es_drift: float
    taught_accuracy: dict[str, float] = field(default_factory=dict, kw_only=True)

    @property
    def verb_accuracy(self) -> dict[str, float]:
        """Accuracy by verb lemma: the irregular verbs evaluated, and a taught verb."""
        return {**self.irregular_accuracy_per_verb, **self.taught_accuracy}

    @classmethod
    def _fields_from(cls, o: _Obj) -> dict:
        verbs = _accuracies(o, "irregular_accuracy_per_verb")
        return {
            "taught_accuracy": _accuracies(o, "taught_accuracy", optional=True),
            "irregular_accuracy": o.number("irregular_accuracy", 0.0, 1.0),
            "irregular_accuracy_per_verb": verbs,
            "overregularized_rate": o.number("overregularized_rate", 0.0, 1.0),
            "regular_accuracy": o.number("regular_accuracy", 0.0, 1.0),
            "control_en_ppl": o.number("control_en_ppl", 0.0, strict_low=True),
            "control_es_ppl": o.number("control_es_ppl", 0.0, strict_low=True),
            "control_en_drift": o.number("control_en_drift", -1.0, strict_low=True),
            "control_es_drift": o.number("control_es_drift", -1.0, strict_low=True),
        }

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "") -> Figures:
        """Raises: ValueError naming ``source`` and the field."""
        o = _Obj(data, source, prefix)
        rec = cls(**cls._fields_from(o))
        o.finish()
        return rec

    def figures_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(Figures)}
        if not self.taught_accuracy:
            del out["taught_accuracy"]
        return out

    def to_json(self) -> dict:
        return self.figures_json()


@dataclass(frozen=True)
class EvalPoint(Figures):
    """A periodic evaluation during training, on a sample of each split (step 0: the
    base model, drift 0)."""

    step: int

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "") -> EvalPoint:
        o = _Obj(data, source, prefix)
        rec = cls(step=o.integer("step"), **cls._fields_from(o))
        o.finish()
        return rec

    def to_json(self) -> dict:
        return {"step": self.step, **self.figures_json()}


@dataclass(frozen=True)
class Curves:
    """One entry per optimizer step: its number, the loss, the learning rate and the
    throughput (lists of equal length)."""

    step: list[int]
    loss: list[float]
    lr: list[float]
    tokens_per_s: list[float]

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "curves") -> Curves:
        o = _Obj(data, source, prefix)
        steps = o.get("step")
        if not isinstance(steps, list):
            raise o.error("step", f"must be a list of step numbers, not {_kind(steps)}")
        rec = cls(
            step=[_integer(s, o, f"step[{i}]", low=1) for i, s in enumerate(steps)],
            loss=o.numbers("loss", 0.0),
            lr=o.numbers("lr", 0.0),
            tokens_per_s=o.numbers("tokens_per_s", 0.0),
        )
        o.finish()
        for name in ("loss", "lr", "tokens_per_s"):
            if len(getattr(rec, name)) != len(rec.step):
                raise o.error(name, f"has {len(getattr(rec, name))} entries, step has "
                              f"{len(rec.step)}")  # fmt: skip
        return rec

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MemoryRecord:
    """Training memory in bytes by category (weights, lora, nf4, gradients, optimizer,
    activations, totals): predicted by minituner.memory.predict and measured after the first
    step; ``measured_on`` is the device type of the measurement."""

    predicted: dict[str, int]
    measured: dict[str, int]
    activations_is_estimate: bool | None = None
    measured_on: str | None = None

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "memory") -> MemoryRecord:
        o = _Obj(data, source, prefix)
        p, m = o.obj("predicted"), o.obj("measured")
        o.finish()
        estimate = p.boolean("activations_is_estimate", optional=True)
        device = m.string("device", optional=True)
        rec = cls(
            predicted={k: p.integer(k) for k in list(p.data) if k != "activations_is_estimate"},
            measured={k: m.integer(k) for k in list(m.data) if k != "device"},
            activations_is_estimate=None if estimate is _MISSING else estimate,
            measured_on=None if device is _MISSING else device,
        )
        for name, d in (("predicted", rec.predicted), ("measured", rec.measured)):
            if "total" not in d:
                raise o.error(f"{name}.total", "is missing")
        return rec

    def to_json(self) -> dict:
        p, m = dict(self.predicted), dict(self.measured)
        if self.activations_is_estimate is not None:
            p["activations_is_estimate"] = self.activations_is_estimate
        if self.measured_on is not None:
            m["device"] = self.measured_on
        return {"predicted": p, "measured": m}


@dataclass(frozen=True)
class MetricsRecord:
    """metrics.json: how a run went. A completed run has its ``final`` figures (on the
    full held-out splits) and ``memory``; the store adds ``stable_rank_mean`` (the mean
    stable rank of its ΔW) when it saves the run. In the file the final figures sit at
    the top level, beside the other fields."""

    FILE: ClassVar[str] = "metrics.json"
    status: str
    message: str
    device: str
    trainable_params: int
    total_params: int
    curves: Curves
    evals: list[EvalPoint]
    wall_time_s: float
    final: Figures | None = None
    memory: MemoryRecord | None = None
    stable_rank_mean: float | None = None
    nf4_base_metrics: Figures | None = None
    eval_limit: int | None = None  # evaluations capped to this many items (cheap test runs)
    # False: the store kept this run's records only, no adapter/delta and no spectrum.json
    # (the frontier and replay grids: many runs, read for their figures alone)
    weights_saved: bool = True

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_json(cls, data, source: str) -> MetricsRecord:
        """Raises: ValueError naming ``source`` and the field."""
        o = _Obj(data, source)
        _check_version(o)
        status = o.string("status")
        if status not in STATUSES:
            raise o.error("status", f"must be one of {', '.join(STATUSES)}, not {_kind(status)}")
        o.get("config", optional=True)  # version 1 repeated config.json here: not kept
        evals = o.get("evals")
        if not isinstance(evals, list):
            raise o.error("evals", f"must be a list, not {_kind(evals)}")
        has_final = status == "completed" or "irregular_accuracy" in o.data
        final = None
        if has_final:  # taught_accuracy: only in a teach run's file
            got = {f.name: o.get(f.name, f.name == "taught_accuracy") for f in fields(Figures)}
            final = Figures.from_json({k: v for k, v in got.items() if v is not _MISSING}, source)
        memory = o.get("memory", optional=status != "completed")
        nf4 = o.get("nf4_base_metrics", optional=True)
        srm = o.number("stable_rank_mean", 0.0, optional=True)
        limit = o.get("eval_limit", optional=True)
        weights_saved = o.boolean("weights_saved", optional=True)
        rec = cls(
            status=status,
            message=o.string("message"),
            device=o.string("device"),
            trainable_params=o.integer("trainable_params"),
            total_params=o.integer("total_params", low=1),
            curves=Curves.from_json(o.get("curves"), source),
            evals=[EvalPoint.from_json(e, source, f"evals[{i}]") for i, e in enumerate(evals)],
            wall_time_s=o.number("wall_time_s", 0.0),
            final=final,
            memory=None if memory is _MISSING else MemoryRecord.from_json(memory, source),
            stable_rank_mean=None if srm is _MISSING else srm,
            nf4_base_metrics=None
            if nf4 is _MISSING
            else Figures.from_json(nf4, source, "nf4_base_metrics"),
            eval_limit=None if limit is _MISSING else _integer(limit, o, "eval_limit", low=1),
            weights_saved=True if weights_saved is _MISSING else weights_saved,
        )
        o.finish()
        if rec.trainable_params > rec.total_params:
            raise o.error("trainable_params", f"({rec.trainable_params}) exceeds total_params "
                          f"({rec.total_params})")  # fmt: skip
        if status == "completed" and not rec.curves.step:
            raise o.error("curves.step", "is empty in a completed run")
        return rec

    def to_json(self) -> dict:
        out: dict = {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "message": self.message,
            "device": self.device,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "curves": self.curves.to_json(),
            "evals": [e.to_json() for e in self.evals],
            "wall_time_s": self.wall_time_s,
        }
        if self.final is not None:
            out.update(self.final.figures_json())
        if self.memory is not None:
            out["memory"] = self.memory.to_json()
        if self.stable_rank_mean is not None:
            out["stable_rank_mean"] = self.stable_rank_mean
        if self.nf4_base_metrics is not None:
            out["nf4_base_metrics"] = self.nf4_base_metrics.figures_json()
        if self.eval_limit is not None:
            out["eval_limit"] = self.eval_limit
        if not self.weights_saved:
            out["weights_saved"] = False
        return out

    def replace(self, **changes) -> MetricsRecord:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- spectrum.json
@dataclass(frozen=True)
class LayerSpectrum:
    """The singular values of one layer's ΔW (minituner.analysis.spectrum.spectrum)."""

    shape: tuple[int, int]
    singular_values: list[float]
    normalized: list[float]
    cumulative_energy: list[float]
    stable_rank: float
    rank_90: int
    frobenius_norm: float
    spectral_norm: float
    note: str | None = None

    @classmethod
    def from_json(cls, data, source: str, prefix: str) -> LayerSpectrum:
        o = _Obj(data, source, prefix)
        shape = o.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2):
            raise o.error("shape", f"must be [out, in], not {_kind(shape)}")
        shape = tuple(_integer(s, o, f"shape[{i}]", low=1) for i, s in enumerate(shape))
        note = o.get("note", optional=True)
        if note is not _MISSING and note is not None and not isinstance(note, str):
            raise o.error("note", f"must be a string or null, not {_kind(note)}")
        sv = o.numbers("singular_values", 0.0)
        rec = cls(
            shape=shape,
            singular_values=sv,
            normalized=o.numbers("normalized", 0.0, 1.0 + 1e-9),
            cumulative_energy=o.numbers("cumulative_energy", 0.0, 1.0 + 1e-9),
            stable_rank=o.number("stable_rank", 0.0),
            rank_90=o.integer("rank_90", 0, len(sv)),
            frobenius_norm=o.number("frobenius_norm", 0.0),
            spectral_norm=o.number("spectral_norm", 0.0),
            note=None if note is _MISSING else note,
        )
        o.finish()
        if len(sv) != min(shape):
            raise o.error("singular_values", f"has {len(sv)} values; a {shape[0]}x{shape[1]} "
                          f"matrix has {min(shape)}")  # fmt: skip
        for name in ("normalized", "cumulative_energy"):
            if len(getattr(rec, name)) != len(sv):
                raise o.error(name, f"has {len(getattr(rec, name))} values, singular_values "
                              f"has {len(sv)}")  # fmt: skip
        return rec

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class SpectrumRecord:
    """spectrum.json: the ΔW spectrum of every adapted layer, by module name. In the
    file the layers sit at the top level beside ``schema_version``."""

    FILE: ClassVar[str] = "spectrum.json"
    layers: dict[str, LayerSpectrum] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data, source: str) -> SpectrumRecord:
        """Raises: ValueError naming ``source`` and the layer."""
        o = _Obj(data, source)
        _check_version(o)
        names = [k for k in o.data if k != "schema_version"]
        if not names:
            raise o.error("", "holds no layer")
        return cls({n: LayerSpectrum.from_json(o.get(n), source, n) for n in names})

    @classmethod
    def from_spectra(cls, spectra: dict[str, dict], source: str = "the spectra") -> SpectrumRecord:
        """From minituner.analysis.spectrum.layer_spectra's output."""
        return cls.from_json(spectra, source)

    def stable_rank_mean(self) -> float:
        return sum(s.stable_rank for s in self.layers.values()) / max(1, len(self.layers))

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION,
                **{n: s.to_json() for n, s in self.layers.items()}}  # fmt: skip
