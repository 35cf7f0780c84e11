"""Issue 23, items 1 and 2, and its acceptance test: every string that comes from a URL, a
file or a run record is shown as text, never as Markdown or HTML.

Streamlit renders Markdown (links, images, ``:red[…]`` directives) in warnings, infos,
captions, metrics and st.table cells, and plotly renders ``<a href>``, ``<b>``, ``<br>``
in titles, legends, tick labels and hover text. :func:`injections` reads what each page
would draw (the Markdown of every element, the JSON of every plotly figure) and names
each link, image, raw HTML tag, bare URL (GFM links those) or Streamlit directive the app
did not put there. The app itself draws none in those places, so any one found came
from the data.

The pages read a data folder copied from precomputed/ (the base model and three shipped
runs) into a temporary folder, its records' strings replaced by the payloads; the user
cache is an empty temporary folder.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import data, format  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180
PAGES = ("overview", "train", "teach", "compare", "completions", "spectrum", "forgetting",
         "memory", "rank_sweep", "nf4")  # fmt: skip
# the shipped runs the pages open on: the default LoRA, full and QLoRA runs
RUNS = ("0e9eca154689", "1f93a78d24f8", "d23c57249929")
BROKEN = "0123456789ab"  # a copy of the LoRA run made unreadable by a payload
TRAIN_PARAMS = ("method", "r", "alpha", "lr", "steps", "seed", "targets")
HOST = "http://127.0.0.1:9"  # nothing listens there
ATTACKS = (
    f"![i]({HOST}/x.gif)",
    f"[Log in again]({HOST}/phish)",
    ":red[**alarm**] :blue-background[x] :material/home: :smile:",
    f"<a href='{HOST}/a'>click</a>",
    f'<img src="{HOST}/i.gif">',
    "<b>bold</b><br><i>it</i><span style='color:red'>s</span><sup>2</sup>",
    f"{HOST}/bare www.example.com mail@example.com",
    f"<{HOST}/autolink>",
    f"[ref]\n\n[ref]: {HOST}/ref",
    "`` ` ``` code ` ``",
    "$x^2$ $$y$$ \\(z\\)",
    "\\",
    "\n# heading\n---\n- item\n1. item\n> quote\n    indented",
    "\x00\x07\x1b[31m\r\n\t\u2028\u202e",
    "&lt;a href=x&gt;link&lt;/a&gt; &#60;img&#62;",
    "** _ ~~ | = # + - . ! ( ) { } [ ] < > @ : ; ' \"",
)


# ---------------------------------------------------------------------- the check
_MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
# what GitHub's autolink-literal extension (remark-gfm, in Streamlit's Markdown) links in
# the parsed text, after the backslash escapes are gone
_BARE = re.compile(r"(?i)(?:https?://|www(?=\.))[-.\w]+|(?<![-.\w+])[-.\w+]+@[-\w]+(?:\.[-\w]+)+")
_DIRECTIVE = re.compile(r"(?<!\\):[A-Za-z][\w-]*(?:/[\w-]+)?(?:\[|:)")
_TAG = re.compile(r"(?i)<\s*(?:a|img|iframe|image|svg:a)\b")
_LINKS = ("link_open", "image", "html_inline", "html_block")


def _tokens(tokens):
    for t in tokens:
        yield t
        yield from _tokens(t.children or [])


def markdown_injections(src: str) -> list[str]:
    """The links, images, raw HTML, bare URLs and Streamlit directives in a Markdown body."""
    tokens = list(_tokens(_MD.parse(src)))
    found = [f"{t.type} {t.content or t.attrs}" for t in tokens if t.type in _LINKS]
    for t in tokens:  # each run of text, as the reader sees it
        if t.type == "inline":
            text = "".join(c.content if c.type == "text" else "\n" for c in t.children or [])
            found += [f"bare link {m.group(0)!r}" for m in _BARE.finditer(text)]
    text = _CODE_SPAN.sub("", src)  # a code span shows its content as it is
    found += [f"directive {m.group(0)!r}" for m in _DIRECTIVE.finditer(text)]
    return found


def _strings(o):
    if isinstance(o, str):
        yield o
    elif isinstance(o, dict):
        for k, v in o.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(o, list):
        for v in o:
            yield from _strings(v)


MARKDOWN_KINDS = ("markdown", "caption", "warning", "info", "error", "success", "title",
                  "header", "subheader", "toast")  # fmt: skip


def injections(at: AppTest) -> list[str]:
    """Every link, image or markup in what the page draws that the app did not put there."""
    found = []
    for kind in MARKDOWN_KINDS:
        for e in at.get(kind):
            body = e.proto.body
            if getattr(e.proto, "allow_html", False):  # the app's own SVG charts
                found += [f"{kind}: html {m.group(0)!r}" for m in _TAG.finditer(body)]
            else:
                found += [f"{kind}: {p}" for p in markdown_injections(body)]
    for e in at.get("html"):
        found += [f"html: {m.group(0)!r}" for m in _TAG.finditer(e.proto.body)]
    for e in at.get("metric"):
        for part in (e.proto.label, e.proto.body, e.proto.delta):
            found += [f"metric: {p}" for p in markdown_injections(part)]
    for e in at.get("expandable"):
        found += [f"expander: {p}" for p in markdown_injections(e.proto.expandable.label)]
    for e in at.table:  # st.table renders Markdown in its cells and headers
        df = e.value
        cells = [str(c) for c in df.columns] + [str(v) for v in df.to_numpy().ravel()]
        found += [f"table: {p}" for c in cells for p in markdown_injections(c)]
    for e in at.get("plotly_chart"):  # plotly renders <a href>, <b>, <br> in its text
        spec = json.loads(e.proto.spec)
        found += [f"plotly: {m.group(0)!r}" for s in _strings(spec) for m in _TAG.finditer(s)]
    return found


def test_the_check_finds_what_the_issue_reports():
    """The check is real: the issue's payloads, unescaped, are found."""
    assert markdown_injections(f"URL parameter r='![i]({HOST}/x.gif)' ignored")
    assert markdown_injections(f"steps='[Log in again]({HOST}/phish)'")
    assert markdown_injections("device: :red[**alarm**]")
    assert markdown_injections(f"see {HOST}/x")
    assert markdown_injections("see http\\://x, www\\.example\\.org or a\\@b\\.org")  # GFM links
    assert not markdown_injections(f"value `![i]({HOST}/x.gif)` ignored")
    assert not markdown_injections("**bold** and *words* (the app's own Markdown)")
    assert _TAG.search(f"<a href='{HOST}'>x</a>") and not _TAG.search("&lt;a href")


# ---------------------------------------------------------------------- the helpers
payloads = st.one_of(
    st.sampled_from(ATTACKS),
    st.text(max_size=60),
    st.lists(st.one_of(st.sampled_from(ATTACKS), st.text(max_size=20)), min_size=1, max_size=4).map(
        "".join
    ),  # fmt: skip
)


@given(payloads)
@example("\u2060")  # a joiner in the string itself (hypothesis found it): invisible too
def test_md_text_shows_any_string_as_its_text(s):
    """format.md_text: no link, image, HTML or directive, and the text read back is the
    string (control characters and line breaks as spaces)."""
    src = format.md_text(s)
    assert not markdown_injections(src), src
    html = _MD.render(src)
    assert "<a" not in html and "<img" not in html
    shown = _MD.parseInline(src)[0].children
    text = "".join(t.content for t in shown if t.type == "text")
    joiner = "\u2060"  # invisible: md_text's own and any in the string alike
    assert text.replace(joiner, "") == format.visible(s).replace(joiner, "")


@given(payloads)
@example("<sup>2</sup>`" * 40)  # longer than format.LIMIT: quoted cut, with its "…"
def test_md_code_quotes_any_string_as_one_code_span(s):
    """format.md_code: one code span holding the string, whatever backticks it has."""
    src = format.md_code(s)
    (para,) = [t for t in _MD.parse(src) if t.type == "inline"]
    assert [t.type for t in para.children] == ["code_inline"], src
    assert para.children[0].content.strip() == format.visible(s, format.LIMIT).strip()


@given(payloads)
def test_plotly_text_leaves_no_tag(s):
    assert not _TAG.search(format.plotly_text(s))


# ---------------------------------------------------------------------- a crafted store
def _runs_and_base(dest: Path) -> None:
    src = REPO_ROOT / "precomputed"
    shutil.copytree(src / "base", dest / "base")
    for rid in RUNS:
        shutil.copytree(src / "runs" / rid, dest / "runs" / rid)
    shutil.copytree(src / "runs" / RUNS[0], dest / "runs" / BROKEN)
    for name in ("experiments.json", "subspace.json"):
        shutil.copy(src / name, dest / name)
    shutil.copytree(src / "scaling", dest / "scaling")


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("crafted") / "data"
    _runs_and_base(dest)
    return dest


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def craft(folder: Path, payload: str) -> None:
    """Write ``payload`` into every string field of the records the pages show: the
    device and message of each run and of the base model, a verb name in every per-verb
    dict, a layer name in a spectrum, the memory's device, the elbow's definition and the
    subspace labels; and a broken run whose unknown field is named by it."""
    src = REPO_ROOT / "precomputed"
    key = payload[:1000] or "?"  # a name, not a 1 MB one in every evaluation

    def verbs(d: dict) -> None:
        per_verb = d.get("irregular_accuracy_per_verb")
        if isinstance(per_verb, dict):
            per_verb[key] = 0.5

    base = _read(src / "base" / "metrics.json")
    base["device"] = payload
    verbs(base)
    _write(folder / "base" / "metrics.json", base)
    for rid in RUNS:
        m = _read(src / "runs" / rid / "metrics.json")
        m["device"], m["message"] = payload, payload
        verbs(m)
        for e in m["evals"]:
            verbs(e)
        if isinstance(m.get("memory"), dict):
            m["memory"]["measured"]["device"] = payload
        _write(folder / "runs" / rid / "metrics.json", m)
        spec = _read(src / "runs" / rid / "spectrum.json")
        layer = next(k for k in spec if k != "schema_version")
        spec[key if key != "schema_version" else "?"] = spec[layer]
        _write(folder / "runs" / rid / "spectrum.json", spec)
    broken = folder / "runs" / BROKEN
    cfg = _read(src / "runs" / RUNS[0] / "config.json")
    cfg["run_id"] = BROKEN
    cfg[key] = payload  # an unknown field: the run's warning names it
    _write(broken / "config.json", cfg)
    exp = _read(src / "experiments.json")
    if isinstance(exp.get("rank_sweep", {}).get("elbow"), dict):
        exp["rank_sweep"]["elbow"]["definition"] = payload
    _write(folder / "experiments.json", exp)
    sub = _read(src / "subspace.json")
    for p in sub.get("pairs", []):
        p["label"] = payload
    _write(folder / "subspace.json", sub)


@contextmanager
def crafted_app(folder: Path, cache: Path, monkeypatch):
    """The app reading ``folder``: caches are cleared before and after, so no page of
    another test sees the crafted base model's figures."""
    import streamlit as stl

    monkeypatch.setenv("MINITUNER_DATA", str(folder))
    monkeypatch.setenv("MINITUNER_CACHE", str(cache))
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", None)
    stl.cache_resource.clear()
    stl.cache_data.clear()
    try:
        yield
    finally:
        stl.cache_resource.clear()
        stl.cache_data.clear()


def render(page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    if query:
        at.query_params.update(query)
    at.run()
    if page != "overview":
        at.switch_page(f"views/{page}.py")
        at.run()
    assert not at.exception, (page, [e.value[:300] for e in at.exception])
    return at


# ---------------------------------------------------------------------- item 1
@pytest.mark.parametrize(
    "query",
    [
        {"r": f"![i]({HOST}/x.gif)"},
        {"steps": f"[Log in again]({HOST}/phish)"},
        {"seed": ":red[**Your session expired**]"},
        {"targets": f"q,[x]({HOST}/t)", "method": f"![m]({HOST}/m.gif)"},
        {"alpha": f"`` ![a]({HOST}/a.gif) ``", "lr": f"<img src={HOST}/i.gif>"},
    ],
    ids=["image", "link", "directive", "targets", "backticks"],
)
def test_url_values_in_the_train_warnings_are_shown_as_code(query, empty_cache):
    """Issue 23, item 1: a shared Train link's values are quoted as code in the
    "URL parameter … ignored" warnings, never rendered."""
    at = render("train", query)
    warnings = [w.value for w in at.warning if "URL parameter" in w.value]
    assert len(warnings) == len(query), warnings
    assert not injections(at), injections(at)
    for w in warnings:  # the value itself is in a code span, readable
        assert "`" in w


# ---------------------------------------------------------------------- item 2
ITEM2 = f"<a href='{HOST}/a'>x</a> ![i]({HOST}/x.gif) [Log in again]({HOST}/phish) :red[**x**]"


@pytest.mark.parametrize("page", ["overview", "train", "compare"])
def test_strings_from_a_crafted_store_are_shown_as_text(page, data_folder, tmp_path, monkeypatch):
    """Issue 23, item 2: a metrics.json's device (Overview caption, Train table), an
    unknown field name (the run warnings) and verb names (Compare's order sentence and
    legend) are shown as text."""
    craft(data_folder, ITEM2)
    with crafted_app(data_folder, tmp_path / "cache", monkeypatch):
        at = render(page)
        assert not injections(at), injections(at)
        if page != "train":  # the broken run is reported, its field name as text
            assert BROKEN in "\n".join(w.value for w in at.warning)
        if page == "overview":  # the device, as text in the caption (no metric delta)
            assert any("Log in again" in c.value for c in at.caption)
        if page == "train":
            assert any(
                "Log in again" in str(v) for t in at.table for v in t.value.to_numpy().ravel()
            )
        if page == "compare":
            assert "Log in again" in "\n".join(m.value for m in at.markdown)
            spec = "".join(e.proto.spec for e in at.get("plotly_chart"))
            assert "&lt;a href" in spec  # the verb's name, escaped for plotly


# ---------------------------------------------------------------------- acceptance
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(
    store=st.one_of(payloads, st.sampled_from(ATTACKS).map(lambda a: "x" * (1 << 20) + a)),
    url=st.fixed_dictionaries({k: payloads for k in TRAIN_PARAMS}),
)
def test_no_page_renders_a_link_or_markup_from_the_data(
    store, url, data_folder, tmp_path, monkeypatch
):
    """Issue 23, acceptance: arbitrary strings (Markdown, HTML, plotly tags, control
    characters, 1 MB) in every string field of the run records and in every URL
    parameter; every page renders without an exception and without a link, image or
    markup that the app did not put there."""
    craft(data_folder, store)
    with crafted_app(data_folder, tmp_path / "cache", monkeypatch):
        for page in PAGES:
            at = render(page, url)
            assert not at.error, (page, [e.value[:300] for e in at.error])
            assert "No runs in the store" not in "\n".join(i.value for i in at.info), page
            assert not injections(at), (page, injections(at)[:5])
