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


def open_page(page: str, query: dict | None = None, session: dict | None = None) -> AppTest:
    """The app, switched to ``views/<page>.py`` (with ``query`` in the URL and ``session``
    in the session state), run once without an exception."""
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for k, v in (session or {}).items():
        at.session_state[k] = v
    at.run()
    if query:
        at.query_params.update(query)
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    """What the elements show (the app's escapes of outside text taken out)."""
    from app_util import shown

    return "\n".join(shown(str(e.value)) for e in elements)


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


def _nice(v: float) -> bool:
    """At most two significant digits: 0.25, 20, 1000, 64; not 0.0826 or 0.165."""
    return float(f"{v:.2g}") == float(v)


def ragged_ticks(fig: dict) -> list[tuple[str, float]]:
    """Fixed tick positions (tickvals, dtick, tick0) of a numeric axis that are not nice
    numbers (a log axis' dtick such as "D1" is plotly's own and fine)."""
    out = []
    for name, ax in _axes(fig).items():
        if ax.get("type") == "category":
            continue
        for v in ax.get("tickvals") or []:
            if isinstance(v, (int, float)) and not _nice(v):
                out.append((name, v))
        for key in ("dtick", "tick0"):
            if isinstance(ax.get(key), (int, float)) and not _nice(ax[key]):
                out.append((name, ax[key]))
    return out


def synced_axes(fig: dict) -> list[str]:
    """Right-hand axes left to plotly's default, which lines their ticks up with the
    left axis' grid (ticks such as 0.85, 1.79, 2.74): each must set tickmode "auto" or
    its own tick values."""
    return [
        name
        for name, ax in _axes(fig).items()
        if ax.get("overlaying") and ax.get("tickmode") not in ("auto", "array", "linear")
    ]


def colour_of(trace: dict) -> str | None:
    for part in ("line", "marker"):
        color = (trace.get(part) or {}).get("color")
        if isinstance(color, str):
            return color
    return None


def off_contract(fig: dict) -> list[str]:
    """Traces that stand for a method, a run, a metric or a 4-bit format (their meta says
    which) but are not drawn in its colour of app.charts.common."""
    from app.charts import common

    out = []
    for t in fig["data"]:
        meta, color = t.get("meta") or {}, colour_of(t)
        if "method" in meta:
            ok = {common.method_color(meta["method"])}
            if "run" in meta:
                ok.add(common.run_color(meta["method"], meta["run"]))
        elif "metric" in meta:
            ok = {common.metric_color(meta["metric"])}
        elif "format" in meta:
            ok = {common.FORMAT_COLORS[meta["format"]]}
        else:
            continue
        if color not in ok:
            out.append(f"{t.get('name')}: {color} not in {sorted(ok)}")
    return out
