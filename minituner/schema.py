"""Reading typed records from JSON: the one home of the checks every record makes.

A record (a run's config and metrics, its spectrum, the base model's metrics, the
experiments summary, the subspace similarities) is a frozen dataclass with
``from_json(data, source)`` and ``to_json()``. ``from_json`` reads its object through a
:class:`JsonObject`, whose accessors check the type and range of each field and raise
ValueError naming the file (``source``) and the field (``rank_sweep.summary.8.n``), so a
readable but malformed file is refused where it is loaded, never deep inside a page;
``finish()`` refuses fields nobody read. :func:`check_version` reads ``schema_version``,
:func:`settings_from_json` a settings dataclass (FinetuneConfig, PretrainConfig),
:func:`read_record` a record from a file.

Only the standard library and minituner.io: every layer may import this module.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from pathlib import Path

from minituner.io import read_json

MAX_INT = 2**62  # byte and parameter counts: any larger is not a real run
MISSING = object()  # what an optional accessor returns for a field the object lacks


def describe(v) -> str:
    """A value as an error message names it: "the number 1.5", "null", "a list"."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}" if len(repr(v)) < 40 else "a huge number"
    if isinstance(v, str):
        return f"the string {v[:30]!r}" + ("…" if len(v) > 30 else "")
    return {list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


class JsonObject:
    """One JSON object being read; every accessor raises ValueError naming the file
    and the field. ``finish()`` refuses keys nobody read."""

    def __init__(self, data, source: str, prefix: str = ""):
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            raise self.error("", f"must be a JSON object, not {describe(data)}")
        self.data = data
        self.read: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str) -> ValueError:
        where = self.name(key) if key else (self.prefix or "the file")
        return ValueError(f"{self.source}: {where} {problem}")

    def keys(self) -> list[str]:
        return list(self.data)

    def get(self, key: str, optional: bool = False):
        self.read.add(key)
        if key not in self.data:
            if optional:
                return MISSING
            raise self.error(key, "is missing")
        return self.data[key]

    def number(self, key: str, low: float | None = None, high: float | None = None,
               strict_low: bool = False, optional: bool = False, null: bool = False):  # fmt: skip
        """A finite number in [low, high]; ``null``: None is allowed too."""
        v = self.get(key, optional)
        if v is MISSING or (null and v is None):
            return v
        return as_number(v, self, key, low, high, strict_low)

    def integer(self, key: str, low: int = 0, high: int = MAX_INT, optional: bool = False):
        v = self.get(key, optional)
        return v if v is MISSING else as_integer(v, self, key, low, high)

    def string(self, key: str, optional: bool = False):
        v = self.get(key, optional)
        if v is MISSING or isinstance(v, str):
            return v
        raise self.error(key, f"must be a string, not {describe(v)}")

    def boolean(self, key: str, optional: bool = False):
        v = self.get(key, optional)
        if v is MISSING or isinstance(v, bool):
            return v
        raise self.error(key, f"must be true or false, not {describe(v)}")

    def array(self, key: str, what: str = "a list") -> list:
        v = self.get(key)
        if not isinstance(v, list):
            raise self.error(key, f"must be {what}, not {describe(v)}")
        return v

    def numbers(self, key: str, low: float | None = None, high: float | None = None):
        v = self.array(key, "a list of numbers")
        return [as_number(x, self, f"{key}[{i}]", low, high) for i, x in enumerate(v)]

    def integers(self, key: str, low: int = 0, high: int = MAX_INT) -> list[int]:
        v = self.array(key, "a list of whole numbers")
        return [as_integer(x, self, f"{key}[{i}]", low, high) for i, x in enumerate(v)]

    def strings(self, key: str) -> list[str]:
        v = self.array(key, "a list of strings")
        for i, x in enumerate(v):
            if not isinstance(x, str):
                raise self.error(f"{key}[{i}]", f"must be a string, not {describe(x)}")
        return list(v)

    def obj(self, key: str, optional: bool = False):
        v = self.get(key, optional)
        return v if v is MISSING else JsonObject(v, self.source, self.name(key))

    def objects(self, key: str) -> list[JsonObject]:
        """A list of objects, each read as a JsonObject named ``key[i]``."""
        v = self.array(key, "a list of objects")
        return [JsonObject(x, self.source, self.name(f"{key}[{i}]")) for i, x in enumerate(v)]

    def check_lengths(self, lists: dict[str, list], of: str, n: int, unit: str = "entries"):
        """Each list of ``lists`` (by field name) has ``n`` items, as the field ``of`` has
        (parallel lists)."""
        for key, v in lists.items():
            if len(v) != n:
                raise self.error(key, f"has {len(v)} {unit}, {of} has {n}")

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.read)
        if extra:
            raise self.error(extra[0], "is not a known field")


def as_number(v, o: JsonObject, key: str, low=None, high=None, strict_low: bool = False) -> float:
    """``v`` as a finite float in [low, high] (> low with ``strict_low``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise o.error(key, f"must be a number, not {describe(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise o.error(key, f"must be a finite number, not {describe(v)}")
    if low is not None and (f < low or (strict_low and f == low)):
        raise o.error(key, f"must be {'>' if strict_low else '>='} {low:g}, not {describe(v)}")
    if high is not None and f > high:
        raise o.error(key, f"must be <= {high:g}, not {describe(v)}")
    return f


def as_integer(v, o: JsonObject, key: str, low: int = 0, high: int = MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise o.error(key, f"must be a whole number, not {describe(v)}")
    if not low <= v <= high:
        raise o.error(key, f"must be between {low} and {high}, not {describe(v)}")
    return v


def check_version(o: JsonObject, current: int, required: bool = False) -> int:
    """The object's ``schema_version`` (1 when an optional one is missing: written
    before the version was recorded).

    Raises:
        ValueError: a version that is not a whole number >= 1, or newer than ``current``.
    """
    v = o.get("schema_version", optional=not required)
    if v is MISSING:
        return 1
    v = as_integer(v, o, "schema_version", low=1)
    if v > current:
        raise o.error("schema_version", f"is {v}: written by a newer minituner (this one "
                      f"reads up to {current})")  # fmt: skip
    return v


def settings_from_json(o: JsonObject, cls, what: str, required: tuple[str, ...] = ()):
    """A settings dataclass (FinetuneConfig, PretrainConfig …) from JSON: each value of
    the JSON type its field's default has (a nested settings dataclass from an object,
    a tuple from a list of strings); ``cls`` itself checks the ranges. ``what`` names
    the settings in messages ("fine-tuning")."""
    defaults = {}
    for f in fields(cls):
        factory = f.default_factory  # type: ignore[misc]
        defaults[f.name] = factory() if callable(factory) else f.default
    kw = {}
    for key in o.keys():
        if key not in defaults:
            raise o.error(key, f"is not a {what} setting")
        default = defaults[key]
        if isinstance(default, bool):
            kw[key] = o.boolean(key)
        elif isinstance(default, int):
            kw[key] = o.integer(key, low=-MAX_INT)
        elif isinstance(default, float) or default is None:  # lr: None means the default
            kw[key] = o.number(key)
        elif isinstance(default, str):
            kw[key] = o.string(key)
        elif is_dataclass(default):
            kw[key] = settings_from_json(o.obj(key), type(default), what)
        else:  # targets: a list of names
            v = o.get(key)
            if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                raise o.error(key, f"must be a list of module names, not {describe(v)}")
            kw[key] = tuple(v)
    for key in required:
        if key not in kw:
            raise o.error(key, "is missing")
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise o.error("", f"is not a valid {what} configuration: {e}") from None


def read_record(path: str | Path, cls, root: str | Path | None = None):
    """``cls.from_json`` of the JSON file at ``path`` (read by :func:`minituner.io.read_json`:
    a regular file, size-capped, depth-limited; inside ``root`` when given).

    Raises:
        ValueError: missing, special or oversized file, invalid JSON or an invalid record
            (naming the file).
    """
    return cls.from_json(read_json(path, root), str(path))
