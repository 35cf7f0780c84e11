"""Helpers of the CLI tests that run ``minituner.cli.main`` in this process (the same code
as ``python -m minituner``, ~100x faster than a subprocess)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from minituner.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (and the names of dirs)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "<dir>"
        for p in sorted(root.rglob("*"))
    }


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """cli.main in this process, returned like a finished subprocess."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    except KeyboardInterrupt:  # would end the whole test session
        pytest.fail("KeyboardInterrupt escaped cli.main")
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """One ``error: ...`` line on stderr holding every needle, no traceback, ``code``."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (
        f"expected one 'error: ...' line on stderr, got:\n{r.stderr}"
    )
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert r.returncode == code, (r.returncode, r.stderr)
    return lines[0]
