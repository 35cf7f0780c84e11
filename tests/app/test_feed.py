"""app/feed.py and the live panel's markup (app/live.py): each job of the server has its
own feed file, which follows that job (a tab following one run never sees another's),
is replaced whole, is named per server and removed with it; files of dead servers are
swept; the panel's markup says what a tab will show (the browser side of the panel:
tests/e2e/test_live_js.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from app import feed as feedmod  # noqa: E402
from app.charts import verbs as verbs_mod  # noqa: E402
from app.charts.common import METRIC_COLORS  # noqa: E402
from app.run_state import LiveState  # noqa: E402
from minituner.finetune import events as ev  # noqa: E402


class FakeTrainer:
    """Today's jobs by id, and the version that moves with every change."""

    def __init__(self) -> None:
        self.states: dict[int, LiveState] = {}
        self.version = 0
        self.lists = 0

    def jobs(self) -> list[LiveState]:
        self.lists += 1
        return [dataclasses.replace(s, version=self.version) for s in self.states.values()]

    def move(self, job: int = 1, **changes) -> None:
        self.version += 1
        s = self.states.get(job, LiveState(job_id=job, status="waiting", position=1))
        self.states[job] = dataclasses.replace(s, **changes)


class FullDisk:
    """``os`` for app/feed.py on a full disk: replacing a file fails."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def replace(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")


def render(s: LiveState) -> dict[str, str]:
    return {"progress": f"<p>{s.status} {s.step}</p>", "loss": "<svg></svg>"}


def read(f: feedmod.Feed, job: int = 1) -> dict:
    return json.loads(f.path(job).read_text(encoding="utf-8"))


def wait_until(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return True
        except (OSError, ValueError):  # the file is not there yet
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest.fixture
def trainer() -> FakeTrainer:
    return FakeTrainer()


@pytest.fixture
def feed(trainer, tmp_path):
    f = feedmod.Feed(trainer, render, folder=tmp_path / "live", min_gap_s=0.05)
    yield f
    f.close()


def test_each_job_has_its_own_file_that_follows_it(feed, trainer):
    assert list(feed.folder.iterdir()) == []  # no job yet: no file
    trainer.move(1)  # job 1 waits
    assert wait_until(lambda: read(feed, 1)["status"] == "waiting")
    assert read(feed, 1) == {"job": 1, "version": 1, "running": False, "status": "waiting",
                             "parts": {"progress": "<p>waiting 0</p>", "loss": "<svg></svg>"}}  # fmt: skip
    trainer.move(2, status="running", step=3)  # job 2 trains: its own file
    assert wait_until(lambda: read(feed, 2)["parts"]["progress"] == "<p>running 3</p>")
    assert read(feed, 1)["version"] == 1  # job 1's file did not change
    for step in range(4, 9):  # a burst: the last state arrives
        trainer.move(2, step=step)
    assert wait_until(lambda: read(feed, 2)["parts"]["progress"] == "<p>running 8</p>")
    assert read(feed, 1)["version"] == 1
    trainer.move(2, status="completed", step=9)  # ended: no panel (the page draws it)
    assert wait_until(lambda: read(feed, 2)["status"] == "completed")
    assert read(feed, 2) == {"job": 2, "version": trainer.version, "running": False,
                             "status": "completed", "parts": {}}  # fmt: skip
    trainer.move(1, status="running")  # the waiting job starts: its file says so
    assert wait_until(lambda: read(feed, 1)["running"])
    assert read(feed, 1)["version"] > 1
    del trainer.states[1]  # gone from today's list: a last word for its watchers
    trainer.version += 1
    assert wait_until(lambda: read(feed, 1)["status"] == feedmod.GONE)
    names = sorted(p.name for p in feed.folder.iterdir())
    assert names == sorted([feed.name(1), feed.name(2)])  # no temporary file left


def test_an_unchanged_version_is_not_rendered_again(feed, trainer):
    n = trainer.lists
    time.sleep(0.5)  # several ticks of the thread
    assert trainer.lists == n


def test_a_reader_never_sees_half_a_file(feed, trainer):
    trainer.move(1, status="running")
    feed.publish()
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                json.loads(feed.path(1).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                bad.append(str(e))

    t = threading.Thread(target=reader)
    t.start()
    for step in range(200):
        trainer.move(1, step=step)
        feed.publish()
    done.set()
    t.join()
    assert not bad


def test_each_server_gets_its_own_random_name(trainer, tmp_path):
    a = feedmod.Feed(trainer, render, folder=tmp_path)
    b = feedmod.Feed(trainer, render, folder=tmp_path)
    try:
        assert a.name(7) != b.name(7) and a.name(7).startswith("live-")
        assert a.name(7).endswith("-7.json") and a.name(7) != a.name(8)
        assert a.url(7) == f"/app/static/live/{a.name(7)}"
        assert a.url(7, "/course/") == f"/course/app/static/live/{a.name(7)}"
    finally:
        a.close()
        b.close()


def test_close_removes_the_files_and_stops_the_thread(trainer, tmp_path):
    trainer.move(1)
    trainer.move(2)
    f = feedmod.Feed(trainer, render, folder=tmp_path)
    assert f.path(1).exists() and f.path(2).exists()
    f.close()
    f._thread.join(5)
    assert list(tmp_path.iterdir()) == [] and not f._thread.is_alive()


def test_files_of_dead_servers_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    gone = tmp_path / f"live-{pid}-abc.json"
    gone_tmp = tmp_path / f"live-{pid}-abc.json.tmp"
    mine = tmp_path / f"live-{os.getpid()}-def.json"
    other = tmp_path / "notes.json"
    odd = tmp_path / "live-x-1.json"
    for p in (gone, gone_tmp, mine, other, odd):
        p.write_text("{}")
    assert sorted(feedmod.sweep(tmp_path)) == sorted([gone, gone_tmp])
    assert mine.exists() and other.exists() and odd.exists()


def test_a_folder_that_cannot_be_made_raises_oserror(trainer, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        feedmod.Feed(trainer, render, folder=blocker / "live")


# ---------------------------------------------------------------- the panel's markup
def state(**kw) -> LiveState:
    return LiveState(status="running", steps=40, **kw)


def evaluation(step: int, **kw) -> ev.Evaluation:
    base = dict(step=step, irregular_accuracy=0.5, overregularized_rate=0.25,
                regular_accuracy=0.9, control_en_ppl=1.0, control_es_ppl=1.0,
                control_en_drift=0.01, control_es_drift=0.0,
                irregular_accuracy_per_verb={}, taught_accuracy={})  # fmt: skip
    fields = {f.name for f in dataclasses.fields(ev.Evaluation)}
    return ev.Evaluation(**{k: v for k, v in {**base, **kw}.items() if k in fields})


def test_panel_shows_progress_loss_and_the_charts():
    from app import live

    s = state(step=10, loss_steps=(1, 10), losses=(2.0, 1.25), tokens_per_s=1234.0,
              elapsed_s=3.25, phase="training <fast>")  # fmt: skip
    parts = live.panel_parts(s)
    assert list(parts) == ["progress", "figures", "loss", "verbs"]  # the order on screen
    assert set(live.SLOW_PARTS) <= set(parts)
    bar = parts["progress"]
    assert 'aria-valuenow="25"' in bar and "width:25.0%" in bar
    assert "step 10/40 · loss 1.2500 · 1,234 tokens/s · 3.2 s · training &lt;fast&gt;" in bar
    assert parts["figures"] == ""  # no evaluation yet
    assert parts["loss"].count("<svg") == 2  # the loss and the evaluation panels
    assert verbs_mod.NOT_YET in parts["verbs"]  # no evaluation yet: no per-verb panel
    html = live.panel_html(s)
    assert html == "".join(parts.values()) and "<script" not in html


def test_panel_leaves_out_a_non_finite_loss_and_names_a_lessons_verb():
    from app import live

    s = state(step=2, loss_steps=(2,), losses=(float("nan"),))
    assert "loss" not in live.panel_html(s).split("</div>")[0]
    lesson = state(step=2, config={"teach": "blick:black"},
                   evals=(evaluation(0, taught_accuracy={"blick": 0.25}),))  # fmt: skip
    html = live.panel_html(lesson)
    assert "<b>blick</b> held-out accuracy <b>25.0%</b>" in html
    assert "irregular verbs <b>50.0%</b>" in html and "+1.00%" in html
    assert "held-out accuracy" not in live.panel_html(state(evals=(evaluation(0),)))


def test_panel_figures_give_regular_verb_accuracy_and_its_change_since_the_base_model():
    """Issue 24, the honest headline: the live figures show regular-verb accuracy beside
    irregular-verb accuracy, each with its change since step 0 (the base model on the
    same sample), and the evaluation chart draws both."""
    from app import live

    evals = (evaluation(0, irregular_accuracy=0.25, regular_accuracy=1.0),
             evaluation(10, irregular_accuracy=0.875, regular_accuracy=0.75))  # fmt: skip
    parts = live.panel_parts(state(step=10, evals=evals, device="CPU"))
    figures = parts["figures"]
    assert "regular verbs <b>75.0%</b> (-25.0 pts)" in figures
    assert "irregular verbs <b>87.5%</b> (+62.5 pts)" in figures
    assert "on CPU" in parts["progress"]
    only_base = live.panel_parts(state(evals=evals[:1]))["figures"]
    assert "regular verbs <b>100.0%</b> ·" in only_base and "pts" not in only_base
    chart = ElementTree.fromstring(parts["loss"])
    lines = {e.get("data-metric"): e for e in chart.iter() if e.get("class") == "series"}
    assert set(lines) == {"loss", "irregular_accuracy", "regular_accuracy", "control_drift"}
    assert lines["regular_accuracy"].get("stroke") == METRIC_COLORS["regular_accuracy"]
    assert lines["regular_accuracy"].get("data-points") == "2"


def test_a_failed_write_is_logged_and_the_run_is_drawn_by_the_pages(
    feed, trainer, monkeypatch, caplog
):
    """issue 23, item 13: a feed that cannot be written (a full disk) was swallowed, and
    the panel waited for it forever. Now the failure is logged once per job, and the
    feed says it cannot carry that job while it runs (the page then draws it itself)."""
    trainer.move(1, status="running", step=0)
    feed.publish()
    assert feed.usable(trainer.jobs()[0])
    monkeypatch.setattr(feedmod, "os", FullDisk())  # only app/feed.py sees a full disk
    with caplog.at_level("WARNING", logger=feedmod.__name__):
        trainer.move(1, step=1)
        assert wait_until(lambda: feed.error is not None)
        for step in range(2, 5):  # the thread retries on news, and logs nothing more
            trainer.move(1, step=step)
        n = trainer.lists
        assert wait_until(lambda: trainer.lists >= n + 2)
    warnings = [  # this feed's file only (another test's feed thread may share the logger)
        r for r in caplog.records
        if "cannot be written" in r.getMessage() and str(feed.path(1)) in r.getMessage()
    ]  # fmt: skip
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
    (run,) = trainer.jobs()
    assert not feed.usable(run)
    assert read(feed)["parts"]["progress"] == "<p>running 0</p>"  # the old state...
    assert [p.name for p in feed.folder.iterdir()] == [feed.name(1)]  # ...and no temp file
    # space again: the file follows, but this run stays drawn by the pages
    monkeypatch.setattr(feedmod, "os", os)
    trainer.move(1, step=5)
    assert wait_until(lambda: read(feed)["parts"]["progress"] == "<p>running 5</p>")
    (run,) = trainer.jobs()
    assert feed.error is None and not feed.usable(run)
    trainer.move(1, status="completed")  # ended: its outcome reads from the working file
    assert wait_until(lambda: read(feed)["status"] == "completed")
    (run,) = trainer.jobs()
    assert feed.usable(run)
    trainer.move(2, status="running")  # the next job uses the feed
    assert feed.usable(trainer.jobs()[1])


def test_a_waiting_runs_panel_gives_its_place_in_line_and_when_it_starts():
    """Issue 25: a waiting tab shows its place in the queue and an estimate of its start."""
    from app import live

    parts = live.panel_parts(LiveState(status="waiting", position=2, eta_s=42.0, job_id=3))
    assert list(parts) == ["progress"]  # no charts before the run trains
    assert "<b>2 in line</b>" in parts["progress"] and "starts in about 40 s" in parts["progress"]
    first = live.panel_html(LiveState(status="waiting", position=1, eta_s=None, job_id=4))
    assert "<b>next in line</b>" in first and "starts in" not in first
    later = live.panel_html(LiveState(status="waiting", position=5, eta_s=610.0, job_id=5))
    assert "starts in about 10 min" in later
