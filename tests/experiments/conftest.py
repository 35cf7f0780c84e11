"""Fixtures of the experiments' tests: the shipped base model and run store, and the
shipped summary, as its typed record and as the file's JSON."""

from __future__ import annotations

import json

import pytest

from minituner.experiments.record import ExperimentsRecord, read_experiments
from minituner.finetune.result import Base, load_base
from minituner.paths import experiments_file, runs_dir
from minituner.store.runs import RunStore


@pytest.fixture(scope="module")
def fbase() -> Base:
    return load_base()


@pytest.fixture(scope="module")
def store() -> RunStore:
    return RunStore([runs_dir()], save_root=runs_dir())


@pytest.fixture(scope="module")
def shipped() -> ExperimentsRecord:
    return read_experiments(experiments_file())


@pytest.fixture(scope="module")
def shipped_json() -> dict:
    return json.loads(experiments_file().read_text(encoding="utf-8"))
