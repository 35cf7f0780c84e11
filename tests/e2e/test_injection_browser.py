"""Issue 23, acceptance: a shared Train link cannot make a visitor's browser fetch or show
anything from another host. `streamlit run app/main.py` driven by Debian's Chromium
through Playwright, with the server, browser and helpers of tests/e2e/test_browser.py.

Every URL parameter of the Train page carries Markdown image and link syntax (and raw
HTML, a bare URL, an autolink, a Streamlit directive) pointing at a local listener: a
tiny http.server on another localhost port that records every request. The page shows
the values as text in its "URL parameter … ignored" warnings; the listener gets no
request, the browser sends none to it, and no <a> or <img> on the page points at it.
Screenshot: tests/e2e/screenshots/train_injection.png.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest
from test_browser import (  # noqa: F401 - the fixtures are used by name
    VIEWPORT,
    _settle,
    _shot,
    browser,
    server,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def listener():
    """A local HTTP server on a free port that records each request's path."""
    seen: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def _payloads(host: str) -> dict[str, str]:
    """Each Train parameter with image and link syntax aimed at ``host``."""
    return {
        "method": f"![pixel]({host}/method.gif)",
        "r": f"![i]({host}/r.gif) [Log in again]({host}/r-phish)",
        "alpha": f"[Log in again]({host}/alpha-phish) :red[**Your session expired**]",
        "lr": f'<img src="{host}/lr.gif"> <a href="{host}/lr-a">click</a>',
        "steps": f"{host}/steps-bare <{host}/steps-autolink>",
        "seed": f"``![s]({host}/seed.gif)`` `[x]({host}/seed-link)`",
        "targets": f"q,![t]({host}/targets.gif),[t]({host}/targets-link)",
    }


def test_a_train_link_with_markdown_fetches_and_links_nothing(server, browser, listener):  # noqa: F811
    host, seen = listener
    params = _payloads(host)
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    sent = []
    pg.on("request", lambda r: sent.append(r.url) if r.url.startswith(host) else None)
    try:
        pg.goto(f"{server}/train?{urlencode(params)}")
        _settle(pg, "Train")
        warnings = pg.locator('[data-testid="stAlertContentWarning"]')
        warnings.first.wait_for()
        pg.wait_for_timeout(2000)  # time for any image or prefetch to be asked for
        _shot(pg, "train_injection")
        shown = "\n".join(warnings.all_inner_texts())
        hrefs = pg.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        srcs = pg.eval_on_selector_all("img[src]", "els => els.map(e => e.src)")
        # a directive renders as a coloured span; none may come from the link
        styled = pg.get_by_text("Your session expired", exact=True).count()
    finally:
        context.close()
    port = host.rsplit(":", 1)[1]
    assert not [h for h in hrefs if port in h], hrefs  # no link to the listener
    assert not [s for s in srcs if port in s], srcs  # no image from it
    assert sent == [], sent  # the browser asked the listener's host for nothing
    assert seen == [], seen  # and the listener got nothing
    assert styled == 0
    for key in params:  # every value is reported, as text
        assert f"URL parameter {key}=" in shown, shown
    assert "Log in again" in shown and f"({host}/r.gif)" in shown, shown
