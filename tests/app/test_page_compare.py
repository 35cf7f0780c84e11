"""Issue 24, the Compare page (AppTest, no browser): regular-verb accuracy and its change
next to irregular accuracy and drift; runs found by label, newest first, with a filter
by method, r and seed; the run this session just trained selected on opening; the
selection kept in the URL, a bad URL value a warning; and each method's colour fixed,
whatever runs are added or removed. The store is the shipped runs (empty user cache)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from page_util import open_page, texts  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import helpers, run_picker  # noqa: E402
from app.charts import compare as charts  # noqa: E402
from app.charts.common import method_color, run_color  # noqa: E402
from app.trainer import Trainer  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

try:  # where the live state lives once the trainer is a run queue
    from app.run_state import LiveState  # noqa: E402
except ImportError:  # pragma: no cover
    from app.trainer import LiveState  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180
LORA, FULL, QLORA = "0e9eca154689", "1f93a78d24f8", "d23c57249929"  # shipped defaults
LORA_SEED1 = "83e770d5e7f8"


def traces(at: AppTest, key: str) -> list[dict]:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key))
    return json.loads(chart.proto.spec)["data"]


def color_of(trace: dict) -> str:
    return (trace.get("line") or {}).get("color") or (trace.get("marker") or {}).get("color")


def assert_contract(trace: dict) -> None:
    """A run's trace: its meta names method and run, its colour is the method's or the
    run's own shade of it."""
    meta = trace["meta"]
    m, run = meta["method"], meta["run"]
    assert color_of(trace) in {method_color(m), run_color(m, run)}, (trace["name"], meta)


# ---------------------------------------------------------------------- item 1
def test_compare_shows_regular_accuracy_and_its_change_next_to_irregular_and_drift(
    empty_cache,
):
    at = open_page("compare", {"runs": f"{LORA},{FULL}"})
    keys = [c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")]
    assert keys[:3] == ["compare_acc", "compare_regular", "compare_drift"]
    table = at.dataframe[0].value
    cols = list(table.columns)
    i = cols.index("irregular acc.")
    assert cols[i + 1 : i + 5] == ["regular acc.", "regular acc. change", "EN drift", "ES drift"]
    base_row = table.iloc[0]
    assert base_row["method"] == "base" and base_row["regular acc. change"] == "+0.0 pts"
    runs = {r.run_id: r for r in RunStore().list()}
    base_regular = float(base_row["regular acc."].rstrip("%"))
    for _, row in table.iloc[1:].iterrows():
        rid = row["run"].rsplit(" ", 1)[-1]
        r = next(v for k, v in runs.items() if k.startswith(rid))
        assert row["regular acc."] == helpers.pct(r.final.regular_accuracy)
        change = float(row["regular acc. change"].split()[0])
        assert change == pytest.approx(100 * r.final.regular_accuracy - base_regular, abs=0.11)


def test_final_figures_rows_give_the_change_only_with_the_base_model(empty_cache):
    run = next(r for r in RunStore().list() if r.run_id == LORA)
    (row,) = helpers.final_figures_rows([run])
    assert row["regular acc. change"] == "–"


# ---------------------------------------------------------------------- item 4 (URL)
def test_compare_selection_and_filter_round_trip_through_the_url(empty_cache):
    query = {"runs": f"{LORA_SEED1},{LORA}", "method": "lora", "r": "8", "seed": "0,1"}
    at = open_page("compare", query)
    assert not at.warning, texts(at.warning)
    assert at.multiselect(key="compare_runs").value == [LORA_SEED1, LORA]
    assert at.multiselect(key="compare_filter_method").value == ["lora"]
    assert at.multiselect(key="compare_filter_seed").value == [0, 1]
    assert dict(at.query_params) == query
    options = at.multiselect(key="compare_runs").options
    labels = [o for o in options]  # shown by label, filtered: LoRA r=8, seeds 0 and 1
    assert labels and all(o.startswith("lora r=8 ") for o in labels)
    assert all(" · seed 0 · " in o or " · seed 1 · " in o for o in labels)
    at.multiselect(key="compare_runs").unselect(LORA_SEED1).run()
    assert at.query_params["runs"] == LORA
    # the link the page wrote opens the same selection
    again = open_page("compare", dict(at.query_params))
    assert again.multiselect(key="compare_runs").value == [LORA]


@pytest.mark.parametrize(
    "query",
    [{"runs": "zzzzzzzz"}, {"runs": "0e"}, {"method": "sgd"}, {"r": "eight"}, {"r": "3"},
     {"seed": "999999"}, {"seed": "[x](http://127.0.0.1:9/p)"}],
    ids=["unknown-id", "short-id", "method", "r-word", "r-absent", "seed-absent", "seed-link"],
)  # fmt: skip
def test_bad_compare_url_values_warn_and_the_page_still_opens(empty_cache, query):
    at = open_page("compare", query)
    warned = [w.value for w in at.warning if "URL parameter" in w.value]
    assert len(warned) == 1, texts(at.warning)
    assert "`" in warned[0]  # the value quoted as code
    assert not at.error and len(at.get("plotly_chart")) >= 3  # the defaults are drawn


def test_the_run_this_session_just_trained_is_selected(empty_cache, monkeypatch):
    token = "a" * 32
    done = LiveState(status="completed", owner=token, run_id=LORA_SEED1, version=3)
    monkeypatch.setattr(Trainer, "snapshot", lambda self: done)
    monkeypatch.setattr(  # the run queue's per-browser view, where the trainer has one
        Trainer,
        "snapshot_for",
        lambda self, owner: done if owner == token else LiveState(),
        raising=False,
    )
    at = open_page("compare", session={"minituner_owner": token})
    assert LORA_SEED1 in at.multiselect(key="compare_runs").value
    at = open_page("completions", session={"minituner_owner": token})
    assert at.multiselect(key="compl_runs").value == [LORA_SEED1]
    # another browser's run is not "yours"
    at = open_page("compare", session={"minituner_owner": "b" * 32})
    assert LORA_SEED1 not in at.multiselect(key="compare_runs").value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["runs", "method", "r", "seed", "other"]),
                       st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=3))))  # fmt: skip
def test_any_url_gives_a_selection_of_stored_values_or_one_quoted_warning_per_key(qp):
    """Invariant: whatever the URL holds, parse_run_params does not raise; what it keeps
    is stored (ids of stored runs, methods, ranks and seeds stored runs have) and each
    key it refuses gets messages that quote the value as code."""
    runs = [_run("0e9eca154689", "lora", 8, 0, True), _run("1f93a78d24f8", "full", 8, 1, True)]
    sel, problems = run_picker.parse_run_params(qp, runs)
    opts = run_picker.filter_options(runs)
    assert set(sel.runs) <= {r.run_id for r in runs}
    assert set(sel.method) <= set(opts["method"]) and set(sel.r) <= set(opts["r"])
    assert set(sel.seed) <= set(opts["seed"])
    assert all(p.startswith("URL parameter `") for p in problems)
    assert run_picker.parse_run_params(run_picker.selection_params(sel), runs) == (sel, [])


def _run(rid: str, method: str, r: int, seed: int, shipped: bool):
    ft = SimpleNamespace(method=method, r=r, seed=seed)
    return SimpleNamespace(run_id=rid, method=method, shipped=shipped,
                           finetune_config=lambda: ft)  # fmt: skip


def test_runs_are_listed_newest_first_and_filtered_by_method_r_and_seed():
    runs = [_run("a1", "lora", 8, 0, True), _run("b2", "full", 8, 1, False),
            _run("c3", "lora", 4, 1, False), _run("d4", "qlora", 8, 0, True)]  # fmt: skip
    stamp = {"a1": 5.0, "b2": 1.0, "c3": 2.0, "d4": 9.0}
    order = [r.run_id for r in run_picker.newest_first(runs, lambda r: stamp[r.run_id])]
    assert order == ["c3", "b2", "d4", "a1"]  # your cache first, each newest first
    sel = run_picker.Selection

    def ids(**kw):
        return [r.run_id for r in run_picker.filter_runs(runs, sel(**kw))]

    assert ids(method=["lora"]) == ["a1", "c3"]
    assert ids(r=[8]) == ["a1", "d4"]  # full fine-tuning has no r
    assert ids(seed=[1]) == ["b2", "c3"]
    assert ids(method=["lora", "qlora"], r=[8], seed=[0]) == ["a1", "d4"]
    assert run_picker.filter_options(runs) == {
        "method": ["full", "lora", "qlora"], "r": [4, 8], "seed": [0, 1]}  # fmt: skip


# ---------------------------------------------------------------------- item 1 (colours)
def test_method_colours_are_fixed_when_runs_are_added_or_removed(empty_cache):
    keys = ("compare_acc", "compare_regular", "compare_drift", "compare_loss")

    def colours(runs: str) -> dict[str, str]:
        at = open_page("compare", {"runs": runs})
        out = {}
        for key in keys:
            for t in traces(at, key):
                assert_contract(t)
                out.setdefault(t["meta"]["run"], color_of(t))
                assert out[t["meta"]["run"]] == color_of(t)  # one colour a run on every chart
        return out

    one = colours(FULL)  # each run in its own shade of its method, alone or not
    assert one[FULL] == run_color("full", FULL)
    more = colours(f"{LORA},{QLORA},{FULL}")
    assert more[FULL] == one[FULL] and more[LORA] == run_color("lora", LORA)
    assert more[QLORA] == run_color("qlora", QLORA)
    fewer = colours(f"{LORA},{LORA_SEED1}")  # two LoRA runs: each its own shade of LoRA
    assert fewer[LORA] == run_color("lora", LORA) and fewer[LORA_SEED1] == run_color(
        "lora", LORA_SEED1
    )
    assert colours(f"{QLORA},{LORA}")[LORA] == more[LORA]  # order and others do not matter


def test_run_colours_do_not_depend_on_the_order_of_the_runs():
    series = {"full a": ([1], [1.0]), "lora b": ([1], [2.0]), "qlora c": ([1], [3.0])}
    fwd = charts.loss_curves(series)
    rev = charts.loss_curves(dict(reversed(series.items())))
    assert {t.name: t.line.color for t in fwd.data} == {t.name: t.line.color for t in rev.data}
    assert {t.name: t.meta["method"] for t in fwd.data} == {
        "full a": "full", "lora b": "lora", "qlora c": "qlora"}  # fmt: skip
    assert fwd.layout.xaxis.title.text and fwd.layout.yaxis.title.text


def test_a_linked_run_the_links_filter_hides_is_named(empty_cache):
    at = open_page("compare", {"runs": f"{FULL},{LORA}", "method": "lora"})
    assert at.multiselect(key="compare_runs").value == [LORA]
    assert f"{FULL} of the link are hidden by its filter" in texts(at.info)
