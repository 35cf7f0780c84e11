"""The Class page (app/views/class_page.py) and its chart (app/charts/class_chart.py),
issue 25: every run of this server today (waiting, training, finished, failed, taken
by another server) with the session's nickname, shown as text; a nickname typed on the
page names the session's runs; the finished runs drawn on the learning-forgetting
frontier over the shipped grid, in the visual language of app/charts/common.py.
The queue is filled directly (no child process): the page only reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
APP_TIMEOUT = 180

from app_util import shown  # noqa: E402

from app.charts import class_chart  # noqa: E402
from app.charts.common import method_color, run_color  # noqa: E402
from app.trainer import Trainer  # noqa: E402
from minituner.finetune.config import FinetuneConfig  # noqa: E402
from minituner.store.runs import RunStore  # noqa: E402

ME = "0123456789abcdef0123456789abcdef"
EVIL = "[x](http://127.0.0.1:9/) <b>bold</b>"  # within NICKNAME_MAX


def _job(**kw) -> dict:
    return {"config": FinetuneConfig(**kw).to_dict(), "device": "cpu", "cache": None,
            "eval_limit": 4}  # fmt: skip


@pytest.fixture
def shipped():
    """Two shipped runs of different methods (their figures are real)."""
    runs = RunStore().list()
    by_method = {}
    for r in runs:
        by_method.setdefault(r.method, r)
    return by_method["lora"], by_method["full"]


@pytest.fixture
def class_trainer(tmp_path, monkeypatch, shipped):
    """A server whose queue holds a class's day: two finished runs, one failed, one
    training on another server, one waiting; the page's trainer is this one."""
    from app import data, live

    t = Trainer(db=tmp_path / "queue.sqlite3", max_runs=1, device="cpu", background=False)
    lora, full = shipped
    q = t.queue
    for owner, nickname, info in ((ME, "", lora), ("f" * 32, EVIL, full)):
        job = q.submit(owner, _job(**info.finetune_config().to_dict()), nickname)
        q.claim(t.server, job_id=job.id)
        q.finish(job.id, "finished", t.server, run_id=info.run_id)
    failed = q.submit("a" * 32, _job(seed=3), "Ada")
    q.claim(t.server, job_id=failed.id)
    q.finish(failed.id, "failed", t.server, message="RuntimeError: out of memory")
    q.submit("b" * 32, _job(seed=4), "Bo")
    q.claim("another-server", host="elsewhere")  # trains on another server of the cache
    q.submit("c" * 32, _job(seed=5), "Cy")  # waits
    monkeypatch.setattr(data, "get_trainer", lambda: t)
    monkeypatch.setattr(live, "_cookies", lambda: {live.OWNER_COOKIE: ME})
    yield t
    t.close()


def _page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=APP_TIMEOUT)
    at.run()
    at.switch_page("views/class_page.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _rows(at) -> list[dict]:
    (table,) = at.table
    df = table.value

    def text(v) -> str:  # as displayed: escapes out, the word joiner inside :// too
        return shown(str(v)).replace("\u2060", "")

    return [{text(k): text(v) for k, v in row.items()} for row in df.to_dict("records")]


def test_the_class_page_lists_every_run_of_today_with_who_trained_it(class_trainer, shipped):
    at = _page()
    rows = _rows(at)
    assert len(rows) == 5
    lora, full = shipped
    by_status = {r["status"].split(":")[0]: r for r in rows}
    assert set(by_status) == {"finished", "failed", "training", "waiting"}
    mine = next(r for r in rows if r["who"].endswith("(you)"))
    assert mine["run"] == lora.run_id and mine["irregular accuracy"].endswith("%")
    evil = next(r for r in rows if r["run"] == full.run_id)
    assert evil["who"] == EVIL  # the nickname is text: no link, no bold
    assert "out of memory" in by_status["failed"]["status"]
    assert "1 in line" in by_status["waiting"]["status"]
    assert by_status["waiting"]["who"] == "Cy"
    assert "(you)" not in by_status["training"]["who"]


def test_a_nickname_typed_on_the_page_names_the_sessions_runs(class_trainer, shipped):
    at = _page()
    at.text_input(key="class_nickname").input("Table 3 <i>x</i>").run()
    assert not at.exception, [e.value for e in at.exception]
    mine = [j for j in class_trainer.queue.jobs() if j.owner == ME]
    assert [j.nickname for j in mine] == ["Table 3 <i>x</i>"]
    rows = _rows(at)
    assert any(r["who"] == "Table 3 <i>x</i> (you)" for r in rows)
    assert "Table 3 <i>x</i>" not in "".join(str(e.value) for e in at.markdown)


def test_the_finished_runs_are_drawn_on_the_frontier_over_the_shipped_grid(class_trainer, shipped):
    at = _page()
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    import json

    lora, full = shipped
    for chart, (measure, title) in zip(charts, class_chart.PANELS, strict=True):
        fig = json.loads(chart.proto.spec)
        runs = {t["meta"]["run"]: t for t in fig["data"]}
        assert {lora.run_id, full.run_id} <= set(runs)
        assert class_chart.SHIPPED in runs, "the shipped frontier grid is drawn"
        star = runs[lora.run_id]
        assert star["marker"]["color"] == run_color("lora", lora.run_id)
        want = getattr(lora.final, measure)
        assert star["y"][0] == pytest.approx(100 * want)
        assert star["x"][0] == pytest.approx(100 * lora.final.irregular_accuracy)
        assert fig["layout"]["xaxis"]["title"]["text"] == class_chart.LEARNING_TITLE
        assert fig["layout"]["yaxis"]["title"]["text"] == title


def test_the_chart_gives_each_run_its_shade_and_each_trace_its_meta():
    p = class_chart.ClassPoint("0123456789ab", "lora", "LoRA r=1", "Ann", 0.5, 0.02, 0.9)
    q = class_chart.ClassPoint("ba9876543210", "full", "full", "Bo", 0.7, 0.2, None)
    fig = class_chart.class_frontier([p, q], None, "regular_accuracy", "regular (%)")
    (trace,) = fig.data  # a run stored before the measure existed is left out
    assert trace.meta == {"method": "lora", "run": "0123456789ab"}
    assert trace.marker.color == run_color("lora", "0123456789ab")
    assert trace.marker.color != method_color("full")
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "regular (%)"


def test_an_empty_day_says_so(tmp_path, monkeypatch):
    from app import data

    t = Trainer(db=tmp_path / "queue.sqlite3", max_runs=1, device="cpu", background=False)
    monkeypatch.setattr(data, "get_trainer", lambda: t)
    at = _page()
    assert any("No run on this server today" in str(e.value) for e in at.info)
    assert len(at.get("plotly_chart")) == 2  # the shipped grid alone
    t.close()


def test_a_queue_problem_is_a_warning_on_the_page(tmp_path, monkeypatch):
    from app import data

    db = tmp_path / "queue.sqlite3"
    db.write_bytes(b"garbage" * 100)
    t = Trainer(db=db, max_runs=1, device="cpu", background=False)
    monkeypatch.setattr(data, "get_trainer", lambda: t)
    at = _page()
    warnings = [shown(str(e.value)) for e in at.warning]
    assert any("cannot be used" in w and "queue.sqlite3" in w for w in warnings), warnings
    t.close()


def test_without_experiments_the_class_runs_are_drawn_alone(class_trainer, shipped, tmp_path,
                                                            monkeypatch):  # fmt: skip
    from app import data

    monkeypatch.setattr(data, "EXPERIMENTS_PATH", tmp_path / "missing.json")
    at = _page()
    import json

    for chart in at.get("plotly_chart"):
        runs = {t["meta"]["run"] for t in json.loads(chart.proto.spec)["data"]}
        assert runs == {r.run_id for r in shipped}  # no shipped grid: the two class runs
    assert any("missing" in shown(str(w.value)) for w in at.warning)
