"""Typed, versioned run records: what a run directory's JSON files hold.

* :class:`RunConfig`      ``config.json``   the FinetuneConfig, base model and corpus;
* :class:`MetricsRecord`  ``metrics.json``  status, curves, periodic evaluations
  (:class:`EvalPoint`), final figures (:class:`Figures`), memory (:class:`MemoryRecord`);
* :class:`ModelFigures`   a model's own figures (no drift), which the base model's
  metrics.json holds (minituner.store.base_record) and :class:`Figures` extends;
* ``spectrum.json`` has its own module, minituner.store.spectrum_record.

Each record is validated once, in ``from_json(data, source)`` (minituner.schema): every
required field present, of the right type, numbers finite and in range, parallel lists
of equal length. A problem raises ValueError naming the file (``source``) and the field,
so a readable but malformed file is refused where it is loaded, never deep inside a
page. ``to_json()`` gives the form written to disk, with ``schema_version``; a file
without one is version 1 (the runs shipped before the version was written). The
figures' JSON names (``irregular_accuracy`` …) are the field names, spelled here and in
minigpt/evaluate.py only.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from minituner.finetune.config import FinetuneConfig
from minituner.schema import (
    MISSING,
    JsonObject,
    as_integer,
    check_version,
    describe,
    settings_from_json,
)

SCHEMA_VERSION = 1
STATUSES = ("completed", "stopped", "diverged", "failed")
RUN_ID_RE = re.compile(r"[0-9a-f]{12}")  # use fullmatch: "…\n" is not a run id


# --------------------------------------------------------------------------- config.json
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
        o = JsonObject(data, source)
        check_version(o, SCHEMA_VERSION)
        rid = o.string("run_id")
        if not RUN_ID_RE.fullmatch(rid):
            raise o.error("run_id", f"must be 12 hex digits, not {describe(rid)}")
        rec = cls(
            run_id=rid,
            finetune=settings_from_json(
                o.obj("finetune"), FinetuneConfig, "fine-tuning", ("method",)
            ),
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
def _accuracies(o: JsonObject, key: str, optional: bool = False) -> dict[str, float]:
    """An object of accuracies by verb lemma (each a number in [0, 1]); {} when an
    optional one is missing."""
    d = o.obj(key, optional)
    return {} if d is MISSING else {v: d.number(v, 0.0, 1.0) for v in list(d.data)}


@dataclass(frozen=True)
class ModelFigures:
    """The figures of a model on its own (minituner.minigpt.evaluate): accuracies and
    rates in [0, 1], per-character perplexities of the control splits.
    ``irregular_accuracy_per_verb``: accuracy on the irregular cloze examples evaluated,
    by verb lemma."""

    irregular_accuracy: float
    irregular_accuracy_per_verb: dict[str, float]
    overregularized_rate: float
    regular_accuracy: float
    control_en_ppl: float
    control_es_ppl: float

    @classmethod
    def _fields_from(cls, o: JsonObject) -> dict:
        verbs = _accuracies(o, "irregular_accuracy_per_verb")
        return {
            "irregular_accuracy": o.number("irregular_accuracy", 0.0, 1.0),
            "irregular_accuracy_per_verb": verbs,
            "overregularized_rate": o.number("overregularized_rate", 0.0, 1.0),
            "regular_accuracy": o.number("regular_accuracy", 0.0, 1.0),
            "control_en_ppl": o.number("control_en_ppl", 0.0, strict_low=True),
            "control_es_ppl": o.number("control_es_ppl", 0.0, strict_low=True),
        }

    def figures_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(ModelFigures)}


@dataclass(frozen=True)
class Figures(ModelFigures):
    """The evaluation figures of a fine-tuned model: :class:`ModelFigures` and the drift
    against the base model, ppl / base ppl − 1.

    ``taught_accuracy``: a teach run's held-out accuracy on its taught verb, under its
    lemma (minituner.minigpt.teach); {} otherwise, and then left out of the JSON (records
    written before it existed read as {}). ``verb_accuracy`` is both in one dict."""

    control_en_drift: float
    control_es_drift: float
    taught_accuracy: dict[str, float] = field(default_factory=dict, kw_only=True)

    @property
    def verb_accuracy(self) -> dict[str, float]:
        """Accuracy by verb lemma: the irregular verbs evaluated, and a taught verb."""
        return {**self.irregular_accuracy_per_verb, **self.taught_accuracy}

    @classmethod
    def _fields_from(cls, o: JsonObject) -> dict:
        return {
            **super()._fields_from(o),
            "taught_accuracy": _accuracies(o, "taught_accuracy", optional=True),
            "control_en_drift": o.number("control_en_drift", -1.0, strict_low=True),
            "control_es_drift": o.number("control_es_drift", -1.0, strict_low=True),
        }

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "") -> Figures:
        """Raises: ValueError naming ``source`` and the field."""
        o = JsonObject(data, source, prefix)
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
        o = JsonObject(data, source, prefix)
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
        o = JsonObject(data, source, prefix)
        steps = o.array("step", "a list of step numbers")
        rec = cls(
            step=[as_integer(s, o, f"step[{i}]", low=1) for i, s in enumerate(steps)],
            loss=o.numbers("loss", 0.0),
            lr=o.numbers("lr", 0.0),
            tokens_per_s=o.numbers("tokens_per_s", 0.0),
        )
        o.finish()
        o.check_lengths({"loss": rec.loss, "lr": rec.lr, "tokens_per_s": rec.tokens_per_s},
                        "step", len(rec.step))  # fmt: skip
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
        o = JsonObject(data, source, prefix)
        p, m = o.obj("predicted"), o.obj("measured")
        o.finish()
        estimate = p.boolean("activations_is_estimate", optional=True)
        device = m.string("device", optional=True)
        rec = cls(
            predicted={k: p.integer(k) for k in list(p.data) if k != "activations_is_estimate"},
            measured={k: m.integer(k) for k in list(m.data) if k != "device"},
            activations_is_estimate=None if estimate is MISSING else estimate,
            measured_on=None if device is MISSING else device,
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
        o = JsonObject(data, source)
        check_version(o, SCHEMA_VERSION)
        status = o.string("status")
        if status not in STATUSES:
            raise o.error("status", f"must be one of {', '.join(STATUSES)}, not {describe(status)}")
        o.get("config", optional=True)  # version 1 repeated config.json here: not kept
        evals = o.get("evals")
        if not isinstance(evals, list):
            raise o.error("evals", f"must be a list, not {describe(evals)}")
        has_final = status == "completed" or "irregular_accuracy" in o.data
        final = None
        if has_final:  # taught_accuracy: only in a teach run's file
            got = {f.name: o.get(f.name, f.name == "taught_accuracy") for f in fields(Figures)}
            final = Figures.from_json({k: v for k, v in got.items() if v is not MISSING}, source)
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
            memory=None if memory is MISSING else MemoryRecord.from_json(memory, source),
            stable_rank_mean=None if srm is MISSING else srm,
            nf4_base_metrics=None
            if nf4 is MISSING
            else Figures.from_json(nf4, source, "nf4_base_metrics"),
            eval_limit=None if limit is MISSING else as_integer(limit, o, "eval_limit", low=1),
            weights_saved=True if weights_saved is MISSING else weights_saved,
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
