"""The base model's ``metrics.json`` as a typed, versioned record: :class:`BaseMetrics`.

``python -m minituner pretrain`` writes the file (minituner.minigpt.pretrain, which
cannot import the store: it writes the plain dict); this record reads it, validated once
in ``from_json`` (minituner.schema) like the run records. Version 1, the format shipped,
has no ``schema_version`` field, and ``to_json`` gives the file's form back unchanged; a
file naming a newer version is refused. Pages, the experiments summary and the README
generator read the attributes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from minituner.minigpt.pretrain import PretrainConfig
from minituner.schema import JsonObject, check_version, settings_from_json
from minituner.store.records import ModelFigures

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BaseMetrics(ModelFigures):
    """metrics.json of the base model: its figures on the full held-out splits (the
    reference of every run's drift), its size and how it was pretrained. In the file
    the figures sit at the top level, beside the other fields."""

    FILE: ClassVar[str] = "metrics.json"
    num_params: int
    corpus_version: str
    pretrain: PretrainConfig
    train_time_s: float
    device: str
    final_loss: float

    @classmethod
    def from_json(cls, data, source: str) -> BaseMetrics:
        """Raises: ValueError naming ``source`` and the field."""
        o = JsonObject(data, source)
        check_version(o, SCHEMA_VERSION)
        rec = cls(
            **cls._fields_from(o),
            num_params=o.integer("num_params", low=1),
            corpus_version=o.string("corpus_version"),
            pretrain=settings_from_json(o.obj("pretrain"), PretrainConfig, "pretraining"),
            train_time_s=o.number("train_time_s", 0.0),
            device=o.string("device"),
            final_loss=o.number("final_loss", 0.0),
        )
        o.finish()
        return rec

    def to_json(self) -> dict:
        return {
            **self.figures_json(),
            "num_params": self.num_params,
            "corpus_version": self.corpus_version,
            "pretrain": asdict(self.pretrain),
            "train_time_s": self.train_time_s,
            "device": self.device,
            "final_loss": self.final_loss,
        }
