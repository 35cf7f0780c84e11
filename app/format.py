"""How the pages write things: any string from outside the app as text, sizes in KiB /
MiB / GiB, and memory breakdowns as rows for a table or a stacked bar chart
(:func:`app.charts.memory.memory_stacked`).

**The one escaping rule.** Every string that comes from a URL, a file, a run record or a
user field is shown as text, never as Markdown or HTML (issue 23):

* in Markdown (st.markdown, st.caption, st.info/warning/error, st.metric, st.table
  cells, which Streamlit all render as GitHub Markdown with its ``:red[…]`` directives,
  ``$…$`` math and bare-URL links): :func:`md_text`, which escapes every ASCII
  punctuation character with a backslash and writes control characters and line breaks
  as spaces, or :func:`md_code`, one code span (the URL warnings quote values so);
* in plotly text (titles, legend names, tick labels, hover text, annotations, where
  plotly renders ``<a href>``, ``<b>``, ``<br>``): :func:`plotly_text`, HTML escaping;
  :func:`app.charts.common.style`, which every chart ends with, applies it to every
  string of the figure but the app's own hover templates.

Data frames (st.dataframe), st.text and st.code show text as it is: no escaping there.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

# control characters (line breaks, tabs, escape sequences), Unicode line and paragraph
# separators and the bidirectional overrides that can make text read backwards
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_BACKTICKS = re.compile(r"`+")
_BARE_LINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?=@)")  # where GFM finds links
_JOINER = "\u2060"
LIMIT = 200  # characters of an outside value a message quotes (md_code's default)


def visible(value: object, limit: int | None = None) -> str:
    """``str(value)`` on one line: control characters and line breaks as spaces, at most
    ``limit`` characters (then "…")."""
    s = _INVISIBLE.sub(" ", str(value))
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    return s


def md_text(value: object, limit: int | None = None) -> str:
    """Markdown that shows ``value`` as its text (:func:`visible`): no link, image,
    emphasis, heading, list, math, HTML or Streamlit directive, whatever it holds.

    Backslash escapes do not stop GitHub's bare links: Streamlit's Markdown (remark-gfm)
    turns ``http://…``, ``www.…`` and ``name@host.org`` in the parsed text into links. An
    invisible WORD JOINER (U+2060) inside ``://``, after ``www`` and before ``@`` keeps
    them text."""
    return _MD_SPECIAL.sub(r"\\\1", _BARE_LINK.sub(_JOINER, visible(value, limit)))


def md_code(value: object, limit: int | None = LIMIT) -> str:
    """``value`` (:func:`visible`, at most ``limit`` characters) as one Markdown code
    span: a fence longer than any run of backticks inside, so nothing breaks out."""
    s = visible(value, limit)
    if not s.strip():
        return "` `" if not s else f"`{s}`"
    fence = "`" * (1 + max((len(m) for m in _BACKTICKS.findall(s)), default=0))
    pad = " " if s[0] in "` " or s[-1] in "` " else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def md_rows(rows: Sequence[Mapping], limit: int | None = LIMIT) -> list[dict]:
    """Rows for st.table, which renders Markdown in its cells and headers: every string
    key and value as :func:`md_text` (a value at most ``limit`` characters)."""
    return [
        {md_text(k): md_text(v, limit) if isinstance(v, str) else v for k, v in row.items()}
        for row in rows
    ]


def plotly_text(value: object) -> str:
    """Text that plotly shows as it is: ``<``, ``>`` and ``&`` escaped (plotly reads
    ``<a href>``, ``<b>``, ``<br>`` as markup and decodes the entities back)."""
    return html.escape(str(value), quote=False)


_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float, digits: int = 1, binary: bool = True, unit: str | None = None) -> str:
    """Human-readable size: ``format_bytes(98304) == "96.0 KiB"``; ``binary=False`` gives
    powers of 1000 (kB, MB, GB); ``unit`` ("MiB", ...) fixes the unit, so that a column
    of sizes reads in one (:func:`common_unit`).

    Raises:
        ValueError: ``unit`` is not one of the units of that base.
    """
    base, units = (1024, _BINARY) if binary else (1000, _DECIMAL)
    sign = "-" if n < 0 else ""
    v = abs(float(n))
    if unit is not None:
        if unit not in units:
            raise ValueError(f"unknown unit {unit!r}; one of {', '.join(units)}")
        i = units.index(unit)
        v /= base**i
    else:
        i = 0
        while v >= base and i < len(units) - 1:
            v /= base
            i += 1
    if i == 0:
        return f"{sign}{int(v)} B"
    return f"{sign}{v:.{digits}f} {units[i]}"


def common_unit(values, binary: bool = True) -> str:
    """The unit :func:`format_bytes` would give the largest of ``values``: one unit for a
    table column (the small entries then read as fractions of it)."""
    largest = max((abs(float(v)) for v in values), default=0.0)
    return format_bytes(largest, binary=binary).split(" ")[-1]


CATEGORIES = ("weights", "nf4", "lora", "gradients", "optimizer", "activations")


def breakdown_table(
    predicted: Mapping | None = None,
    measured: Mapping | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> list[dict]:
    """Long-format rows for a stacked bar chart: one row per (source, category) present.

    Each row: ``source`` ("predicted"/"measured"), ``category``, ``bytes``, ``label``
    (:func:`format_bytes`), ``fraction`` of that source's total over ``categories`` and
    ``estimate`` (True for predicted activations).
    """
    rows = []
    for source, d in (("predicted", predicted), ("measured", measured)):
        if d is None:
            continue
        total = sum(int(d.get(c, 0)) for c in categories)
        for c in categories:
            if c not in d:
                continue
            b = int(d[c])
            rows.append(
                {
                    "source": source,
                    "category": c,
                    "bytes": b,
                    "label": format_bytes(b),
                    "fraction": b / total if total else 0.0,
                    "estimate": source == "predicted" and c == "activations",
                }
            )
    return rows
