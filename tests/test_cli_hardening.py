"""The command line under hostile input and bad moments (issue 13): every failure is one
``error:`` line and exit status 2 (130 for Ctrl-C), no traceback, and nothing the user
did not ask to replace is deleted.

Most cases run ``cli.main`` in this process (the same code as ``python -m minituner``);
training is replaced by a function that fails the test, so a check that comes too late
can never write anything (the shipped base model is never at risk).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cli_util import REPO_ROOT, run_minituner

from minituner import pretrain as pretrain_mod
from minituner.checkpoint import load_model
from minituner.cli import main

SHIPPED_BASE = REPO_ROOT / "precomputed" / "base"


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "<dir>"
        for p in sorted(root.rglob("*"))
    }


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert r.returncode == code, (r.returncode, r.stderr)
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Training or writing a base model fails the test: refusals must come before both."""

    def boom(*a, **k):
        raise AssertionError("pretraining started although the output must be refused")

    monkeypatch.setattr(pretrain_mod, "pretrain", boom)
    monkeypatch.setattr(pretrain_mod, "write_base", boom)
    monkeypatch.delenv("MINITUNER_DATA", raising=False)


# ---------------------------------------------------------------- pretrain --out


def test_plain_pretrain_refuses_to_replace_the_shipped_base(capsys, no_training):
    before = snapshot(SHIPPED_BASE)
    r = run_main(capsys, "pretrain", "--preset", "tiny", "--steps", "1")
    assert_user_error(r, "shipped base", "--force", "--out")
    assert snapshot(SHIPPED_BASE) == before
    assert r.stdout == ""


def test_pretrain_refuses_a_non_empty_out(tmp_path, capsys, no_training):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("months of work", encoding="utf-8")
    r = run_main(capsys, "pretrain", "--preset", "tiny", "--steps", "1", "--out", str(out))
    assert_user_error(r, str(out), "not empty", "--force")
    assert (out / "thesis.txt").read_text(encoding="utf-8") == "months of work"


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_pretrain_out_that_is_a_file(tmp_path, capsys, no_training, where):
    f = tmp_path / "notes.txt"
    f.write_text("keep", encoding="utf-8")
    out = f if where == "file" else f / "base"
    r = run_main(capsys, "pretrain", "--steps", "1", "--out", str(out), "--force")
    assert_user_error(r, "is a file")
    assert f.read_text(encoding="utf-8") == "keep"


def test_write_base_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="not empty"):
        pretrain_mod.write_base(tmp_path, None, None, pretrain_mod.PretrainConfig(), {})
    assert (tmp_path / "keep.txt").exists()


def test_pretrain_force_replaces_a_non_empty_out(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "stale.txt").write_text("x", encoding="utf-8")
    r = run_minituner(
        "pretrain",
        *("--preset", "tiny", "--steps", "2", "--batch-size", "8", "--device", "cpu"),
        *("--out", str(out), "--force"),
    )
    assert r.returncode == 0, r.stderr
    assert not (out / "stale.txt").exists()
    model, _, _ = load_model(out)
    assert model.config.n_embd == 32


def test_pretrain_into_an_empty_folder_needs_no_force(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert pretrain_mod.check_out_dir(out) == out
    assert pretrain_mod.check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"

