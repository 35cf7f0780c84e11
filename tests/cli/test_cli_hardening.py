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
import sys
from pathlib import Path

import pytest
import torch
from cli_util import REPO_ROOT, run_minituner

from minituner import cli
from minituner.cli import main
from minituner.minigpt import pretrain as pretrain_mod
from minituner.minigpt.checkpoint import load_model
from minituner.minigpt.trainutil import resolve_device
from minituner.paths import base_dir

SHIPPED_BASE = base_dir()


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
    except KeyboardInterrupt:  # would end the whole test session
        pytest.fail("KeyboardInterrupt escaped cli.main")
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


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_pretrain_seed_out_of_range(tmp_path, capsys, no_training, seed):
    r = run_main(capsys, "pretrain", "--seed", seed, "--out", str(tmp_path / "b"))
    assert_user_error(r, "seed", seed)


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


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cuda:99", "cpu:3", "tpu9", ""])
def test_devices_torch_knows_but_cannot_train_on_are_one_line(
    tmp_path, capsys, no_training, device
):
    out = tmp_path / "b"
    r = run_main(capsys, "pretrain", "--steps", "1", "--out", str(out), "--device", device)
    assert_user_error(r, repr(device))
    assert not out.exists()


def test_finetune_refuses_an_unknown_device_before_loading_anything(capsys, no_finetune):
    assert_user_error(run_main(capsys, "finetune", "--device", "mps", "--no-save"), "'mps'")


def test_the_devices_that_work():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


# ---------------------------------------------------------------- the run cache


@pytest.fixture
def no_finetune(monkeypatch):
    """Fine-tuning fails the test: a refusal must come before it."""
    from minituner.finetune import loop as train

    def boom(*a, **k):
        raise AssertionError("fine-tuning started although it must be refused first")

    for name in ("finetune", "Training"):
        monkeypatch.setattr(train, name, boom, raising=False)


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_a_cache_that_cannot_hold_runs_is_reported_before_training(
    tmp_path, capsys, monkeypatch, no_finetune, where
):
    f = tmp_path / "cache"
    f.write_text("not a folder", encoding="utf-8")
    cache = f if where == "file" else f / "runs"
    monkeypatch.setenv("MINITUNER_CACHE", str(cache))
    r = run_main(capsys, "finetune", "--steps", "1", "--force", "--device", "cpu")
    assert_user_error(r, str(cache), "cannot store runs")
    assert r.stdout == ""
    assert f.read_text(encoding="utf-8") == "not a folder"


# ---------------------------------------------------------------- Ctrl-C and surprises


def test_ctrl_c_while_building_the_parser(capsys, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupt)
    assert_user_error(run_main(capsys, "runs"), "interrupted", code=130)


def test_ctrl_c_while_loading_the_base_model(capsys, monkeypatch, no_finetune, tmp_path):
    from minituner.finetune import loop as train

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_base", interrupt)
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path))
    r = run_main(capsys, "finetune", "--device", "cpu", "--force")
    assert_user_error(r, "interrupted", code=130)


CTRL_C_AT_IMPORT = """
import sys

class CtrlC:  # the user presses Ctrl-C while torch is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["minituner", "runs"]
"""
START_UPS = {
    "python -m minituner": "import runpy\nrunpy.run_module('minituner', run_name='__main__')",
    "console script": "from minituner.cli import main\nsys.exit(main())",
}


@pytest.mark.parametrize("start", START_UPS.values(), ids=list(START_UPS))
def test_ctrl_c_during_start_up_is_one_line(start):
    r = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_IMPORT + start],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_user_error(r, "interrupted", code=130)


def test_an_unexpected_error_is_one_line_too(capsys, monkeypatch):
    from minituner.minigpt import trainutil

    def broken(device):
        raise RuntimeError("something deep\nbroke")

    monkeypatch.setattr(trainutil, "resolve_device", broken)
    monkeypatch.delenv("MINITUNER_DEBUG", raising=False)
    r = run_main(capsys, "finetune", "--no-save")
    assert_user_error(r, "RuntimeError", "something deep broke", "MINITUNER_DEBUG")


def test_an_os_error_is_one_line(capsys, monkeypatch):
    from minituner.minigpt import trainutil

    def denied(device):
        raise PermissionError(13, "Permission denied", "/somewhere")

    monkeypatch.setattr(trainutil, "resolve_device", denied)
    assert_user_error(run_main(capsys, "finetune", "--no-save"), "Permission denied")


# ---------------------------------------------------------------- MINITUNER_TORCH_THREADS


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_cli_honours_minituner_torch_threads(capsys, monkeypatch, threads_restored):
    torch.set_num_threads(1)
    monkeypatch.setenv("MINITUNER_TORCH_THREADS", "3")
    run_main(capsys, "finetune", "--device", "mps", "--no-save")  # fails after the threads
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "99999"])
def test_a_bad_thread_count_is_one_line(capsys, monkeypatch, threads_restored, value):
    monkeypatch.setenv("MINITUNER_TORCH_THREADS", value)
    r = run_main(capsys, "finetune", "--device", "mps", "--no-save")
    assert_user_error(r, "MINITUNER_TORCH_THREADS", repr(value))
