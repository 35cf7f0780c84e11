"""The Forgetting page's frontier and replay sections under AppTest (no browser), on the
shipped runs and summary: the charts, the measured answer, the tables; the metrics-only
runs of those grids never reach the run pickers; an experiments file without these
sections gives a hint, a malformed one a warning, never an exception."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import data  # noqa: E402
from minituner.experiments.claims import frontier_claim  # noqa: E402
from minituner.experiments.record import read_experiments  # noqa: E402
from minituner.paths import experiments_file, runs_dir  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
TIMEOUT = 180


def open_forgetting() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/forgetting.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def table_with(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _lean_ids() -> set[str]:
    out = set()
    for p in runs_dir().iterdir():
        m = p / "metrics.json"
        if m.is_file() and json.loads(m.read_text()).get("weights_saved") is False:
            out.add(p.name)
    return out


def test_forgetting_page_shows_the_frontier_and_the_replay_sweep(empty_cache):
    exp = read_experiments(experiments_file())
    at = open_forgetting()
    assert not at.warning, texts(at.warning)
    heads = [s.value for s in at.subheader]
    assert "Learning vs forgetting: the frontier" in heads
    assert "Replay: mixing regular verbs back in" in heads
    keys = {c.key for c in at.get("plotly_chart")}
    assert {"frontier_control_en_drift", "frontier_regular_accuracy", "replay_chart"} <= keys
    claim = frontier_claim(exp.frontier)
    answer = "Yes" if claim.held else "No"
    first = at.markdown[0].value  # issue 24: the page opens with the answer, in plain words
    assert first.startswith(f"**{answer}: at matched learning, LoRA ")
    assert "control_en" not in first
    matched = table_with(at, "irregular acc. at least")
    assert len(matched) == len(exp.frontier.matched["control_en_drift"].levels)
    replay = table_with(at, "replay")
    assert len(replay) == len(exp.replay.lora) + len(exp.replay.full)
    assert list(replay["replay"][:4]) == ["0%", "5%", "10%", "25%"]
    assert "--only frontier" in texts(at.caption) and "--only replay" in texts(at.caption)

    # the grids' runs have no weights: the picker offers only runs with them
    lean = _lean_ids()
    assert lean, "the shipped store has metrics-only runs"
    options = at.multiselect(key="forget_runs").options
    assert options and not any(o.split()[0] in lean for o in options)


def test_old_or_malformed_summaries_do_not_break_the_page(empty_cache, tmp_path, monkeypatch):
    exp = json.loads(experiments_file().read_text(encoding="utf-8"))
    path = tmp_path / "experiments.json"
    monkeypatch.setattr(data, "EXPERIMENTS_PATH", path)

    old = {k: v for k, v in exp.items() if k not in ("frontier", "replay")}
    path.write_text(json.dumps(old))
    at = open_forgetting()
    assert not at.warning, texts(at.warning)
    assert "precompute --only frontier" in texts(at.info)
    assert "precompute --only replay" in texts(at.info)
    assert not {"frontier_control_en_drift", "replay_chart"} & {
        c.key for c in at.get("plotly_chart")
    }

    broken = {**exp, "frontier": {"configs": [{"method": "lora"}]}, "replay": {"lora": [{}]}}
    path.write_text(json.dumps(broken))
    at = open_forgetting()
    warned = texts(at.warning)
    assert "frontier summary in experiments.json is malformed" in warned
    assert "replay summary in experiments.json is malformed" in warned


def test_frontier_chart_draws_every_config_and_each_front_as_a_step():
    from app.charts import forgetting as charts

    exp = read_experiments(experiments_file()).frontier
    fig = charts.frontier(exp, "control_en_drift", "control English drift (%)")
    by_name = {t.name: t for t in fig.data}
    for method in ("full", "lora", "qlora"):
        configs = [c for c in exp.configs if c.method == method]
        assert len(by_name[method].x) == len(configs)
        front = [exp.configs[i].stats for i in exp.fronts["control_en_drift"][method]]
        if len(front) > 1:
            line = by_name[f"{method} front"]
            assert line.line.shape == "vh"
            assert list(line.x) == pytest.approx([100 * a.irregular_accuracy.mean for a in front])
            assert list(line.y) == pytest.approx([100 * a.control_en_drift.mean for a in front])
    replay = read_experiments(experiments_file()).replay
    fig = charts.replay(replay)
    lora = [t for t in fig.data if t.name == "lora"]
    assert len(lora) == 3 and list(lora[1].x) == [0.0, 5.0, 10.0, 25.0]
    assert list(lora[1].y) == pytest.approx(
        [100 * e.stats.regular_accuracy.mean for e in replay.lora]
    )
