"""The live panel's browser side (app/live.py's ``LIVE_JS``), run in Debian's Chromium
against a feed file that the test controls: it redraws only the parts that changed, the
charts at most every ``chart_ms``; it asks for a rerun once when the run it was drawn for
ends (never for a feed file that lags behind the page); an idle watcher asks once a run
starts; the cleanup stops its polling. Skips without /usr/bin/chromium (unless
MINITUNER_REQUIRE_E2E=1)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
CHROMIUM = Path("/usr/bin/chromium")
ORIGIN = "http://minituner.test"
FEED = "/app/static/live/live-1-ab.json"
POLL_MS = 40
CHART_MS = 600


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("MINITUNER_REQUIRE_E2E") == "1":
            pytest.fail(f"{CHROMIUM} is missing (MINITUNER_REQUIRE_E2E=1)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


class Panel:
    """One mounted live component on a blank page; ``feed`` is what the server serves."""

    def __init__(self, browser, **data) -> None:
        from app.live import LIVE_JS

        self.feed = {"version": 0, "running": False, "status": "idle", "parts": {}}
        self.fetches = 0
        self.page = browser.new_page()
        self.page.route(f"{ORIGIN}/", lambda r: r.fulfill(body="<body><div id=root></div>"))
        self.page.route(f"{ORIGIN}{FEED}", self._serve)
        self.page.goto(f"{ORIGIN}/")
        script = LIVE_JS.replace("export default function", "window.live = function")
        self.page.add_script_tag(content=script)
        self.page.evaluate("window.triggers = []")
        self.mount(**data)

    def mount(self, **data) -> None:
        """Call the component's function (Streamlit calls it again on the same element
        when a rerun brings new data)."""
        args = {"url": FEED, "poll_ms": POLL_MS, "idle_poll_ms": POLL_MS,
                "chart_ms": CHART_MS, "slow": ["loss"], **data}  # fmt: skip
        self.page.evaluate(
            """(data) => {
              window.cleanup = window.live({
                data, parentElement: document.getElementById("root"),
                setTriggerValue: (name, value) => window.triggers.push([name, value]),
              });
            }""",
            args,
        )

    def _serve(self, route) -> None:
        self.fetches += 1
        route.fulfill(body=json.dumps(self.feed), content_type="application/json")

    def serve(self, **feed) -> None:
        self.feed = {**self.feed, **feed}

    def triggers(self) -> list:
        return self.page.evaluate("window.triggers")

    def panel(self) -> str | None:
        return self.page.evaluate(
            "(document.querySelector('#root .live-panel') || {textContent: null}).textContent"
        )

    def part(self, name: str) -> str | None:
        return self.page.evaluate(
            f"(document.querySelector('#root .live-part-{name}') || {{innerHTML: null}}).innerHTML"
        )

    def settle(self, polls: int = 5) -> None:
        self.page.wait_for_timeout(polls * POLL_MS + 100)

    def until(self, expr: str) -> None:
        self.page.wait_for_function(expr, timeout=10_000)


def test_a_running_panel_redraws_changed_parts_then_asks_once_for_a_rerun(browser):
    p = Panel(browser, version=5, running=True)
    assert "starting" in p.panel()
    first = {"progress": "<p>step 1</p>", "figures": "<p>fig</p>", "loss": "<i>L1</i>"}
    p.serve(version=5, running=True, status="running", parts=first)
    p.until("document.querySelector('#root .live-part-loss')")
    assert [p.part(n) for n in ("progress", "figures", "loss")] == [
        "<p>step 1</p>", "<p>fig</p>", "<i>L1</i>"
    ]  # fmt: skip
    assert "starting" not in p.panel()
    p.page.evaluate("document.querySelector('.live-part-figures p').dataset.kept = 'yes'")
    p.serve(version=6, parts={**first, "progress": "<p>step 2</p>", "loss": "<i>L2</i>"})
    p.until("document.querySelector('#root .live-part-progress').textContent == 'step 2'")
    assert p.part("loss") == "<i>L1</i>"  # a chart waits for chart_ms since its last draw
    p.until("document.querySelector('#root .live-part-loss').textContent == 'L2'")
    assert p.part("figures") == '<p data-kept="yes">fig</p>'  # unchanged: not redrawn
    assert p.triggers() == []  # news during the run: drawn in the browser, no rerun
    p.serve(version=9, running=False, status="completed", parts={})
    p.until("window.triggers.length > 0")
    p.settle()
    assert p.triggers() == [["news", 9]]  # once, then it stops polling
    n = p.fetches
    p.settle()
    assert p.fetches == n
    assert p.part("progress") == "<p>step 2</p>"  # the last panel stays until the rerun
    p.page.close()


def test_a_feed_that_lags_behind_the_page_does_not_end_the_run(browser):
    """At a run's start the file may still hold the previous, idle state (older version)."""
    p = Panel(browser, version=12, running=True)
    p.serve(version=10, running=False, status="completed", parts={})
    p.settle(10)
    assert p.triggers() == [] and "starting" in p.panel() and p.fetches >= 5
    p.serve(version=13, running=True, status="running", parts={"progress": "<p>step 1</p>"})
    p.until("document.querySelector('#root .live-panel').textContent == 'step 1'")
    assert p.triggers() == []
    p.page.close()


def test_an_idle_watcher_shows_nothing_and_asks_for_a_rerun_when_a_run_starts(browser):
    p = Panel(browser, version=7, running=False)
    p.serve(version=7, running=False, status="completed")
    p.settle(10)
    assert p.triggers() == [] and p.panel() is None and p.fetches >= 5
    p.serve(version=8, running=True, status="running", parts={"progress": "<p>step 0</p>"})
    p.until("window.triggers.length > 0")
    p.settle()
    assert p.triggers() == [["news", 8]] and p.panel() is None
    p.page.close()


def test_the_cleanup_stops_the_polling(browser):
    p = Panel(browser, version=1, running=True)
    p.settle()
    assert p.fetches >= 2
    p.page.evaluate("window.cleanup()")
    p.settle(2)
    n = p.fetches
    p.settle(10)
    assert p.fetches == n and p.triggers() == []
    p.page.close()


def test_new_data_on_the_same_element_stops_the_previous_poll(browser):
    """A rerun with new data calls the function again on the same element without the
    cleanup: the earlier call's poll must stop, or it would act on its stale version."""
    p = Panel(browser, version=5, running=True)
    p.serve(version=5, running=True, status="running", parts={"progress": "<p>step 1</p>"})
    p.until("document.querySelector('#root .live-part-progress')")
    p.mount(version=7, running=True)  # the page was redrawn at version 7
    p.serve(version=6, running=False, status="stopped", parts={})  # news for version 5 only
    p.settle(10)
    assert p.triggers() == []
    assert p.page.evaluate("document.querySelectorAll('#root .live-panel').length") == 1
    p.serve(version=8, running=False, status="stopped", parts={})
    p.until("window.triggers.length > 0")
    p.settle()
    assert p.triggers() == [["news", 8]]
    p.page.close()


def test_a_running_panel_whose_feed_never_moves_asks_the_server_once(browser):
    """issue 23, item 13: a feed the server cannot write stays at an old version; the
    panel showed "starting…" forever. After ``stale_ms`` without news it asks for one
    rerun (the server then draws the run itself), and stops polling."""
    p = Panel(browser, version=12, running=True, stale_ms=400)
    p.serve(version=10, running=False, status="idle", parts={})  # never written for this run
    p.until("window.triggers.length > 0")
    p.settle()
    assert p.triggers() == [["news", -1]]
    n = p.fetches
    p.settle()
    assert p.fetches == n
    p.page.close()


def test_a_feed_that_moves_never_counts_as_stale(browser):
    p = Panel(browser, version=5, running=True, stale_ms=400)
    for step in range(12):  # news every ~100 ms for more than twice stale_ms
        p.serve(version=5 + step, running=True, status="running",
                parts={"progress": f"<p>step {step}</p>"})  # fmt: skip
        p.page.wait_for_timeout(100)
    assert p.triggers() == []
    p.page.close()


def test_a_waiting_panel_shows_its_place_and_asks_once_when_its_run_starts(browser):
    """Issue 25: a tab whose run waits in line draws the place and the estimate from its
    run's feed file (no rerun while only those change) and asks for one rerun when the
    run starts training (the server then draws the live header and panel)."""
    p = Panel(browser, version=4, running=False, waiting=True)
    assert "starting" in p.panel()  # a panel, until the first fetch
    p.serve(version=4, running=False, status="waiting", parts={"progress": "<p>2 in line</p>"})
    p.until("document.querySelector('#root .live-part-progress')")
    p.serve(version=6, running=False, status="waiting", parts={"progress": "<p>next in line</p>"})
    p.until("document.querySelector('#root .live-part-progress').textContent == 'next in line'")
    p.settle()
    assert p.triggers() == []  # its place moved: drawn in the browser, no rerun
    p.serve(version=7, running=True, status="running", parts={"progress": "<p>step 0</p>"})
    p.until("window.triggers.length > 0")
    p.settle()
    assert p.triggers() == [["news", 7]]
    assert p.part("progress") == "<p>next in line</p>"  # a running panel is the server's to draw
    p.page.close()
