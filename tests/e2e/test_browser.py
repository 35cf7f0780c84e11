"""The real app in a real browser: `streamlit run app/main.py` driven by Debian's Chromium
through Playwright (never `playwright install`).

A short live training runs from the Train page to its end (the progress must visibly
change while it runs), then every page opens without an exception or an error box.
Screenshots go to tests/e2e/screenshots/ (gitignored) and, when MINITUNER_SCREENSHOTS_DIR
is set, there too. Without /usr/bin/chromium the tests skip, unless
MINITUNER_REQUIRE_E2E=1, which makes a missing browser a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# url path, title shown on the page
PAGES = [
    ("", "LoRA and QLoRA, from scratch, on a tiny GPT"),
    ("teach", "Teach your own verb"),
    ("compare", "Compare runs"),
    ("completions", "Completions: before and after"),
    ("spectrum", "Spectrum of the weight update ΔW"),
    ("forgetting", "Forgetting"),
    ("memory", "Memory"),
    ("rank-sweep", "Rank sweep"),
    ("nf4", "NF4: 4-bit NormalFloat"),
]
TRAIN_QUERY = "method=lora&r=8&alpha=16&targets=q,v&lr=0.005&steps=8&seed=9091"
LONG_QUERY = "method=lora&r=4&alpha=8&targets=q,v&lr=0.005&steps=2000&seed=9092"


def live_progress(pg):
    """The live panel's progress text ("step 3/40 · loss ..."): the panel fetches the live
    feed itself (app/live.py)."""
    return pg.locator(".live-panel .live-progress .live-progress-text")


SERVER_CACHE: dict[str, str] = {}  # the server's run cache: it names its training children


def _require(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("MINITUNER_REQUIRE_E2E") == "1":
        pytest.fail(f"{why} (MINITUNER_REQUIRE_E2E=1)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(tmp: Path, extra_env: dict | None = None):
    """`streamlit run app/main.py` on a free port with its run cache under ``tmp``
    (``extra_env`` added to its environment); yields the URL, then stops the server and
    checks its log for tracebacks."""
    port = _free_port()
    # one torch thread: on a busy 2-core machine two threads spin against each other
    env = {
        **os.environ,
        "MINITUNER_CACHE": str(tmp / "cache"),
        "MINITUNER_TORCH_THREADS": os.environ.get("MINITUNER_TORCH_THREADS", "1"),
        "HOME": str(tmp),
        **(extra_env or {}),
    }
    log = open(tmp / "streamlit.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", "app/main.py",
            "--server.headless", "true",
            "--server.port", str(port),
            "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none",
        ],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.close()
            pytest.fail("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-3000:])
        time.sleep(0.3)
    SERVER_CACHE["path"] = str(tmp / "cache")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    text = (tmp / "streamlit.log").read_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require(CHROMIUM.exists(), f"{CHROMIUM} is missing")
    with serve_app(tmp_path_factory.mktemp("e2e")) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "playwright is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


VIEWPORT = {"width": 1600, "height": 1300}


def _shot(pg, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so the
    window is made as tall as that block first."""
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    height = pg.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return m ? m.scrollHeight : 0; }"
    )
    pg.set_viewport_size(
        {"width": VIEWPORT["width"], "height": min(max(VIEWPORT["height"], height), 8000)}
    )
    pg.wait_for_timeout(700)  # charts re-layout to the new size
    pg.screenshot(path=str(path), full_page=True)
    pg.set_viewport_size(VIEWPORT)
    extra = os.environ.get("MINITUNER_SCREENSHOTS_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


# what may not reach beyond its column (charts, tables, metrics, the live/stored SVGs)
MEASURE_JS = """
() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]')
            || document.querySelector('[data-testid="stMain"]');
  const out = [];
  const name = (el) => {
    const t = el.querySelector('.gtitle, text.chart-title, [data-testid="stMetricLabel"]');
    const id = el.getAttribute('data-testid') || el.tagName.toLowerCase();
    return id + (t ? ' "' + t.textContent.trim().slice(0, 60) + '"' : '');
  };
  const sel = ['[data-testid="stPlotlyChart"]', '.js-plotly-plot svg.main-svg',
               '[data-testid="stTable"]', '[data-testid="stTable"] table',
               '[data-testid="stDataFrame"]', '[data-testid="stMetric"]',
               '[data-testid="stMarkdownContainer"] svg', '.live-panel svg',
               '[data-testid="stHtml"] svg', '[data-testid="stImage"] img'].join(',');
  const vw = document.documentElement.clientWidth;
  for (const el of main.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) continue;  // hidden: a closed expander, another tab
    const col = el.parentElement.closest('[data-testid="stColumn"]') || main;
    const c = col.getBoundingClientRect();
    const cs = getComputedStyle(col);
    const left = c.left + parseFloat(cs.paddingLeft) - 1;
    const right = c.right - parseFloat(cs.paddingRight) + 1;
    if (r.right > right || r.left < left || r.right > vw + 1) {
      out.push(`${name(el)} spans ${Math.round(r.left)}..${Math.round(r.right)} px ` +
               `in a column ${Math.round(left)}..${Math.round(right)} px`);
    }
  }
  for (const el of main.querySelectorAll('[data-testid="stTable"], [data-testid="stMetricValue"],' +
                                         ' [data-testid="stMetricValue"] > div,' +
                                         ' [data-testid="stMetricLabel"] [data-testid="stMarkdownContainer"]')) {
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 2) {
      out.push(`${name(el.closest('[data-testid="stMetric"]') || el)} is cut: ` +
               `${el.scrollWidth} px of content in ${el.clientWidth} px`);
    }
  }
  return out;
}
"""


def _settle(pg, title: str) -> None:
    """Wait for the page's title, then for the script run to finish."""
    pg.get_by_role("heading", name=title).first.wait_for()
    pg.wait_for_timeout(300)
    pg.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=120_000)
    pg.wait_for_timeout(500)  # let the charts draw


def _assert_no_errors(pg, where: str) -> None:
    exc = pg.locator('[data-testid="stException"]')
    err = pg.locator('[data-testid="stAlertContentError"]')
    assert exc.count() == 0, f"{where}: exception shown: {exc.first.inner_text()}"
    assert err.count() == 0, f"{where}: error shown: {err.first.inner_text()}"
    assert page_not_found(pg) == 0, f"{where}: Streamlit says the page does not exist"


def page_not_found(pg) -> int:
    return pg.get_by_text("Page not found").count()


def test_live_training_from_the_train_page(server, page):
    page.goto(f"{server}/train?{TRAIN_QUERY}")
    _settle(page, "Train")
    _assert_no_errors(page, "train")
    assert page.get_by_text("trainable parameters").first.is_visible()
    start = page.get_by_role("button", name="Train live")
    start.click()

    progress = live_progress(page)
    progress.first.wait_for(timeout=60_000)
    seen: list[str] = []
    shot_taken = False
    finished = page.get_by_text("Training finished")
    deadline = time.time() + 150
    while time.time() < deadline and finished.count() == 0:
        if progress.count():
            try:
                text = progress.first.inner_text(timeout=1000)
            except Exception:  # noqa: BLE001 - the element is replaced on each poll
                text = ""
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if not shot_taken and "step" in text and not text.startswith("step 0/"):
                _shot(page, "train_live")
                shot_taken = True
        _assert_no_errors(page, "train (live)")
        page.wait_for_timeout(250)
    finished.first.wait_for(timeout=10_000)
    distinct = {t.split("·")[0].strip() for t in seen}
    assert len(distinct) >= 2, f"the progress never moved: {seen}"
    _settle(page, "Train")
    _assert_no_errors(page, "train (finished)")
    _shot(page, "train_finished")


@pytest.mark.parametrize(("path", "title"), PAGES, ids=[p[0] or "overview" for p in PAGES])
def test_every_page_opens_without_errors(server, page, path, title):
    page.goto(f"{server}/{path}")
    _settle(page, title)
    _assert_no_errors(page, path)
    _shot(page, (path or "overview").replace("-", "_"))


def _training_children() -> list[int]:
    """Live (not zombie) training processes started by this test's server."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split()[2]
        except OSError:
            continue
        if "minituner.finetune.worker" in cmd and SERVER_CACHE["path"] in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def _progress_step(pg) -> int:
    """The step number the page's progress bar shows (-1 when there is none)."""
    bar = live_progress(pg)
    try:
        text = bar.first.inner_text(timeout=2000) if bar.count() else ""
    except Exception:  # noqa: BLE001 - the element is replaced when a new event arrives
        return -1
    words = text.split()
    return int(words[1].split("/")[0]) if len(words) > 1 and words[0] == "step" else -1


def test_a_second_learner_opens_the_run_read_only_and_stop_ends_the_child(server, browser):
    """Two browser contexts on the Train page: one trains; the other (open before the run
    started) keeps to its own runs (issue 25: no one else's run in its tab), then opens
    the run by its link (?job=, as the Class page's) and sees the progress advance,
    read-only; Stop from the first ends the run, and no training process is left."""
    a = browser.new_context(viewport=VIEWPORT).new_page()
    b = browser.new_context(viewport=VIEWPORT).new_page()
    try:
        a.goto(f"{server}/train?{LONG_QUERY}")
        _settle(a, "Train")
        b.goto(f"{server}/train?{LONG_QUERY}")  # open and idle before the run starts
        _settle(b, "Train")
        a.get_by_role("button", name="Train live").click()
        live_progress(a).first.wait_for(timeout=60_000)
        assert len(_training_children()) == 1
        header = a.get_by_role("heading", name=re.compile("Training live")).first.inner_text()
        job = int(re.search(r"run #(\d+)", header).group(1))

        b.wait_for_timeout(3000)  # b's tab follows b's runs only: it has none
        assert live_progress(b).count() == 0 and b.get_by_text("Training live").count() == 0
        b.goto(f"{server}/train?job={job}")
        live_progress(b).first.wait_for(timeout=60_000)
        assert (
            "read-only"
            in b.get_by_role("heading", name=re.compile("Training live")).first.inner_text()
        )
        assert b.locator(".st-key-train_stop").count() == 0  # only the owner can stop it
        seen = []
        deadline = time.time() + 120
        while time.time() < deadline and len({s for s in seen if s > 0}) < 3:
            seen.append(_progress_step(b))
            b.wait_for_timeout(400)
        steps = [s for s in seen if s > 0]
        assert len(set(steps)) >= 3 and steps == sorted(steps), f"the watcher saw {seen}"
        _assert_no_errors(b, "train (watching)")

        a.locator(".st-key-train_stop button").click()
        a.get_by_text("Training stopped").first.wait_for(timeout=60_000)
        _assert_no_errors(a, "train (stopped)")
        deadline = time.time() + 30
        while _training_children() and time.time() < deadline:
            time.sleep(0.2)
        assert _training_children() == [], "a training process outlived Stop"
        b.get_by_text("Training stopped").first.wait_for(timeout=60_000)  # b saw the end
    finally:
        a.context.close()
        b.context.close()


def test_a_reload_or_a_reopened_tab_keeps_stop(server, browser):
    """issue 23, item 11: a reload made the run "another session's", with no Stop
    anywhere. The owner token lives in a cookie of the browser (app/live.py): a reload
    and a reopened tab of the same browser still get Stop, and Stop ends the child."""
    ctx = browser.new_context(viewport=VIEWPORT)
    query = LONG_QUERY.replace("seed=9092", "seed=9093")
    try:
        a = ctx.new_page()
        a.goto(f"{server}/train?{query}")
        _settle(a, "Train")
        a.wait_for_function("document.cookie.includes('minituner_owner=')", timeout=30_000)
        a.get_by_role("button", name="Train live").click()
        live_progress(a).first.wait_for(timeout=60_000)
        a.reload()
        a.get_by_role("heading", name="Train").first.wait_for(timeout=60_000)
        a.locator(".st-key-train_stop button").wait_for(timeout=60_000)
        assert a.get_by_text("Training is busy").count() == 0
        a.close()
        b = ctx.new_page()  # the tab closed, then the page opened again
        b.goto(f"{server}/train?{query}")
        b.locator(".st-key-train_stop button").wait_for(timeout=60_000)
        b.locator(".st-key-train_stop button").click()
        b.get_by_text("Training stopped").first.wait_for(timeout=60_000)
        _assert_no_errors(b, "train (stopped after a reload)")
        deadline = time.time() + 30
        while _training_children() and time.time() < deadline:
            time.sleep(0.2)
        assert _training_children() == [], "a training process outlived Stop"
    finally:
        ctx.close()
