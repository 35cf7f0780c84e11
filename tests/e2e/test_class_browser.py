"""Issue 25's acceptance in a real browser: a class on one server.

`streamlit run app/main.py` with ``MINITUNER_MAX_RUNS=1`` (one run trains at a time),
driven by Debian's Chromium through Playwright with three browser contexts: three
learners, each with their own cookie (owner token). They press *Train live* with
different configurations one right after the other: the first trains, the second and
third wait and see their places in line (1 and 2) and no one else's run. The third
learner closes their browser while waiting: the run still trains and is stored. The
first learner's Stop ends only her run (it is long, so that the others surely wait
meanwhile); the second learner's tab then follows its own run to "Training finished",
and so does the first learner's next, short run. The Class page lists every run with
its outcome. The other runs are short (15-30 steps, 4 evaluation items per split): the
machine's cores are shared.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from test_browser import (  # noqa: F401 - the fixtures are used by name
    CHROMIUM,
    SERVER_CACHE,
    VIEWPORT,
    _assert_no_errors,
    _require,
    _settle,
    _shot,
    browser,
    live_progress,
    serve_app,
)

pytestmark = pytest.mark.e2e

RUN_S = 420  # the longest a short run may take on a busy 2-core machine, queue included
QUERIES = {  # three learners, three configurations; ana's first run is long: she stops it
    "ana": "method=lora&r=2&alpha=4&targets=q,v&lr=0.005&steps=2000&seed=7101",
    "ben": "method=lora&r=4&alpha=8&targets=q,v&lr=0.005&steps=30&seed=7102",
    "cho": "method=lora&r=8&alpha=16&targets=q,v&lr=0.005&steps=15&seed=7103",
}
SHORT = "method=lora&r=2&alpha=4&targets=q,v&lr=0.005&steps=15&seed=7104"  # ana's second


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server that trains one run at a time (K = 1), short evaluations."""
    _require(CHROMIUM.exists(), f"{CHROMIUM} is missing")
    env = {"MINITUNER_MAX_RUNS": "1", "MINITUNER_EVAL_LIMIT": "4"}
    with serve_app(tmp_path_factory.mktemp("e2e_class"), env) as url:
        yield url


def _learner(chromium, server: str, query: str):
    pg = chromium.new_context(viewport=VIEWPORT).new_page()
    pg.set_default_timeout(60_000)
    pg.goto(f"{server}/train?{query}")
    _settle(pg, "Train")
    pg.wait_for_function("document.cookie.includes('minituner_owner=')", timeout=30_000)
    return pg


def _header(pg, word: str) -> str:
    """The text of the run header that starts with ``word`` (waits for it)."""
    h = pg.get_by_role("heading", name=re.compile(word)).first
    h.wait_for(timeout=RUN_S * 1000)
    return h.inner_text()


def _waiting_text(pg) -> str:
    box = pg.locator(".live-panel .live-waiting").first
    box.wait_for(timeout=60_000)
    return box.inner_text()


def _follow(pg, end: str, moves: int = 0) -> list[str]:
    """The progress texts a tab showed until ``end`` appears (or, with ``moves``, until
    the progress has shown that many different steps)."""
    seen: list[str] = []
    done = pg.get_by_text(end)
    deadline = time.time() + RUN_S
    while time.time() < deadline and done.count() == 0:
        bar = live_progress(pg)
        try:
            text = bar.first.inner_text(timeout=1000) if bar.count() else ""
        except Exception:  # noqa: BLE001 - the element is replaced on each poll
            text = ""
        if text.startswith("step") and (not seen or seen[-1] != text):
            seen.append(text)
        if moves and len(_steps(seen)) >= moves:
            return seen
        pg.wait_for_timeout(250)
    done.first.wait_for(timeout=10_000)
    return seen


def _steps(seen: list[str]) -> set[str]:
    return {t.split("·")[0].strip() for t in seen}


def _stored_seeds() -> set[int]:
    from minituner.store.runs import RunStore

    return {r.config.finetune.seed for r in RunStore([Path(SERVER_CACHE["path"])]).list()}


def test_a_class_of_three_queues_follows_its_own_runs_and_sees_them_all(server, browser):  # noqa: F811
    ana, ben, cho = (_learner(browser, server, QUERIES[n]) for n in ("ana", "ben", "cho"))
    try:
        for pg in (ana, ben, cho):  # one right after the other
            pg.get_by_role("button", name="Train live").click()
            pg.wait_for_timeout(300)
        # K = 1: the first trains, the second and third wait, 1 and 2 in line
        assert "seed 7101" in _header(ana, "Training live")
        ben_header = _header(ben, "Waiting to train")
        assert "LoRA r=4" in ben_header and "seed 7102" in ben_header
        assert "next in line" in _waiting_text(ben) and "starts in about" in _waiting_text(ben)
        assert "seed 7103" in _header(cho, "Waiting to train")
        assert "2 in line" in _waiting_text(cho)
        for pg in (ben, cho):  # a waiting tab shows only its own run, with its own Stop
            assert pg.get_by_role("heading", name=re.compile("Training live")).count() == 0
            assert pg.locator(".st-key-train_stop button").count() == 1
            _assert_no_errors(pg, "train (waiting)")
        _shot(cho, "class_waiting")
        cho.context.close()  # the third learner leaves while waiting: the run stays

        seen = _follow(ana, "Training stopped", moves=2)
        assert len(_steps(seen)) >= 2, f"ana's progress never moved: {seen}"
        ana.locator(".st-key-train_stop button").click()  # Stop: only ana's own run
        ana.get_by_text("Training stopped").first.wait_for(timeout=60_000)
        _assert_no_errors(ana, "train (ana stopped)")

        # ben's turn: its tab noticed by itself, and follows its run to the end
        assert "seed 7102" in _header(ben, "Training live")
        seen = _follow(ben, "Training finished")
        assert len(_steps(seen)) >= 2, f"ben's progress never moved: {seen}"
        assert ben.get_by_text("Training stopped").count() == 0  # ana's Stop was not ben's
        _assert_no_errors(ben, "train (ben finished)")

        # ana trains a short run of her own (after cho's, which trains with its tab closed)
        ana.goto(f"{server}/train?{SHORT}")
        _settle(ana, "Train")
        ana.get_by_role("button", name="Train live").click()
        _follow(ana, "Training finished")
        _assert_no_errors(ana, "train (ana finished)")

        # cho's closed tab did not lose its run: it trained and is stored
        deadline = time.time() + RUN_S
        while 7103 not in _stored_seeds() and time.time() < deadline:
            time.sleep(1)
        stored = _stored_seeds()
        assert {7102, 7103, 7104} <= stored and 7101 not in stored, stored

        ben.goto(f"{server}/class")
        _settle(ben, "Class")
        table = ben.locator('[data-testid="stTable"]').first
        table.wait_for()
        text = table.inner_text()
        lines = [" ".join(tr.inner_text().split()) for tr in table.locator("tr").all()]
        rows = {seed: line for line in lines for seed in ("7101", "7102", "7103", "7104")
                if f"seed={seed}" in line}  # fmt: skip
        assert set(rows) == {"7101", "7102", "7103", "7104"}, text
        assert "stopped" in rows["7101"] and "(you)" in rows["7102"], text
        assert all("finished" in rows[s] for s in ("7102", "7103", "7104")), text
        _assert_no_errors(ben, "class")
        _shot(ben, "class_page")
    finally:
        for pg in (ana, ben):
            pg.context.close()
