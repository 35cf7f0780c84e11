"""Helpers for the app tests (streamlit.testing.v1.AppTest)."""

from __future__ import annotations

import json


def live_panel(at) -> str:
    """The markup an AppTest tab's live panel shows: what its iframe fetches from the
    server's live feed (brought up to date first), or the html Streamlit drew."""
    from app import live

    frames = at.get("iframe")
    if not frames:
        return "\n".join(str(e.value) for e in at.get("html"))
    feed = live.feed()
    assert len(frames) == 1 and feed is not None and feed.name in frames[0].proto.srcdoc
    feed.publish()
    return json.loads(feed.path.read_text(encoding="utf-8"))["html"]
