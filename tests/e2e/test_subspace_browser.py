"""The Spectrum page's subspace-similarity heatmaps in a real browser: `streamlit run
app/main.py` driven by Debian's Chromium through Playwright, with the server, browser and
helpers of tests/e2e/test_browser.py.

The section shows the sentence made from precomputed/subspace.json and one heatmap per
default comparison; picking another layer redraws them for that layer. Screenshot:
tests/e2e/screenshots/spectrum_subspace.png.
"""

from __future__ import annotations

import pytest
from test_browser import (  # noqa: F401 - the fixtures are used by name
    _assert_no_errors,
    _settle,
    _shot,
    browser,
    page,
    server,
)

pytestmark = pytest.mark.e2e

TITLE = "Spectrum of the weight update ΔW"
SECTION = "Subspace similarity: do two updates use the same directions?"
CHART = '[class*="stPlotlyChart"]'


def _subspace_chart(pg):
    """The plotly chart whose title names the subspace similarity."""
    return pg.locator(CHART).filter(has_text="Subspace similarity φ(i, j)").first


def test_subspace_heatmaps_in_the_browser(server, page):  # noqa: F811
    page.goto(f"{server}/spectrum")
    _settle(page, TITLE)
    _assert_no_errors(page, "spectrum")
    page.get_by_role("heading", name=SECTION).first.scroll_into_view_if_needed()
    assert page.get_by_text("What the numbers say.").first.is_visible()

    chart = _subspace_chart(page)
    chart.scroll_into_view_if_needed()
    chart.locator(".hm image").first.wait_for(timeout=60_000)  # plotly drew the heatmaps
    assert chart.locator(".hm image").count() == 3  # the three default comparisons
    assert "L0 q_proj" in chart.inner_text()

    box = page.get_by_label("layer", exact=True).last  # the section's layer picker
    box.click()
    page.get_by_role("option", name="blocks.3.attn.v_proj").click()
    page.get_by_text("Subspace similarity φ(i, j), L3 v_proj").first.wait_for(timeout=60_000)
    _settle(page, TITLE)
    _assert_no_errors(page, "spectrum (layer picked)")
    assert _subspace_chart(page).locator(".hm image").count() == 3
    _shot(page, "spectrum_subspace")
