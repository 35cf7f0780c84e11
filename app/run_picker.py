"""Finding runs on the Compare and Completions pages (issue 24): runs listed by label,
newest first, a filter by method, r and seed, the run this session just trained
selected when the page opens, and the selection kept in the URL
(``?runs=<id>,<id>&method=lora&r=8&seed=0``) so that a link opens the same runs.

The parsing and filtering are pure functions (tested directly); :func:`pick_runs` draws
the widgets. A URL value that cannot be used is a warning that quotes it as code
(app.format.md_code) and is then ignored, never an exception, as on the Train page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from app.format import md_code
from minituner.methods import METHODS
from minituner.store.runs import RunInfo

MIN_ID_PREFIX = 6  # a URL may name a run by the first 6+ characters of its id (as labels do)


@dataclass(frozen=True)
class Selection:
    """What the URL (or the widgets) chose: run ids, and the filter's values (empty:
    no filter on that field)."""

    runs: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    r: list[int] = field(default_factory=list)
    seed: list[int] = field(default_factory=list)


def run_r(info: RunInfo) -> int | None:
    """The run's rank r; None for full fine-tuning (it has none)."""
    f = info.finetune_config()
    return None if f.method == "full" else int(f.r)


def run_seed(info: RunInfo) -> int:
    return int(info.finetune_config().seed)


def newest_first(runs: Iterable[RunInfo], stamp: Callable[[RunInfo], float]) -> list[RunInfo]:
    """Runs of the user's cache before shipped ones, each newest first by ``stamp`` (the
    time the run was stored), ties by run id: a run you just trained is at the top."""
    return sorted(runs, key=lambda r: (r.shipped, -stamp(r), r.run_id))


def filter_options(runs: Sequence[RunInfo]) -> dict[str, list]:
    """The values each filter offers: the methods, ranks and seeds of ``runs``."""
    return {
        "method": [m for m in METHODS if any(r.method == m for r in runs)],
        "r": sorted({x for r in runs if (x := run_r(r)) is not None}),
        "seed": sorted({run_seed(r) for r in runs}),
    }


def filter_runs(runs: Iterable[RunInfo], sel: Selection) -> list[RunInfo]:
    """The runs that pass the filter (method, r, seed; an empty list passes all). A
    filter on r keeps only LoRA and QLoRA runs of those ranks (full fine-tuning has no r)."""
    return [
        r
        for r in runs
        if (not sel.method or r.method in sel.method)
        and (not sel.r or run_r(r) in sel.r)
        and (not sel.seed or run_seed(r) in sel.seed)
    ]


def _items(v) -> list[str]:
    items = v if isinstance(v, (list, tuple)) else [v]
    return [t.strip() for item in items for t in str(item).split(",") if t.strip()]


def parse_run_params(
    qp: Mapping[str, object], runs: Sequence[RunInfo]
) -> tuple[Selection, list[str]]:
    """The runs and filter a URL names (``runs``: run ids or unique prefixes of at least
    MIN_ID_PREFIX characters; ``method``, ``r``, ``seed``: comma-separated values).

    Returns ``(selection, problems)``: each unusable value (an unknown method, a number
    that is not whole or that no stored run has, an id no stored run has) is left out and
    gives one Markdown message in ``problems``, its value quoted as code."""
    problems: list[str] = []
    opts = filter_options(runs)

    def bad(key, value, why):
        problems.append(f"URL parameter {md_code(f'{key}={value!r}')} ignored: {why}")

    sel = Selection()
    if "method" in qp:
        names = [t.lower() for t in _items(qp["method"])]
        unknown = [t for t in names if t not in METHODS]
        if unknown or not names:
            bad("method", ",".join(names), f"choose from {', '.join(METHODS)}")
        else:
            sel.method.extend(m for m in METHODS if m in names)
    for key in ("r", "seed"):
        if key not in qp:
            continue
        raw = _items(qp[key])
        try:
            values = [int(t) for t in raw]
        except ValueError:
            bad(key, ",".join(raw), "not a whole number")
            continue
        missing = [v for v in values if v not in opts[key]]
        if missing or not values:
            have = ", ".join(map(str, opts[key])) or "none"
            bad(key, ",".join(raw), f"no stored run has it (stored: {have})")
        else:
            getattr(sel, key).extend(sorted(set(values)))
    if "runs" in qp:
        for token in _items(qp["runs"]):
            hits = (
                [r.run_id for r in runs if r.run_id.startswith(token.lower())]
                if len(token) >= MIN_ID_PREFIX
                else []
            )
            if len(hits) == 1:
                if hits[0] not in sel.runs:
                    sel.runs.append(hits[0])
            else:
                why = "several runs start with it" if hits else "no stored run has this id"
                bad("runs", token, why)
    return sel, problems


def selection_params(sel: Selection) -> dict[str, str]:
    """The URL query parameters of a selection (what a shared link holds)."""
    out = {}
    if sel.runs:
        out["runs"] = ",".join(sel.runs)
    for key in ("method", "r", "seed"):
        values = getattr(sel, key)
        if values:
            out[key] = ",".join(map(str, values))
    return out


def default_ids(
    runs: Sequence[RunInfo], url: Selection, just_trained: str | None, fallback: Sequence[str]
) -> list[str]:
    """The runs a page opens on: the URL's, else the run this session just trained
    (with the page's own defaults, ``fallback``, of the other methods), else the
    defaults; only runs in ``runs``."""
    ids = {r.run_id for r in runs}
    if url.runs:
        return [rid for rid in url.runs if rid in ids]
    chosen = [just_trained] if just_trained in ids else []
    by_id = {r.run_id: r for r in runs}
    taken = {by_id[rid].method for rid in chosen}
    for rid in fallback:
        if rid in ids and rid not in chosen and by_id[rid].method not in taken:
            chosen.append(rid)
    return chosen


# ---------------------------------------------------------------------- the widgets
def pick_runs(
    found: Sequence[RunInfo],
    page: str,
    label: Callable[[RunInfo], str],
    stamp: Callable[[RunInfo], float],
    fallback: Sequence[str],
    just_trained: str | None = None,
) -> tuple[list[RunInfo], dict[str, str]]:
    """The filter and the run menu of a page (keys ``{page}_filter_*``, ``{page}_runs``),
    their first values read from the URL. Returns the chosen runs, in the order picked,
    and the URL parameters that hold the choice (the page adds its own and writes
    them). The menu lists runs by label, newest first (``stamp``)."""
    import streamlit as st

    ordered = newest_first(found, stamp)
    url, problems = parse_run_params(st.query_params.to_dict(), ordered)
    for p in problems:
        st.warning(p)
    opts = filter_options(ordered)
    keys = {k: f"{page}_filter_{k}" for k in ("method", "r", "seed")}
    runs_key = f"{page}_runs"
    first_visit = runs_key not in st.session_state
    if first_visit:
        for k, key in keys.items():
            st.session_state[key] = list(getattr(url, k))
    active = any(st.session_state.get(key) for key in keys.values())
    with st.expander("Filter the runs by method, rank r and seed", expanded=active):
        c1, c2, c3 = st.columns(3)
    c1.multiselect("filter: method", opts["method"], key=keys["method"], placeholder="any method")
    c2.multiselect("filter: rank r (LoRA, QLoRA)", opts["r"], key=keys["r"], placeholder="any r")
    c3.multiselect("filter: seed", opts["seed"], key=keys["seed"], placeholder="any seed")
    flt = Selection(**{k: list(st.session_state[key]) for k, key in keys.items()})
    pool = filter_runs(ordered, flt)
    by_id = {r.run_id: r for r in ordered}
    if first_visit:
        st.session_state[runs_key] = default_ids(ordered, url, just_trained, fallback)
    # ids the filter hides stay out of the menu (and so out of the selection)
    pool_ids = [r.run_id for r in pool]
    hidden = [rid for rid in url.runs if rid not in pool_ids]
    if first_visit and hidden:
        st.info(f"Run(s) {', '.join(hidden)} of the link are hidden by its filter.")
    st.session_state[runs_key] = [rid for rid in st.session_state[runs_key] if rid in pool_ids]
    picked = st.multiselect(
        f"runs (newest first; {len(pool)} of {len(ordered)} shown)",
        pool_ids,
        key=runs_key,
        format_func=lambda rid: label(by_id[rid]),
        placeholder="pick one or more runs",
    )
    params = selection_params(Selection(list(picked), flt.method, flt.r, flt.seed))
    return [by_id[rid] for rid in picked], params
