"""Atomic, pickle-free file helpers (minituner.io): a write goes to a temporary sibling and
is renamed into place, so the final name holds the old file or the new one, never half of
one, and no temporary file is left; JSON refuses NaN/inf; reading a missing or broken
file is a ValueError naming it; a directory is replaced by atomic_directory and put back
by recover_directory. (The run store's save, killed at every point in a forked child:
tests/store/test_store_faults.py.)"""

from __future__ import annotations

import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minituner import io


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def fail_at_call(monkeypatch, k: int):
    """Make os.replace raise from its k-th call on (1-based), as a crash at that rename
    would stop the save there."""
    real, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] >= k:
            raise OSError("crash at this rename")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


# ---------------------------------------------------------------- files
@settings(max_examples=50, deadline=None)
@given(st.text())
def test_a_text_is_written_exactly_and_alone(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("w")
    io.atomic_write_text(d / "f.txt", "old")
    io.atomic_write_text(d / "f.txt", text)
    assert (d / "f.txt").read_bytes() == text.encode("utf-8")
    assert names(d) == ["f.txt"]  # no temporary file left


def test_a_write_creates_its_folder(tmp_path):
    io.atomic_write_text(tmp_path / "a" / "b" / "f.txt", "x")
    assert (tmp_path / "a" / "b" / "f.txt").read_text() == "x"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    io.write_json(path, {"a": 1})
    fail_at_call(monkeypatch, 1)
    with pytest.raises(OSError, match="crash"):
        io.write_json(path, {"a": 2, "b": "x" * 10_000})
    with pytest.raises(OSError, match="crash"):
        io.atomic_write_text(path, "new")
    with pytest.raises(OSError, match="crash"):
        io.save_tensors(tmp_path / "t.safetensors", {"w": torch.ones(3)})
    monkeypatch.undo()
    assert io.read_json(path) == {"a": 1}
    assert names(tmp_path) == ["f.json"]


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": {"y": (0.5, math.inf)}}]
)
def test_json_refuses_a_non_finite_number_and_writes_nothing(tmp_path, value):
    path = tmp_path / "m.json"
    io.write_json(path, {"ok": 1})
    with pytest.raises(ValueError, match="non-finite"):
        io.write_json(path, {"v": value})
    assert io.read_json(path) == {"ok": 1}
    assert names(tmp_path) == ["m.json"]


def test_json_round_trip_keeps_unicode_and_makes_keys_strings(tmp_path):
    path = tmp_path / "m.json"
    io.write_json(path, {"verb": "ĉu", 1: [1, 2.5, None, True], "t": (1, 2)})
    assert io.read_json(path) == {"verb": "ĉu", "1": [1, 2.5, None, True], "t": [1, 2]}
    assert "ĉu" in path.read_text(encoding="utf-8")  # not escaped


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "file not found"), (b"{oops", "is not valid JSON"), (b"\xff\xfe{}", "is not valid JSON"),
     (b"[1, 2]", "should hold a JSON object"), (b"null", "should hold a JSON object")],
)  # fmt: skip
def test_a_missing_or_broken_json_file_is_a_value_error_naming_it(tmp_path, content, needle):
    path = tmp_path / "broken.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=needle) as e:
        io.read_json(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_deeply_nested_json_file_is_a_value_error(tmp_path):
    """issue 23, item 3: 100,000 nested lists are one ValueError naming the file."""
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="deep.json.*nested"):
        io.read_json(path)


def test_json_nested_up_to_the_limit_is_read(tmp_path):
    depth = io.MAX_JSON_DEPTH
    path = tmp_path / "ok.json"
    path.write_text('{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + ', "s": "[[[[{{{{"}')
    assert io.read_json(path)["s"] == "[[[[{{{{"
    path.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ValueError, match="nested"):
        io.read_json(path)


@contextmanager
def deadline(seconds: int):
    """Fail (rather than hang) when the block has not finished within ``seconds``."""

    def alarm(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("reader", [io.read_json, io.load_tensors])
def test_a_fifo_is_refused_without_blocking(tmp_path, reader):
    """issue 23, item 4: a FIFO (nobody writing) is a ValueError at once, not a hang."""
    path = tmp_path / "metrics.json"
    os.mkfifo(path)
    with deadline(20), pytest.raises(ValueError, match="metrics.json.*not a regular file"):
        reader(path)


@pytest.mark.parametrize("reader", [io.read_json, io.load_tensors])
def test_a_link_to_a_device_is_refused(tmp_path, reader):
    """issue 23, item 4: a symlink to /dev/zero is refused before a byte is read (it
    used to be read until memory ran out)."""
    path = tmp_path / "metrics.json"
    path.symlink_to("/dev/zero")
    with deadline(20), pytest.raises(ValueError, match="metrics.json.*not a regular file"):
        reader(path)


@pytest.mark.parametrize(
    ("reader", "limit"), [(io.read_json, "MAX_JSON_BYTES"), (io.load_tensors, "MAX_TENSOR_BYTES")]
)
def test_a_file_over_the_size_cap_is_refused(tmp_path, monkeypatch, reader, limit):
    monkeypatch.setattr(io, limit, 1000)
    path = tmp_path / "big.json"
    path.write_text('{"a": "' + "x" * 1000 + '"}')
    with pytest.raises(ValueError, match="big.json.*larger than"):
        reader(path)


def test_the_caps_are_well_above_the_shipped_files():
    shipped = Path(__file__).resolve().parent.parent / "precomputed"
    sizes = {
        ext: max(p.stat().st_size for p in shipped.rglob(f"*.{ext}"))
        for ext in ("json", "safetensors")
    }
    assert io.MAX_JSON_BYTES >= 10 * sizes["json"]
    assert io.MAX_TENSOR_BYTES >= 10 * sizes["safetensors"]


def test_a_symlink_leaving_the_root_is_refused(tmp_path):
    """issue 23, item 4: inside a store (``root``), a link to a file outside it is
    refused; a link that stays inside is read."""
    root, outside = tmp_path / "store", tmp_path / "secret.json"
    (root / "run").mkdir(parents=True)
    outside.write_text('{"a": 1}')
    (root / "run" / "inside.json").write_text('{"b": 2}')
    (root / "run" / "out.json").symlink_to(outside)
    (root / "run" / "in.json").symlink_to(root / "run" / "inside.json")
    with pytest.raises(ValueError, match="out.json.*outside"):
        io.read_json(root / "run" / "out.json", root=root)
    assert io.read_json(root / "run" / "in.json", root=root) == {"b": 2}
    assert io.read_json(root / "run" / "out.json") == {"a": 1}  # no root: no containment


def test_a_huge_integer_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "n.json"
    path.write_text('{"a": ' + "9" * 10_000 + "}")
    with pytest.raises(ValueError, match="n.json"):
        io.read_json(path)


def test_tensors_round_trip_contiguous_on_the_cpu(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": t.T, "h": torch.ones(2, dtype=torch.bfloat16)}  # a non-contiguous view
    io.save_tensors(tmp_path / "a.safetensors", tensors, {"k": "v"})
    back = io.load_tensors(tmp_path / "a.safetensors")
    assert back.keys() == tensors.keys()
    assert torch.equal(back["t"], t.T) and back["h"].dtype == torch.bfloat16
    assert names(tmp_path) == ["a.safetensors"]


@pytest.mark.parametrize("content", [None, b"", b"not a safetensors file", b"\x08" + b"\0" * 7])
def test_a_missing_or_corrupt_tensor_file_is_a_value_error(tmp_path, content):
    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="w.safetensors"):
        io.load_tensors(path)


def test_a_truncated_tensor_file_is_a_value_error(tmp_path):
    path = tmp_path / "w.safetensors"
    io.save_tensors(path, {"w": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        io.load_tensors(path)


# ---------------------------------------------------------------- directories
def build(final: Path, marker: str) -> None:
    with io.atomic_directory(final) as tmp:
        for name in ("a.txt", "b.txt"):
            (tmp / name).write_text(marker)


def contents(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(d.iterdir())}


def test_a_directory_is_built_aside_and_put_in_place(tmp_path):
    final = tmp_path / "run"
    build(final, "old")
    build(final, "new")
    assert contents(final) == {"a.txt": "new", "b.txt": "new"}
    assert names(tmp_path) == ["run"]


def test_an_error_inside_the_block_leaves_the_directory_untouched(tmp_path):
    final = tmp_path / "run"
    build(final, "old")
    with pytest.raises(RuntimeError), io.atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("the save failed")
    assert contents(final) == {"a.txt": "old", "b.txt": "old"}
    assert names(tmp_path) == ["run"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_save_stopped_at_any_rename_leaves_old_or_new_after_recovery(tmp_path, monkeypatch, k):
    final = tmp_path / "run"
    build(final, "old")
    calls = fail_at_call(monkeypatch, k)  # A: final -> .old, B: tmp -> final, C: .old -> .trash
    with pytest.raises(OSError, match="crash"):
        build(final, "new")
    monkeypatch.undo()
    assert calls[0] == k
    assert io.recover_directory(final)
    assert contents(final) in ({"a.txt": "old", "b.txt": "old"}, {"a.txt": "new", "b.txt": "new"})
    build(final, "next")  # the next save works and cleans up
    assert contents(final) == {"a.txt": "next", "b.txt": "next"}
    assert names(tmp_path) == ["run"]


def test_recover_puts_back_a_directory_left_under_old(tmp_path):
    final = tmp_path / "run"
    build(final, "old")
    os.replace(final, tmp_path / ".run.old-999999999")  # killed between renames A and B
    assert io.recover_directory(final)
    assert contents(final) == {"a.txt": "old", "b.txt": "old"}
    assert names(tmp_path) == ["run"]
    assert not io.recover_directory(tmp_path / "never-saved")


def test_leftovers_of_dead_saves_go_and_a_live_one_stays(tmp_path):
    final = tmp_path / "run"
    build(final, "old")
    dead = 999_999_999  # no such process
    for name in (f".run.tmp-{dead}-abc", f".run.trash-{dead}", f".other.tmp-{dead}-x"):
        (tmp_path / name).mkdir()
    live = tmp_path / f".run.tmp-{os.getpid()}-xyz"  # a save still running in this process
    live.mkdir()
    (tmp_path / "unrelated.tmp").mkdir()
    build(final, "new")
    assert names(tmp_path) == sorted(["run", live.name, "unrelated.tmp"])
