"""Helpers of the typed-record tests (tests/store, tests/experiments): change one field of
a record's JSON, and check that reading it is refused naming the file and the field."""

from __future__ import annotations

import pytest

DELETE = object()  # set_field's value that removes the field


def set_field(path: list, value):
    """A change that sets (or with DELETE removes) the field at ``path`` of a JSON object."""

    def change(d):
        for k in path[:-1]:
            d = d[k]
        if value is DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return change


def assert_refused(read, data, source: str, field: str) -> None:
    """``read(data, source)`` raises a one-line ValueError naming ``source``, then
    ``field``."""
    with pytest.raises(ValueError) as e:
        read(data, source)
    msg = str(e.value)
    assert msg.startswith(f"{source}: "), msg
    assert field in msg.split(": ", 1)[1], msg
    assert "\n" not in msg
