"""experiments.json as a typed, versioned record: :class:`ExperimentsRecord`, what
``python -m minituner precompute`` writes (minituner.experiments.summary) and the pages,
the claims and the README read.

Its sections are records of their own: minituner.experiments.record_sections (base,
rank_sweep, full_lr_search, targets, forgetting, truncation: :class:`Aggregate` holds a
setting's figures over seeds) and minituner.experiments.record_grids (frontier, replay).
Validated once when read (minituner.schema): a missing, mistyped or out-of-range field
raises ValueError naming the file and the field. ``to_json()`` gives the file's form
back, key for key. Version 1, the format shipped, has no ``schema_version`` field; a
file naming a newer version is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from minituner.experiments.record_grids import Frontier, Replay
from minituner.experiments.record_sections import (
    Aggregate,
    BaseSummary,
    LrSearch,
    RankSweep,
    Truncation,
    aggregates_from_json,
)
from minituner.schema import MISSING, JsonObject, check_version, read_record

SCHEMA_VERSION = 1


def _section(read):
    """A reader of the top-level object's field ``name`` with ``read(data, source, name)``."""
    return lambda o, name: read(o.get(name), o.source, name)


_READERS = {
    "base": _section(BaseSummary.from_json),
    "rank_sweep": _section(RankSweep.from_json),
    "full_lr_search": _section(LrSearch.from_json),
    "targets": _section(aggregates_from_json),
    "forgetting": _section(aggregates_from_json),
    "frontier": _section(Frontier.from_json),
    "replay": _section(Replay.from_json),
    "truncation": _section(Truncation.from_json),
    "missing": JsonObject.strings,
}
_OPTIONAL = ("frontier", "replay", "truncation")  # older files lack them; no full fine-tune


@dataclass(frozen=True)
class ExperimentsRecord:
    """experiments.json (see the module docstring). ``frontier``, ``replay`` and
    ``truncation`` are None when the file has none (older files; no full fine-tune).

    A record read with ``lenient=True`` (the app: a page shows what it can) has None for
    a section that is missing or malformed, and the reason for a malformed one in
    ``problems`` (by section name); a strict read raises instead."""

    FILE: ClassVar[str] = "experiments.json"
    base: BaseSummary | None
    rank_sweep: RankSweep | None
    full_lr_search: LrSearch | None
    targets: dict[str, Aggregate] | None
    forgetting: dict[str, Aggregate] | None
    frontier: Frontier | None = None
    replay: Replay | None = None
    truncation: Truncation | None = None
    missing: list[str] | None = None
    problems: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data, source: str, lenient: bool = False) -> ExperimentsRecord:
        """Raises: ValueError naming ``source`` and the field (lenient: only when the file
        is not an object or names a newer version)."""
        o = JsonObject(data, source)
        check_version(o, SCHEMA_VERSION)
        sections, problems = {}, {}
        for name, read in _READERS.items():
            if o.get(name, optional=lenient or name in _OPTIONAL) is MISSING:
                sections[name] = None
                continue
            try:
                sections[name] = read(o, name)
            except ValueError as e:
                if not lenient:
                    raise
                sections[name], problems[name] = None, str(e)
        if not lenient:
            o.finish()
        return cls(**sections, problems=problems)

    def to_json(self) -> dict:
        """The file's form (a section that is None is left out)."""
        out: dict = {}
        for name, value in (
            ("base", self.base), ("rank_sweep", self.rank_sweep),
            ("full_lr_search", self.full_lr_search), ("targets", self.targets),
            ("forgetting", self.forgetting), ("frontier", self.frontier),
            ("replay", self.replay), ("truncation", self.truncation),
            ("missing", self.missing),
        ):  # fmt: skip
            if isinstance(value, dict):
                out[name] = {k: a.to_json() for k, a in value.items()}
            elif isinstance(value, list):
                out[name] = list(value)
            elif value is not None:
                out[name] = value.to_json()
        return out


def read_experiments(path: str | Path) -> ExperimentsRecord:
    """The record in ``path`` (strict).

    Raises:
        ValueError: a missing file, invalid JSON or an invalid record (naming the file).
    """
    return read_record(path, ExperimentsRecord)
