"""The JSON-reading toolkit of every record (minituner.schema): errors name the file and
the field, versions are checked, settings dataclasses read from their defaults' types."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from minituner.schema import (
    MISSING,
    JsonObject,
    check_version,
    describe,
    read_record,
    settings_from_json,
)


def test_accessors_name_file_and_field():
    o = JsonObject({"a": {"b": [1, "x"]}, "n": math.inf, "s": 3}, "f.json")
    inner = o.obj("a")
    with pytest.raises(ValueError, match=r"^f.json: a.b\[1\] must be a number, not the string"):
        inner.numbers("b")
    with pytest.raises(ValueError, match="^f.json: n must be a finite number"):
        o.number("n")
    with pytest.raises(ValueError, match="^f.json: s must be a string, not the number 3"):
        o.string("s")
    with pytest.raises(ValueError, match="^f.json: gone is missing"):
        o.get("gone")
    assert o.integer("gone", optional=True) is MISSING
    with pytest.raises(ValueError, match="^f.json: the file must be a JSON object, not a list"):
        JsonObject([], "f.json")


def test_finish_refuses_fields_nobody_read():
    o = JsonObject({"a": 1, "b": 2}, "f.json", "top")
    o.integer("a")
    with pytest.raises(ValueError, match="^f.json: top.b is not a known field"):
        o.finish()


def test_numbers_ranges_and_nulls():
    o = JsonObject({"p": 0.0, "q": None, "t": True}, "f.json")
    with pytest.raises(ValueError, match="must be > 0"):
        o.number("p", 0.0, strict_low=True)
    assert o.number("q", null=True) is None
    with pytest.raises(ValueError, match="must be a number, not a boolean"):
        o.number("t")
    assert describe(None) == "null" and describe({}) == "an object"


def test_versions():
    assert check_version(JsonObject({}, "f"), 1) == 1  # written before the version was
    with pytest.raises(ValueError, match="f: schema_version is missing"):
        check_version(JsonObject({}, "f"), 1, required=True)
    with pytest.raises(ValueError, match="f: schema_version is 3: written by a newer"):
        check_version(JsonObject({"schema_version": 3}, "f"), 2)


@dataclass
class Inner:
    k: int = 1


@dataclass
class Settings:
    name: str = "x"
    lr: float | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.inner.k < 0:
            raise ValueError("k must be >= 0")


def test_settings_from_json_reads_nested_settings_and_checks_them():
    s = settings_from_json(JsonObject({"lr": 1, "inner": {"k": 2}}, "f"), Settings, "test")
    assert s == Settings(lr=1.0, inner=Inner(2))
    with pytest.raises(ValueError, match="f: colour is not a test setting"):
        settings_from_json(JsonObject({"colour": 1}, "f"), Settings, "test")
    with pytest.raises(ValueError, match="f: name is missing"):
        settings_from_json(JsonObject({}, "f"), Settings, "test", required=("name",))
    with pytest.raises(ValueError, match="f: the file is not a valid test configuration: k must"):
        settings_from_json(JsonObject({"inner": {"k": -1}}, "f"), Settings, "test")


class Point:
    @classmethod
    def from_json(cls, data, source: str) -> tuple[str, float]:
        o = JsonObject(data, source)
        return source, o.number("x")


def test_read_record_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        read_record(tmp_path / "x.json", Point)
    (tmp_path / "p.json").write_text('{"x": 2}')
    assert read_record(tmp_path / "p.json", Point) == (str(tmp_path / "p.json"), 2.0)
