"""Shared fixtures.

``base`` loads the shipped base model (precomputed/base/) once per session; ``corpus`` is
the default verb corpus (build_corpus is cached, so this costs one build). Both are
shared: tests that change a model must work on a copy (``copy.deepcopy(base.model)``).

Torch runs single-threaded in tests (override with MINITUNER_TEST_THREADS): the models
are small, and on a busy 2-core machine two intra-op threads waiting on each other made
a 20-token generation of the tiny model ~200x slower than one thread did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from minituner import paths
from minituner.minigpt.checkpoint import load_model
from minituner.minigpt.corpus import Corpus, CorpusConfig, build_corpus
from minituner.minigpt.model import MiniGPT
from minituner.minigpt.tokenizer import CharTokenizer
from minituner.paths import base_dir

REPO_ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(int(os.environ.get("MINITUNER_TEST_THREADS", "1")))


class Base(NamedTuple):
    model: MiniGPT  # eval mode, on the CPU
    tok: CharTokenizer
    cfg: dict  # config.json: {"model": ..., "corpus_version": ..., "pretrain": ...}


@pytest.fixture(scope="session")
def base() -> Base:
    model, tok, cfg = load_model(base_dir(), device="cpu")
    return Base(model, tok, cfg)


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return build_corpus(CorpusConfig())


@pytest.fixture
def no_data_env(monkeypatch):
    """No $MINITUNER_DATA: the data folder is the checkout's precomputed/."""
    monkeypatch.delenv(paths.ENV_VAR, raising=False)


# ---------------------------------------------------------------- app tests (AppTest)
APP_TIMEOUT = 180  # seconds: a live run on a loaded 2-core machine


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """Only the shipped runs in the store; the user cache is a fresh, empty folder."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MINITUNER_CACHE", str(d))
    return d


@pytest.fixture(scope="session")
def private_queue_dir(tmp_path_factory) -> Path:
    """Where the app tests' server keeps its run queue: this test session's own folder,
    never the user's cache (other processes on the machine, a running app or another
    test session, would otherwise take the tests' waiting jobs)."""
    return tmp_path_factory.mktemp("queue")


@pytest.fixture
def idle_trainer(monkeypatch, private_queue_dir):
    """The app server's live run, left idle after the test (whatever happened); live runs
    evaluate a few items per split (MINITUNER_EVAL_LIMIT reaches the training child).
    The server's queue file is this session's own (:func:`private_queue_dir`)."""
    from app import data, live  # Streamlit is imported only by the tests that use the app

    monkeypatch.setenv("MINITUNER_EVAL_LIMIT", "4")
    trainer = data.get_trainer()
    if trainer.queue.path.parent != private_queue_dir:  # made earlier on another cache
        trainer.abort()
        trainer.join(APP_TIMEOUT)
        old_feed = live.feed()
        if old_feed is not None:
            old_feed.close()
        trainer.close()
        data.get_trainer.clear()
        live.feed.clear()
        with monkeypatch.context() as m:
            m.setenv("MINITUNER_CACHE", str(private_queue_dir))
            trainer = data.get_trainer()
    trainer.abort()
    trainer.join(APP_TIMEOUT)
    yield trainer
    trainer.abort()
    if not trainer.join(APP_TIMEOUT):
        trainer.kill()
        trainer.join(APP_TIMEOUT)
