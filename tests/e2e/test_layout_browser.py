"""Issue 24: the app as a lecturer projects it, checked in Chromium at 1024 × 768,
1280 × 720 and 1400 × 1000.

Every page (and the Train page during and after a live run) is opened at each size and
measured in the DOM: no chart, table or metric may reach beyond its column (its bounding
box against the column's, and no horizontal scrolling inside a table or a metric value),
every plotly axis that shows tick labels has a title and ticks of 14 px or more, and the
live/stored SVG charts have a title on every axis. The colours follow app/charts/common.py:
a trace that stands for a method (``meta.method``, ``data-method``) is drawn in that method's
colour or a shade of it, one run keeps one colour on every page and when another run is
added, and a metric (``meta.metric``, ``data-metric``) has its one colour.

The screenshots of every page at 1280 × 720 (what a projector shows, no scrolling) are
written to docs/screenshots/, which the README's table of pages links to.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_browser import (  # noqa: F401 - the fixtures are used by name
    MEASURE_JS,
    PAGES,
    _assert_no_errors,
    _settle,
    browser,
    live_progress,
    server,
)

from app.charts import common

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_SHOTS = REPO_ROOT / "docs" / "screenshots"
SIZES = [(1024, 768), (1280, 720), (1400, 1000)]
PROJECTOR = (1280, 720)
STORED_QUERY = "method=lora&r=8&alpha=16&targets=q,v&lr=0.005&steps=40&seed=0"
LIVE_QUERY = "method=lora&r=2&alpha=4&targets=q,v&lr=0.005&steps=30&seed=9191"
ALL_PAGES = [*PAGES, (f"train?{STORED_QUERY}", "Train")]
if (REPO_ROOT / "app" / "views" / "class_page.py").exists():
    ALL_PAGES.append(("class", "Class"))

# plotly axes without a title or with small ticks; SVG charts' axes without a title
AXES_JS = """
() => {
  const out = [];
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const fl = gd._fullLayout;
    if (!fl || gd.getBoundingClientRect().width < 1) continue;
    const title = (fl.title && fl.title.text) || (gd.querySelector('.gtitle') || {}).textContent || '';
    for (const k of Object.keys(fl)) {
      if (!/^[xy]axis\\d*$/.test(k)) continue;
      const ax = fl[k];
      if (!ax || ax.visible === false || ax.showticklabels === false) continue;
      const used = (gd._fullData || []).some((t) =>
        (t[k[0] + 'axis'] || k[0]) === (k[0] + k.slice(5)) && t.visible !== false);
      if (!used) continue;
      let text = ax.title && ax.title.text ? String(ax.title.text).trim() : '';
      if (/^Click to enter/.test(text)) text = '';  // plotly's placeholder: no title
      if (!text) out.push(`chart "${title}": ${k} has no title`);
      if (ax.tickfont && ax.tickfont.size < 14) {
        out.push(`chart "${title}": ${k} ticks are ${ax.tickfont.size} px`);
      }
    }
  }
  for (const svg of document.querySelectorAll('svg[data-chart]')) {
    if (svg.getBoundingClientRect().width < 1) continue;
    for (const ax of svg.querySelectorAll('[data-axis]')) {
      const t = ax.querySelector('.axis-title');
      if (!t || !t.textContent.trim()) {
        out.push(`svg chart ${svg.getAttribute('data-chart')}: axis ` +
                 `${ax.getAttribute('data-axis')} has no title`);
      }
    }
  }
  return out;
}
"""

# (kind, key, run, colour) of every plotly trace and SVG mark that says what it stands for
COLORS_JS = """
() => {
  const out = [];
  const colorOf = (t) => {
    for (const c of [t.line && t.line.color, t.marker && t.marker.color, t.fillcolor]) {
      if (typeof c === 'string') return c;
    }
    return '';
  };
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    for (const t of gd._fullData || []) {
      const m = t.meta;
      if (!m || typeof m !== 'object') continue;
      if (m.method) out.push(['method', String(m.method), String(m.run || ''), colorOf(t)]);
      else if (m.metric) out.push(['metric', String(m.metric), '', colorOf(t)]);
    }
  }
  for (const el of document.querySelectorAll('svg [data-method], svg [data-metric]')) {
    const c = el.getAttribute('stroke') || el.getAttribute('fill') || '';
    if (el.hasAttribute('data-method')) {
      out.push(['method', el.getAttribute('data-method'), el.getAttribute('data-run') || '', c]);
    } else {
      out.push(['metric', el.getAttribute('data-metric'), '', c]);
    }
  }
  return out;
}
"""


def _hex(color: str) -> str:
    """'#aabbcc' or 'rgb(170, 187, 204)' -> '#AABBCC' ('' for anything else)."""
    color = color.strip()
    if color.startswith("#") and len(color) == 7:
        return color.upper()
    if color.startswith("rgb"):
        parts = color[color.index("(") + 1 : color.index(")")].split(",")[:3]
        return "#" + "".join(f"{round(float(p)):02X}" for p in parts)
    return ""


def _shades(method: str) -> set[str]:
    base = common.METHOD_COLORS[method]
    return {base.upper()} | {common._mix(base, s).upper() for s in common._SHADES}


class ColourLog:
    """What each page drew: a method in its colour (or a shade), a run in one colour
    everywhere, a metric in its colour."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], tuple[str, str]] = {}  # (method, run) -> (colour, where)
        self.problems: list[str] = []
        self.seen = 0

    def add(self, marks, where: str) -> None:
        for kind, key, run, raw in marks:
            color = _hex(raw)
            if not color:
                continue
            self.seen += 1
            if kind == "metric":
                want = common.METRIC_COLORS.get(key, "").upper()
                if color != want:
                    self.problems.append(f"{where}: metric {key} drawn {color}, not {want}")
                continue
            if key not in common.METHOD_COLORS:
                self.problems.append(f"{where}: unknown method {key!r}")
                continue
            if color not in _shades(key):
                self.problems.append(f"{where}: {key} ({run or 'method'}) drawn {color}")
            if run:  # a run id names one method's run; a label may name a method's grid
                first = self.runs.setdefault((key, run), (color, where))
                if first[0] != color:
                    self.problems.append(
                        f"{key} run {run!r}: {first[0]} on {first[1]}, {color} on {where}"
                    )


def _context(browser, size):  # noqa: F811 - the fixture is passed in
    ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    return ctx, pg


def _check(pg, where: str, problems: list[str], colours: ColourLog) -> None:
    pg.wait_for_timeout(400)  # plotly re-lays out to the container
    problems += [f"{where}: {p}" for p in pg.evaluate(MEASURE_JS)]
    problems += [f"{where}: {p}" for p in pg.evaluate(AXES_JS)]
    colours.add(pg.evaluate(COLORS_JS), where)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_every_page_fits_its_columns_and_titles_its_axes(server, browser, size):  # noqa: F811
    """Acceptance: each page at each size; at 1280 × 720 the screenshots for the docs."""
    ctx, pg = _context(browser, size)
    problems: list[str] = []
    colours = ColourLog()
    try:
        for path, title in ALL_PAGES:
            where = f"{size[0]}x{size[1]} /{path or 'overview'}"
            pg.goto(f"{server}/{path}")
            _settle(pg, title)
            _assert_no_errors(pg, where)
            _check(pg, where, problems, colours)
            if size == PROJECTOR:
                DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
                name = (path.split("?")[0] or "overview").replace("-", "_")
                pg.screenshot(path=str(DOCS_SHOTS / f"{name}.png"))
    finally:
        ctx.close()
    assert colours.seen > 0, "no chart said what it draws (meta.method / meta.metric)"
    assert not problems + colours.problems, "\n".join(problems + colours.problems)


def _still(pg, locator, timeout_ms: int = 5000):
    """The element's box once it has stopped moving (the form's expander folds with an
    animation when a run starts, and the panel under it moves up meanwhile)."""
    box, waited = locator.first.bounding_box(), 0
    while waited < timeout_ms:
        pg.wait_for_timeout(250)
        waited += 250
        now = locator.first.bounding_box()
        if now == box:
            return now
        box = now
    return box


def _in_view(pg, locator, what: str, size) -> str | None:
    box = _still(pg, locator)
    if box is None:
        return f"{what} is not shown"
    if box["y"] < 0 or box["y"] + box["height"] > size[1] + 1:
        return f"{what} spans {box['y']:.0f}..{box['y'] + box['height']:.0f} px: not in view"
    return None


def test_train_live_and_stored_are_in_view_and_colours_stay(server, browser):  # noqa: F811
    """Acceptance: the Train page during a live run (measured at all three sizes while it
    trains) and after it; at 1280 × 720 the live progress and the chart, then the stored
    result, are in view without scrolling. Compare and Completions draw each method in
    the same colour before and after the new run is added to the store."""
    ctx, pg = _context(browser, PROJECTOR)
    problems: list[str] = []
    colours = ColourLog()
    try:
        for path, title in (("compare", "Compare runs"), ("completions", "Completions")):
            pg.goto(f"{server}/{path}")
            _settle(pg, title)
            _check(pg, f"/{path} before the run", problems, colours)

        pg.goto(f"{server}/train?{LIVE_QUERY}")
        _settle(pg, "Train")
        pg.get_by_role("button", name="Train live").click()
        live_progress(pg).first.wait_for(timeout=60_000)
        pg.locator(".live-panel svg").first.wait_for(timeout=60_000)
        live = pg.locator(".live-panel svg")
        for p in (
            _in_view(pg, live_progress(pg), "the live progress", PROJECTOR),
            _in_view(pg, live, "the live chart", PROJECTOR),
        ):
            if p:
                problems.append(f"1280x720 /train (live): {p}")
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(DOCS_SHOTS / "train_live.png"))
        finished = pg.get_by_text("Training finished")
        for size in SIZES:
            if finished.count():
                break
            pg.set_viewport_size({"width": size[0], "height": size[1]})
            _check(pg, f"{size[0]}x{size[1]} /train (live)", problems, colours)
        pg.set_viewport_size({"width": PROJECTOR[0], "height": PROJECTOR[1]})
        deadline = time.time() + 240
        while finished.count() == 0 and time.time() < deadline:
            pg.wait_for_timeout(500)
        finished.first.wait_for(timeout=10_000)
        _settle(pg, "Train")
        _assert_no_errors(pg, "train (finished)")
        stored_chart = pg.locator("svg[data-chart]")
        p = _in_view(pg, stored_chart, "the finished run's chart", PROJECTOR)
        if p:
            problems.append(f"1280x720 /train (finished): {p}")
        for size in SIZES:
            pg.set_viewport_size({"width": size[0], "height": size[1]})
            _check(pg, f"{size[0]}x{size[1]} /train (finished)", problems, colours)
        pg.set_viewport_size({"width": PROJECTOR[0], "height": PROJECTOR[1]})
        pg.screenshot(path=str(DOCS_SHOTS / "train_finished.png"))

        before = dict(colours.runs)
        for path, title in (("compare", "Compare runs"), ("completions", "Completions")):
            pg.goto(f"{server}/{path}")
            _settle(pg, title)
            _check(pg, f"/{path} after the run", problems, colours)
        assert set(colours.runs) >= set(before)
    finally:
        ctx.close()
    assert not problems + colours.problems, "\n".join(problems + colours.problems)
