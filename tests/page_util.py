"""What the page tests of issue 24 read from an AppTest tab: the plotly figures a page
draws (their JSON, as the browser gets it), the axes without a title, the texts a figure
shows, raw underscores in Markdown, and metric deltas."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
TIMEOUT = 240  # seconds per script run: a loaded, shared 2-core machine


def open_page(page: str) -> AppTest:
    """The app, switched to ``views/<page>.py``, run once without an exception."""
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """Every plotly figure of the page as JSON, by its element key (or its position)."""
    out = {}
    for i, chart in enumerate(at.get("plotly_chart")):
        out[chart.proto.id.rsplit("-", 1)[-1] or str(i)] = json.loads(chart.proto.spec)
    return out


def _axes(fig: dict) -> dict[str, dict]:
    return {k: v for k, v in fig["layout"].items() if re.fullmatch(r"[xy]axis\d*", k)}


def _drawn(fig: dict) -> set[str]:
    """The axes some trace is drawn on ("xaxis", "yaxis2", ...)."""
    out = set()
    for t in fig["data"]:
        for letter in "xy":
            ref = t.get(f"{letter}axis", letter)
            out.add(f"{letter}axis{ref[1:]}")
    return out


def untitled_axes(fig: dict) -> list[str]:
    """The axes that show tick labels and carry data but have no title."""
    out = []
    for name, ax in _axes(fig).items():
        if name not in _drawn(fig) or ax.get("showticklabels") is False:
            continue
        if not (ax.get("title") or {}).get("text"):
            out.append(name)
    return out


def axis_titles(fig: dict) -> list[str]:
    return [(ax.get("title") or {}).get("text", "") for ax in _axes(fig).values()]


def labels(fig: dict) -> list[str]:
    """The texts a figure shows as labels: its title, axis titles, trace (legend) names,
    annotations and colour-bar titles."""
    out = [(fig["layout"].get("title") or {}).get("text", "")]
    out += axis_titles(fig)
    out += [t.get("name", "") for t in fig["data"]]
    out += [a.get("text", "") for a in fig["layout"].get("annotations", [])]
    out += [((t.get("colorbar") or {}).get("title") or {}).get("text", "") for t in fig["data"]]
    return [s for s in out if s]


_CODE = re.compile(r"(`+).*?\1", re.S)


def raw_underscores(markdown: str) -> list[str]:
    """Words of ``markdown`` with an underscore Markdown would show raw or read as
    emphasis: outside code spans and not escaped (``\\_``)."""
    text = _CODE.sub(" ", markdown).replace("\\_", "")
    return [w for w in text.split() if "_" in w]


def deltas(at: AppTest) -> dict[str, str]:
    """The metrics that show a delta badge: ``{label: delta}``."""
    return {m.label: m.proto.delta for m in at.metric if m.proto.delta}
