"""Issue 24, the Forgetting page (AppTest, no browser): it opens with the matched-learning
answer in one plain sentence (no code names, numbers written as the table beside it
writes them, every number from the shipped experiments.json) and the chart that shows
it, then the per-method bars with a note that they compare each method at its own
default settings."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from app_util import shown  # noqa: E402
from page_util import open_page  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import data, helpers  # noqa: E402
from app.charts import forgetting as charts  # noqa: E402
from app.charts.common import method_color, metric_color  # noqa: E402
from minituner.experiments.claims import frontier_claim  # noqa: E402
from minituner.experiments.record import read_experiments  # noqa: E402
from minituner.paths import experiments_file  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180


def open_forgetting() -> AppTest:
    return open_page("forgetting")


def chart(at: AppTest, key: str) -> dict:
    return json.loads(
        next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key)).proto.spec
    )


def test_forgetting_opens_with_the_matched_learning_answer_in_one_sentence(empty_cache):
    exp = read_experiments(experiments_file())
    claim = frontier_claim(exp.frontier)
    at = open_forgetting()
    first = shown(at.markdown[0].value)
    answer = "Yes" if claim.held else "No"
    verdict = "forgets less" if claim.held else "does not forget less"
    assert first.startswith(f"**{answer}: at matched learning, LoRA {verdict} than full")
    assert first.count(". ") == 0 and first.endswith(".")  # one sentence
    assert "control_en" not in first and "_" not in first  # no code names
    d = exp.frontier.matched["control_en_drift"]
    r = exp.frontier.matched["regular_accuracy"]
    # its numbers are the record's, written as the table beside it writes them
    assert f"from {helpers.pct(d.levels[0])} to {helpers.pct(d.levels[-1])}" in first
    assert f"{abs(100 * d.mean_advantage):.2f} percentage points" in first
    assert f"{abs(100 * r.mean_advantage):.1f} percentage points" in first
    table = next(t.value for t in at.dataframe if "irregular acc. at least" in t.value.columns)
    assert list(table["irregular acc. at least"]) == [helpers.pct(x) for x in d.levels]
    # the chart that shows it comes first, one line per method and measure
    assert at.get("plotly_chart")[0].proto.id.endswith("forget_matched")
    fig = chart(at, "forget_matched")
    lines = {(t["meta"]["method"], t["yaxis"]): t for t in fig["data"]}
    assert set(lines) == {(m, y) for m in ("lora", "full") for y in ("y", "y2")}
    assert lines[("full", "y")]["y"] == pytest.approx([100 * v for v in d.full])
    assert lines[("lora", "y2")]["y"] == pytest.approx([100 * v for v in r.lora])
    for (m, _), t in lines.items():
        assert t["line"]["color"] == method_color(m)
    assert fig["layout"]["xaxis"]["title"]["text"] and fig["layout"]["yaxis2"]["title"]["text"]


def test_per_method_bars_come_after_with_the_note_on_defaults(empty_cache):
    exp = read_experiments(experiments_file())
    at = open_forgetting()
    keys = [c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")]
    assert keys.index("forget_matched") < keys.index("forget_bars")
    note = shown(at.info[0].value)
    assert "each method at its own default settings" in note
    for m, v in exp.forgetting.items():
        assert f"{m} {helpers.pct(v.irregular_accuracy.mean)}" in note
    assert "lora r=8 a=16 q,v lr=0.005 steps=40" in note  # the settings, read from the runs
    bars = chart(at, "forget_bars")["data"]
    assert [t["meta"]["metric"] for t in bars] == ["control_drift", "spanish_drift"]
    assert [t["marker"]["color"] for t in bars] == [metric_color(k) for k in
                                                   ("control_drift", "spanish_drift")]  # fmt: skip
    regular = chart(at, "forget_regular")["data"]
    assert [t["meta"]["method"] for t in regular] == list(exp.forgetting)
    assert [t["marker"]["color"] for t in regular] == [method_color(m) for m in exp.forgetting]


def _matched(adv: list[float], a: list[float], b: list[float]) -> SimpleNamespace:
    return SimpleNamespace(levels=[0.9, 0.95], lora=a, full=b, advantage=adv,
                           mean_advantage=sum(adv) / len(adv), wins=sum(x > 0 for x in adv))  # fmt: skip


def test_the_sentence_follows_the_record_whichever_way_it_goes():
    lora_wins = {
        "control_en_drift": _matched([0.02, 0.04], [0.01, 0.02], [0.03, 0.06]),
        "regular_accuracy": _matched([0.1, 0.3], [0.9, 0.8], [0.8, 0.5]),
    }
    s = helpers.matched_answer(lora_wins)
    assert s.startswith("**Yes: at matched learning, LoRA forgets less than full")
    assert "drift is lower by 3.00 percentage points on average (lower at 2 of 2)" in s
    assert "accuracy is higher by 20.0 percentage points on average (higher at 2 of 2)" in s
    apart = {
        k: SimpleNamespace(**{**vars(v), "mean_advantage": None}) for k, v in lora_wins.items()
    }
    assert "cannot be compared" in helpers.matched_answer(apart)
    assert helpers.matched_answer({}) is None


def test_no_frontier_section_no_sentence_and_the_page_still_opens(
    empty_cache, tmp_path, monkeypatch
):
    exp = json.loads(experiments_file().read_text(encoding="utf-8"))
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps({k: v for k, v in exp.items() if k != "frontier"}))
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", path)
    at = open_forgetting()
    assert not re.match(r"\*\*(Yes|No):", at.markdown[0].value)
    assert "--only frontier" in "\n".join(i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("forget_matched")]


def test_frontier_and_replay_traces_carry_their_method_colour():
    exp = read_experiments(experiments_file())
    for fig in (
        charts.frontier(exp.frontier, "control_en_drift", "d (%)"),
        charts.replay(exp.replay),
    ):
        for t in fig.data:
            assert t.meta["method"] in ("full", "lora", "qlora")
            colour = t.marker.color if t.mode == "markers" else t.line.color
            assert colour == method_color(t.meta["method"])
