"""Atomic, pickle-free file helpers: JSON and safetensors only.

Writes go to a temporary file in the same directory and are renamed into place, so an
interrupted write never leaves a half-written file under the final name.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ atomic directories
# A directory is replaced in three renames, each atomic, under a lock on its parent
# directory (flock: released by the kernel when a process dies):
#   A  final -> .<name>.old-<pid>      (only when final exists)
#   B  .<name>.tmp-<pid>-<x> -> final  (the new directory, built beforehand)
#   C  .<name>.old-<pid> -> .<name>.trash-<pid>, then removed
# A crash between A and B leaves final missing and the complete old directory under
# .old: the next save or read puts it back (recover_directory). A crash at any other
# point leaves final complete (old or new). ``.old`` is only ever a complete directory;
# a deletion cut short happens under ``.trash`` or ``.tmp``, removed by the next save.
# Readers hold the same lock shared while they read an entry's files (directory_lock),
# so they never see a directory half-way through a swap.
LEFTOVER_RE = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)(?:-.*)?")
STALE_S = 24 * 3600.0  # a temporary directory this old is a leftover whatever its pid says


@contextmanager
def directory_lock(parent: str | os.PathLike, shared: bool = False) -> Iterator[None]:
    """Hold the lock of a folder whose entries are replaced by :func:`atomic_directory`:
    exclusive for a swap, shared for reading an entry's files (no swap happens
    meanwhile). A folder that cannot be opened or locked is used without the lock."""
    try:
        fd = os.open(parent, os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            except OSError:  # a filesystem without flock
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _discard(parent: Path, entry: Path, name: str) -> None:
    """Remove a complete directory: renamed to .trash first, so a removal cut short
    never leaves a partial directory under a name that could be restored."""
    trash = parent / f".{name}.trash-{os.getpid()}"
    _remove(trash)
    os.replace(entry, trash)
    _remove(trash)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _clean(parent: Path, only: str | None = None) -> None:
    """Under the parent's lock: put back a lone .old directory, remove the other
    leftovers of saves that can no longer finish (their process died, or long ago)."""
    for entry in sorted(parent.iterdir()):
        m = LEFTOVER_RE.fullmatch(entry.name)
        if m is None or (only is not None and m["name"] != only):
            continue
        final, kind, pid = parent / m["name"], m["kind"], int(m["pid"])
        if kind == "old":
            if _exists(final):
                _discard(parent, entry, m["name"])
            else:
                os.replace(entry, final)  # the save died between its renames: undo it
        elif kind == "trash":
            _remove(entry)
        elif only is None:
            try:
                age = time.time() - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if not _pid_alive(pid) or age > STALE_S:
                _remove(entry)


def recover_directory(final: str | os.PathLike) -> bool:
    """Put back ``final`` if a save died between its two renames (``final`` missing,
    its ``.old`` present); waits for a save in progress. Returns whether ``final``
    exists afterwards. A read-only parent is left as it is.
    """
    final = Path(final)
    if _exists(final):
        return True
    parent = final.parent
    try:
        if any(
            (m := LEFTOVER_RE.fullmatch(p.name)) and m["name"] == final.name and m["kind"] == "old"
            for p in parent.iterdir()
        ):
            with directory_lock(parent):
                _clean(parent, only=final.name)
    except OSError:
        pass
    return _exists(final)


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then put it in place of ``final``.

    Crash-safe at every point and safe against concurrent saves of the same ``final``
    (see the comment above): ``final`` always holds the old or the new directory,
    complete, or will again at the next save or :func:`recover_directory`. An exception
    inside the block leaves ``final`` untouched. Leftovers of killed saves in the same
    parent are removed by the next save. Linux and macOS (``fcntl.flock``).
    """
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=parent))
    try:
        yield tmp
        with directory_lock(parent):
            _clean(parent)
            old = parent / f".{final.name}.old-{os.getpid()}"
            if _exists(final):
                os.replace(final, old)  # A
            os.replace(tmp, final)  # B
            if _exists(old):
                _discard(parent, old, final.name)  # C
    finally:
        if _exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _json_safe(obj):
    """Refuse NaN/inf: a NaN must never reach the store."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"refusing to write a non-finite number ({obj}) to JSON")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=1, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------ hardened reading
# Every file read from the store or the data folder goes through read_bytes: a regular
# file only (a FIFO, a device or a directory is refused before it is opened, and opened
# with O_NONBLOCK so that one swapped in meanwhile cannot block either), at most a cap of
# bytes, and, given the ``root`` of a store, never a symlink resolving outside it.
# JSON is also refused when nested deeper than MAX_JSON_DEPTH. The caps are far above
# the shipped files (largest JSON ~240 kB, largest safetensors ~3.3 MB; see tests).
MAX_JSON_BYTES = 8 * 2**20
MAX_JSON_DEPTH = 64  # the shipped files nest 8 deep at most
MAX_TENSOR_BYTES = 2**30
_STRING_RE = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]++")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"),
)  # fmt: skip


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def check_inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` with every symlink resolved, which must lie inside ``root`` (resolved too).

    Raises:
        ValueError: ``path`` resolves outside ``root`` (a symlink leaving the store).
    """
    path = Path(path)
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != top and top not in real.parents:
        raise ValueError(f"{path} is a link to {real}, outside {top}: refused")
    return real


def read_bytes(path: str | os.PathLike, limit: int, root: str | os.PathLike | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; never blocks.

    Raises:
        ValueError: a missing file, not a regular file (FIFO, device, directory …), a
            file over ``limit``, a symlink leaving ``root`` (when given), or a read error;
            one line naming the file.
    """
    path = Path(path)
    try:
        if root is not None:
            check_inside(path, root)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file (it is {_kind(st.st_mode)})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)  # what was opened, if the file was replaced meanwhile
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{path} is not a regular file (it is {_kind(st.st_mode)})")
            if st.st_size > limit:
                raise ValueError(f"{path} is larger than {limit:,} bytes ({st.st_size:,}): refused")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(limit + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ValueError(f"file not found: {path}") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) > limit:  # grew while read
        raise ValueError(f"{path} is larger than {limit:,} bytes: refused")
    return data


def json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do
    not count), without recursion."""
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def parse_json(text: str, source: str):
    """Any JSON value from ``text`` (``source`` names it in messages), nested at most
    MAX_JSON_DEPTH deep.

    Raises:
        ValueError: invalid or too deeply nested JSON (one line, naming ``source``).
    """
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"{source} is nested deeper than {MAX_JSON_DEPTH} levels: refused")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a 5000-digit integer
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{source} is not valid JSON ({msg[:200]})") from None


def read_json(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict:
    """Read a JSON object from a regular file of at most MAX_JSON_BYTES, nested at most
    MAX_JSON_DEPTH deep (:func:`read_bytes`: ``root`` is the store it must stay inside).

    Raises:
        ValueError: missing, special, too large or unreadable file, invalid or too deeply
            nested JSON, not an object (one line, naming the file).
    """
    path = Path(path)
    try:
        text = read_bytes(path, MAX_JSON_BYTES, root).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    data = parse_json(text, str(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return data


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_tensors(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle) of at most MAX_TENSOR_BYTES, read through
    :func:`read_bytes` (a regular file, inside ``root`` when given).

    Raises:
        ValueError: missing, special, too large or corrupt file.
    """
    path = Path(path)
    data = read_bytes(path, MAX_TENSOR_BYTES, root)
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is not a valid safetensors file ({msg[:200]})") from None


def check_tensors(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``tensors`` if there is at least one and each holds floating-point values, at
    least one, all finite.

    Raises:
        ValueError: no tensor, or one that is empty, not floating point, or holds NaN or
            infinite values (naming ``source`` and the tensor).
    """
    if not tensors:
        raise ValueError(f"{source} holds no tensors")
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{source}: tensor {key} holds {t.dtype} values, not floating point")
        if t.numel() == 0:
            raise ValueError(f"{source}: tensor {key} is empty (shape {tuple(t.shape)})")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source}: tensor {key} holds {bad} NaN or infinite values")
    return tensors
