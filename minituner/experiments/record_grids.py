"""The grid sections of experiments.json (minituner.experiments.record): the
learning-forgetting :class:`Frontier` and the :class:`Replay` sweep. Both hold one
:class:`GridConfig` per config of their grid: its settings, an
:class:`~minituner.experiments.record_sections.Aggregate` of its seeds' runs and each
seed's own figures (:class:`SeedFigures`). Read like the other sections
(minituner.schema); ``to_json()`` gives the file's form back, key for key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minituner.experiments.record_sections import FIGURES, RANGES, Aggregate
from minituner.schema import MISSING, JsonObject

LEARNING = "irregular_accuracy"  # the figure the frontier calls learning (its x axis)


@dataclass(frozen=True)
class SeedFigures:
    """Each seed's final figures, in the order of its config's ``seeds``."""

    irregular_accuracy: list[float]
    regular_accuracy: list[float]
    control_en_drift: list[float]
    control_es_drift: list[float]

    @classmethod
    def from_json(cls, data, source: str, prefix: str) -> SeedFigures:
        o = JsonObject(data, source, prefix)
        rec = cls(**{name: o.numbers(name, *RANGES[name][:2]) for name in FIGURES})
        o.finish()
        return rec


@dataclass(frozen=True)
class GridConfig:
    """One config of a grid over seeds: its settings (``r`` None for full fine-tuning),
    a label without the seed, ``stats`` over its runs, and each seed's figures. In the
    file the fields of ``stats`` sit beside the settings."""

    method: str
    lr: float
    steps: int
    replay: float
    r: int | None
    label: str
    stats: Aggregate
    seeds: list[int]
    per_seed: SeedFigures

    @classmethod
    def from_json(cls, data, source: str, prefix: str) -> GridConfig:
        o = JsonObject(data, source, prefix)
        r = o.integer("r", low=1, optional=True)
        rec = cls(
            method=o.string("method"),
            lr=o.number("lr", 0.0, strict_low=True),
            steps=o.integer("steps", low=1),
            replay=o.number("replay", 0.0, 1.0),
            r=None if r is MISSING else r,
            label=o.string("label"),
            stats=Aggregate.read(o),
            seeds=o.integers("seeds"),
            per_seed=SeedFigures.from_json(o.get("per_seed"), source, o.name("per_seed")),
        )
        o.finish()
        o.check_lengths({"seeds": rec.seeds, **asdict(rec.per_seed)}, "n", rec.stats.n)
        return rec

    def to_json(self) -> dict:
        out: dict = {"method": self.method, "lr": self.lr, "steps": self.steps}
        out["replay"] = self.replay
        if self.r is not None:
            out["r"] = self.r
        return {
            **out,
            "label": self.label,
            **self.stats.to_json(),
            "seeds": list(self.seeds),
            "per_seed": asdict(self.per_seed),
        }


@dataclass(frozen=True)
class Matched:
    """LoRA against full fine-tuning at matched learning on one forgetting measure
    (minituner.analysis.frontier.compare, LoRA as ``a``): the learning ``levels``, each
    method's best forgetting there, LoRA's ``advantage`` at each, its mean (None when
    the two do not overlap), the levels it wins, and the mean advantage of each seed's
    own fronts (by seed; None where they do not overlap)."""

    levels: list[float]
    lora: list[float]
    full: list[float]
    advantage: list[float]
    mean_advantage: float | None
    wins: int
    per_seed_advantage: dict[str, float | None]

    @classmethod
    def from_json(cls, data, source: str, prefix: str) -> Matched:
        o = JsonObject(data, source, prefix)
        seeds = o.obj("per_seed_advantage")
        rec = cls(
            levels=o.numbers("levels"),
            lora=o.numbers("lora"),
            full=o.numbers("full"),
            advantage=o.numbers("advantage"),
            mean_advantage=o.number("mean_advantage", null=True),
            wins=o.integer("wins"),
            per_seed_advantage={s: seeds.number(s, null=True) for s in seeds.keys()},
        )
        o.finish()
        parallel = {"lora": rec.lora, "full": rec.full, "advantage": rec.advantage}
        o.check_lengths(parallel, "levels", len(rec.levels))
        return rec

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Frontier:
    """The frontier grid: ``configs``; ``fronts[measure][method]``: the indices into
    ``configs`` of the method's Pareto front of the means, by increasing learning;
    ``matched[measure]``; ``measures[measure]``: whether lower or higher is better."""

    learning: str
    measures: dict[str, str]
    configs: list[GridConfig]
    fronts: dict[str, dict[str, list[int]]]
    matched: dict[str, Matched]

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "frontier") -> Frontier:
        o = JsonObject(data, source, prefix)
        learning = o.string("learning")
        measures = o.obj("measures")
        configs = [GridConfig.from_json(c.data, source, c.prefix) for c in o.objects("configs")]
        fronts = o.obj("fronts")
        by_measure = {}
        for measure in fronts.keys():
            m = fronts.obj(measure)
            by_measure[measure] = {k: m.integers(k, 0, len(configs) - 1) for k in m.keys()}
        matched = o.obj("matched")
        rec = cls(
            learning=learning,
            measures={k: measures.string(k) for k in measures.keys()},
            configs=configs,
            fronts=by_measure,
            matched={
                k: Matched.from_json(matched.get(k), source, matched.name(k))
                for k in matched.keys()
            },  # fmt: skip
        )
        o.finish()
        return rec

    def to_json(self) -> dict:
        return {
            "learning": self.learning,
            "measures": dict(self.measures),
            "configs": [c.to_json() for c in self.configs],
            "fronts": {k: {m: list(i) for m, i in v.items()} for k, v in self.fronts.items()},
            "matched": {k: m.to_json() for k, m in self.matched.items()},
        }


@dataclass(frozen=True)
class Replay:
    """The replay sweep: the shares of regular-verb pairs tried and, for LoRA and full
    fine-tuning, one config per share with runs, by increasing share."""

    shares: list[float]
    lora: list[GridConfig]
    full: list[GridConfig]

    @classmethod
    def from_json(cls, data, source: str, prefix: str = "replay") -> Replay:
        o = JsonObject(data, source, prefix)
        rec = cls(
            shares=o.numbers("shares", 0.0, 1.0),
            lora=[GridConfig.from_json(c.data, source, c.prefix) for c in o.objects("lora")],
            full=[GridConfig.from_json(c.data, source, c.prefix) for c in o.objects("full")],
        )
        o.finish()
        return rec

    def to_json(self) -> dict:
        return {
            "shares": list(self.shares),
            "lora": [c.to_json() for c in self.lora],
            "full": [c.to_json() for c in self.full],
        }
