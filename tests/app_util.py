"""Helpers for the app tests (streamlit.testing.v1.AppTest)."""

from __future__ import annotations

import json
import re


def live_components(at) -> list[dict]:
    """The data of every live panel / watcher an AppTest tab holds (app/live.py's v2
    component: what it fetches, the version drawn, whether it shows a running panel)."""
    return [
        json.loads(e.proto.json)
        for e in at.get("bidi_component")
        if e.proto.component_name == "minituner_live"
    ]


def live_panel(at) -> str:
    """The markup an AppTest tab's live panel shows: what it fetches from the server's
    live feed (brought up to date first), or the html Streamlit drew."""
    from app import live

    panels = [c for c in live_components(at) if c["running"] or c.get("waiting")]
    if not panels:  # drawn by Streamlit: HTML, and the SVG charts as Markdown's raw HTML
        raw = [e.proto.body for e in at.get("markdown") if e.proto.allow_html]
        return "\n".join([str(e.value) for e in at.get("html")] + raw)
    feed = live.feed()
    assert len(panels) == 1 and feed is not None and panels[0]["url"].startswith("/")
    (name,) = [n for n in [panels[0]["url"].rsplit("/", 1)[1]] if n.startswith(feed.prefix)]
    feed.publish()
    return "".join(json.loads((feed.folder / name).read_text(encoding="utf-8"))["parts"].values())


_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def shown(markdown: str) -> str:
    """The text a Markdown body shows where the app escaped it (app.format.md_text): the
    backslash escapes taken out."""
    return _MD_ESCAPE.sub(r"\1", markdown)
