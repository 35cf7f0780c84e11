"""The Teach page in a real browser: `streamlit run app/main.py` driven by Debian's Chromium
through Playwright, with the server, browser and helpers of tests/e2e/test_browser.py.

A verb with a character outside the model's vocabulary is named, with a hint, and no
run can start; a made-up verb is then taught live with a short step budget: the
progress moves, the per-verb chart is drawn while it trains, and the page ends at the
finished state with the before/after figures. Screenshots: tests/e2e/screenshots/
teach_live.png and teach_finished.png.
"""

from __future__ import annotations

import time

import pytest
from test_browser import (  # noqa: F401 - the fixtures are used by name
    MEASURE_JS,
    _assert_no_errors,
    _settle,
    _shot,
    browser,
    live_progress,
    page,
    server,
)

pytestmark = pytest.mark.e2e

TITLE = "Teach your own verb"
STEPS = 6
SEED = 9093


def _set(pg, label: str, value: str) -> None:
    """Type into a text or number input and commit it (Enter reruns the script)."""
    box = pg.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    pg.wait_for_timeout(600)


def test_teach_a_verb_live_in_the_browser(server, page):  # noqa: F811
    page.goto(f"{server}/teach")
    _settle(page, TITLE)
    _assert_no_errors(page, "teach")
    assert page.get_by_text("Held-out prompts").first.is_visible()

    _set(page, "verb", "blåck")  # å is not in the vocabulary: named before anything runs
    error = page.locator('[data-testid="stAlertContentError"]')
    error.first.wait_for(timeout=60_000)
    text = error.first.inner_text()
    assert text.startswith("This verb cannot be taught") and "'å' (try 'a')" in text, text
    assert page.get_by_role("button", name="Teach it live").count() == 0

    _set(page, "verb", "blick")
    _set(page, "its past form", "black")
    _set(page, "steps", str(STEPS))
    _set(page, "seed", str(SEED))
    error.first.wait_for(state="detached", timeout=60_000)
    page.get_by_text(f"steps={STEPS} seed={SEED} teach=blick:black").first.wait_for()
    page.get_by_role("button", name="Teach it live").click()

    progress = live_progress(page)
    progress.first.wait_for(timeout=60_000)
    seen: list[str] = []
    verb_lines = 0
    shot_taken = False
    finished = page.get_by_text("Teaching finished")
    deadline = time.time() + 300
    while time.time() < deadline and finished.count() == 0:
        try:
            seen.append(progress.first.inner_text(timeout=1000) if progress.count() else "")
            panel = page.locator(".live-panel")
            verb_lines = max(verb_lines, panel.locator("svg polyline.verb").count())
        except Exception:  # noqa: BLE001 - the elements are replaced on each redraw
            pass
        if not shot_taken and verb_lines and any("step" in t for t in seen[-1:]):
            _shot(page, "teach_live")
            shot_taken = True
        _assert_no_errors(page, "teach (live)")
        page.wait_for_timeout(250)
    finished.first.wait_for(timeout=10_000)
    steps = {t.split("·")[0].strip() for t in seen if t.startswith("step")}
    assert len(steps) >= 2, f"the progress never moved: {seen}"
    assert verb_lines >= 1, "no per-verb line was drawn while the run trained"

    _settle(page, TITLE)
    _assert_no_errors(page, "teach (finished)")
    page.get_by_text("taught “blick”").first.wait_for(timeout=60_000)
    assert page.get_by_text("English drift").first.is_visible()
    page.set_viewport_size({"width": 1024, "height": 768})  # a projector: nothing cut
    page.wait_for_timeout(500)
    problems = page.evaluate(MEASURE_JS)  # the layout test's check, on the finished lesson
    assert problems == [], f"at 1024 px: {problems}"
    assert page.get_by_text("Before and after").first.is_visible()
    assert page.get_by_role("button", name="Teach it live anyway").count() == 1
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)  # the per-verb curves
    assert page.get_by_text("(learned: at least 80%").count() == 1  # the order, in words
    _shot(page, "teach_finished")
