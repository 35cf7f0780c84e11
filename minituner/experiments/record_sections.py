"""The sections of experiments.json (minituner.experiments.record), each a frozen
dataclass read by ``from_json`` (minituner.schema: a missing, mistyped or out-of-range
field raises ValueError naming the file and the field):

* ``base``            :class:`BaseSummary`  the base model's figures;
* ``rank_sweep``      :class:`RankSweep`    an :class:`Aggregate` per rank r (and full
  fine-tuning), the :class:`Elbow`;
* ``full_lr_search``  :class:`LrSearch`     full fine-tuning's learning rates (:class:`LrRun`);
* ``targets``, ``forgetting``  an :class:`Aggregate` per target set / method;
* ``frontier``, ``replay``  the grids (minituner.experiments.record_grids);
* ``truncation``      :class:`Truncation`   W + ΔW_k of a full fine-tune;
* ``missing``         the runs the summary lacked.

An :class:`Aggregate` holds each figure's mean ± std over seeds as a :class:`MeanStd`
(``a.irregular_accuracy.mean``); in the file they are ``<figure>_mean`` and
``<figure>_std`` beside the run ids. ``to_json()`` gives the file's form back, key for
key. The figures' JSON names are spelled here and in minituner.store.records only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minituner.schema import MISSING, JsonObject
from minituner.store.records import Figures

# each summarized figure and the range of its values: (low, high, low excluded)
RANGES = {
    "irregular_accuracy": (0.0, 1.0, False),
    "regular_accuracy": (0.0, 1.0, False),
    "control_en_drift": (-1.0, None, True),
    "control_es_drift": (-1.0, None, True),
    "stable_rank_mean": (0.0, None, False),
    "final_loss": (0.0, None, False),
}
FIGURES = tuple(RANGES)[:4]  # a run's final figures that every grid keeps per seed
OPTIONAL = ("regular_accuracy",)  # summaries written before it was measured lack it


@dataclass(frozen=True)
class MeanStd:
    """A figure over seeds: mean and sample standard deviation (0 for one seed)."""

    mean: float
    std: float


def read_mean_std(o: JsonObject, name: str) -> MeanStd | None:
    """``<name>_mean`` and ``<name>_std`` of ``o`` (None for an optional one missing)."""
    low, high, strict = RANGES[name]
    mean = o.number(f"{name}_mean", low, high, strict, optional=name in OPTIONAL)
    if mean is MISSING:
        return None
    return MeanStd(mean, o.number(f"{name}_std", 0.0))


@dataclass(frozen=True)
class Aggregate:
    """One setting's runs over seeds: each figure's :class:`MeanStd`, the trainable
    parameters and the measured training-state bytes of the first run. ``nf4_base``:
    QLoRA's NF4-quantized base model alone, without the adapter."""

    run_ids: list[str]
    n: int
    irregular_accuracy: MeanStd
    regular_accuracy: MeanStd | None  # None: written before it was measured
    control_en_drift: MeanStd
    control_es_drift: MeanStd
    stable_rank_mean: MeanStd  # of the runs' ΔW
    final_loss: MeanStd  # the mean of each run's last 5 steps
    trainable_params: int
    measured_state_bytes: int
    nf4_base: Figures | None = None

    @classmethod
    def read(cls, o: JsonObject) -> Aggregate:
        """From the fields of ``o`` (other fields may sit beside them: a grid config)."""
        ids = o.strings("run_ids")
        n = o.integer("n", low=1)
        if n != len(ids):
            raise o.error("n", f"is {n}, but run_ids lists {len(ids)} runs")
        nf4 = o.get("nf4_base", optional=True)
        return cls(
            run_ids=ids,
            n=n,
            **{name: read_mean_std(o, name) for name in RANGES},
            trainable_params=o.integer("trainable_params"),
            measured_state_bytes=o.integer("measured_state_bytes"),
            nf4_base=None
            if nf4 is MISSING
            else Figures.from_json(nf4, o.source, o.name("nf4_base")),
        )

    @classmethod
    def from_json(cls, data, source: str, prefix: str) -> Aggregate:
        o = JsonObject(data, source, prefix)
        rec = cls.read(o)
        o.finish()
        return rec

    def to_json(self) -> dict:
        out: dict = {"run_ids": list(self.run_ids), "n": self.n}
        for name in RANGES:
            ms = getattr(self, name)
            if ms is not None:
                out[f"{name}_mean"], out[f"{name}_std"] = ms.mean, ms.std
        out["trainable_params"] = self.trainable_params
        out["measured_state_bytes"] = self.measured_state_bytes
        if self.nf4_base is not None:
            out["nf4_base"] = self.nf4_base.figures_json()
        return out


def aggregates_from_json(data, source: str, prefix: str) -> dict[str, Aggregate]:
    """An object of aggregates by name (target set, method)."""
    o = JsonObject(data, source, prefix)
    return {k: Aggregate.from_json(o.get(k), source, o.name(k)) for k in o.keys()}


@dataclass(frozen=True)
class BaseSummary:
    """The base model the runs start from, and its figures (its metrics.json)."""

    model_id: str
    corpus_version: str
    irregular_accuracy: float
    overregularized_rate: float
    regular_accuracy: float
    control_en_ppl: float
    control_es_ppl: float

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "base") -> BaseSummary:
        o = JsonObject(data, source, prefix)
        rec = cls(
            model_id=o.string("model_id"),
            corpus_version=o.string("corpus_version"),
            irregular_accuracy=o.number("irregular_accuracy", 0.0, 1.0),
            overregularized_rate=o.number("overregularized_rate", 0.0, 1.0),
            regular_accuracy=o.number("regular_accuracy", 0.0, 1.0),
            control_en_ppl=o.number("control_en_ppl", 0.0, strict_low=True),
            control_es_ppl=o.number("control_es_ppl", 0.0, strict_low=True),
        )
        o.finish()
        return rec

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Elbow:
    """minituner.analysis.spectrum.rank_elbow of the sweep's accuracies: lists aligned
    with ``ranks``, the best rank and the elbow (in the file also as ``elbow``)."""

    ranks: list[int]
    mean: list[float]
    std: list[float]
    n: list[int]
    best_r: int
    best_mean: float
    best_std: float
    tolerance: float
    threshold: float
    elbow_r: int
    higher_is_better: bool
    definition: str

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "rank_sweep.elbow") -> Elbow:
        o = JsonObject(data, source, prefix)
        rec = cls(
            ranks=o.integers("ranks", low=1),
            mean=o.numbers("mean"),
            std=o.numbers("std", 0.0),
            n=o.integers("n", low=1),
            best_r=o.integer("best_r", low=1),
            best_mean=o.number("best_mean"),
            best_std=o.number("best_std", 0.0),
            tolerance=o.number("tolerance", 0.0),
            threshold=o.number("threshold"),
            elbow_r=o.integer("elbow_r", low=1),
            higher_is_better=o.boolean("higher_is_better"),
            definition=o.string("definition"),
        )
        if o.integer("elbow", low=1) != rec.elbow_r:
            raise o.error("elbow", f"must equal elbow_r ({rec.elbow_r})")
        o.finish()
        o.check_lengths({"mean": rec.mean, "std": rec.std, "n": rec.n}, "ranks", len(rec.ranks))
        return rec

    def to_json(self) -> dict:
        return {**asdict(self), "elbow": self.elbow_r}


@dataclass(frozen=True)
class RankSweep:
    """LoRA (q,v) at each rank r over seeds, and full fine-tuning: the run ids
    (``runs[r]``, ``full_runs``), an :class:`Aggregate` each (``summary[r]``, ``full``),
    the elbow (None without runs). In the file ``summary`` holds ``full`` too."""

    ranks: list[int]
    runs: dict[int, list[str]]
    full_runs: list[str]
    summary: dict[int, Aggregate]
    full: Aggregate | None
    elbow: Elbow | None

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "rank_sweep") -> RankSweep:
        o = JsonObject(data, source, prefix)
        ranks = o.integers("ranks", low=1)
        runs_o, summary_o = o.obj("runs"), o.obj("summary")
        for part in (runs_o, summary_o):
            keys = [k for k in part.keys() if k != "full" or part is runs_o]
            if keys != [str(r) for r in ranks]:
                raise part.error("", f"must hold one entry per rank of ranks {ranks}, not {keys}")
        full = summary_o.get("full", optional=True)
        elbow = o.get("elbow")
        rec = cls(
            ranks=ranks,
            runs={r: runs_o.strings(str(r)) for r in ranks},
            full_runs=o.strings("full"),
            summary={
                r: Aggregate.from_json(summary_o.get(str(r)), source, summary_o.name(str(r)))
                for r in ranks
            },
            full=None
            if full is MISSING
            else Aggregate.from_json(full, source, summary_o.name("full")),
            elbow=None if elbow is None else Elbow.from_json(elbow, source, o.name("elbow")),
        )
        o.finish()
        return rec

    def to_json(self) -> dict:
        summary = {str(r): a.to_json() for r, a in self.summary.items()}
        if self.full is not None:
            summary["full"] = self.full.to_json()
        return {
            "ranks": list(self.ranks),
            "runs": {str(r): list(ids) for r, ids in self.runs.items()},
            "full": list(self.full_runs),
            "summary": summary,
            "elbow": None if self.elbow is None else self.elbow.to_json(),
        }


@dataclass(frozen=True)
class LrRun:
    """One learning rate of full fine-tuning's search (seed 0) and its final figures."""

    lr: float
    run_id: str
    irregular_accuracy: float
    regular_accuracy: float
    control_en_drift: float
    control_es_drift: float

    @classmethod
    def read(cls, o: JsonObject) -> LrRun:
        rec = cls(
            lr=o.number("lr", 0.0, strict_low=True),
            run_id=o.string("run_id"),
            **{name: o.number(name, *RANGES[name]) for name in FIGURES},
        )
        o.finish()
        return rec


@dataclass(frozen=True)
class LrSearch:
    """Full fine-tuning's learning-rate search: each rate tried, and the best (None
    before the search ran)."""

    best_lr: float | None
    runs: list[LrRun]

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "full_lr_search") -> LrSearch:
        o = JsonObject(data, source, prefix)
        rec = cls(o.number("best_lr", 0.0, null=True), [LrRun.read(r) for r in o.objects("runs")])
        o.finish()
        return rec

    def to_json(self) -> dict:
        return {"best_lr": self.best_lr, "runs": [asdict(r) for r in self.runs]}


@dataclass(frozen=True)
class Truncation:
    """A full fine-tune's update truncated to its best rank-k part in every block
    Linear, k in ``k`` (the last "full": the whole update), and the figures of each."""

    run_id: str
    k: list[int | str]
    irregular_accuracy: list[float]
    control_en_drift: list[float]
    control_es_drift: list[float]

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "truncation") -> Truncation:
        o = JsonObject(data, source, prefix)
        ks = o.array("k")
        for i, k in enumerate(ks):
            if k != "full" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise o.error(f"k[{i}]", f'must be a rank >= 1 or "full", not {k!r}')
        rec = cls(
            run_id=o.string("run_id"),
            k=list(ks),
            irregular_accuracy=o.numbers("irregular_accuracy", 0.0, 1.0),
            control_en_drift=o.numbers("control_en_drift", -1.0),
            control_es_drift=o.numbers("control_es_drift", -1.0),
        )
        o.finish()
        figures = {"irregular_accuracy": rec.irregular_accuracy,
                   "control_en_drift": rec.control_en_drift,
                   "control_es_drift": rec.control_es_drift}  # fmt: skip
        o.check_lengths(figures, "k", len(ks))
        return rec

    def to_json(self) -> dict:
        return asdict(self)
