"""Fixtures of the CLI tests: a copy of the base model to point --out at, and training
replaced by a function that fails the test, so a check that comes too late can never
write anything (the shipped base model is never at risk)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from minituner.minigpt import pretrain as pretrain_mod
from minituner.paths import base_dir


@pytest.fixture
def base_copy(tmp_path) -> Path:
    """A copy of the shipped base directory for --out, so nothing real can be overwritten."""
    out = tmp_path / "base"
    shutil.copytree(base_dir(), out)
    return out


@pytest.fixture
def no_training(monkeypatch):
    """Training or writing a base model fails the test: refusals must come before both."""

    def boom(*a, **k):
        raise AssertionError("pretraining started although the output must be refused")

    monkeypatch.setattr(pretrain_mod, "pretrain", boom)
    monkeypatch.setattr(pretrain_mod, "write_base", boom)
    monkeypatch.delenv("MINITUNER_DATA", raising=False)


@pytest.fixture
def no_finetune(monkeypatch):
    """Fine-tuning fails the test: a refusal must come before it."""
    from minituner.finetune import loop

    def boom(*a, **k):
        raise AssertionError("fine-tuning started although it must be refused first")

    for name in ("finetune", "Training"):
        monkeypatch.setattr(loop, name, boom, raising=False)
