"""app/feed.py and the live panel's markup (app/live.py): the feed file follows the
trainer's version, is replaced whole, is named per server and removed with it; files of
dead servers are swept; the panel's markup says what a tab will show (the browser side
of the panel: tests/e2e/test_live_js.py)."""

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
from app.trainer import LiveState  # noqa: E402
from minituner.finetune import events as ev  # noqa: E402


class FakeTrainer:
    def __init__(self) -> None:
        self.state = LiveState()
        self.snapshots = 0

    @property
    def version(self) -> int:
        return self.state.version

    def snapshot(self) -> LiveState:
        self.snapshots += 1
        return self.state

    def move(self, **changes) -> None:
        self.state = dataclasses.replace(self.state, version=self.state.version + 1, **changes)


class FullDisk:
    """``os`` for app/feed.py on a full disk: replacing a file fails."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def replace(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")


def render(s: LiveState) -> dict[str, str]:
    return {"progress": f"<p>step {s.step}</p>", "loss": "<svg></svg>"}


def read(f: feedmod.Feed) -> dict:
    return json.loads(f.path.read_text(encoding="utf-8"))


def wait_until(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def trainer() -> FakeTrainer:
    return FakeTrainer()


@pytest.fixture
def feed(trainer, tmp_path):
    f = feedmod.Feed(trainer, render, folder=tmp_path / "live", min_gap_s=0.05)
    yield f
    f.close()


def test_the_file_exists_at_once_and_follows_the_version(feed, trainer):
    # idle: no panel (the page draws an outcome itself), so idle tabs poll a tiny file
    assert read(feed) == {"version": 0, "running": False, "status": "idle", "parts": {}}
    trainer.move(status="running", step=3)
    assert wait_until(lambda: read(feed)["version"] == 1)
    assert read(feed) == {
        "version": 1,
        "running": True,
        "status": "running",
        "parts": {"progress": "<p>step 3</p>", "loss": "<svg></svg>"},
    }
    for step in range(4, 9):  # a burst: the last state arrives
        trainer.move(step=step)
    assert wait_until(lambda: read(feed)["parts"]["progress"] == "<p>step 8</p>")
    trainer.move(status="completed", step=9)
    assert wait_until(lambda: read(feed)["version"] == 7)
    assert read(feed) == {"version": 7, "running": False, "status": "completed", "parts": {}}
    assert [p.name for p in feed.folder.iterdir()] == [feed.name]  # no temporary file left


def test_an_unchanged_version_is_not_rendered_again(feed, trainer):
    n = trainer.snapshots
    time.sleep(0.5)  # several ticks of the thread
    assert trainer.snapshots == n


def test_a_reader_never_sees_half_a_file(feed, trainer):
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                json.loads(feed.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                bad.append(str(e))

    t = threading.Thread(target=reader)
    t.start()
    for step in range(200):
        trainer.move(step=step)
        feed.publish()
    done.set()
    t.join()
    assert not bad


def test_each_server_gets_its_own_random_name(trainer, tmp_path):
    a = feedmod.Feed(trainer, render, folder=tmp_path)
    b = feedmod.Feed(trainer, render, folder=tmp_path)
    try:
        assert a.name != b.name and a.name.startswith("live-") and a.name.endswith(".json")
        assert a.url() == f"/app/static/live/{a.name}"
        assert a.url("/course/") == f"/course/app/static/live/{a.name}"
    finally:
        a.close()
        b.close()


def test_close_removes_the_file_and_stops_the_thread(trainer, tmp_path):
    f = feedmod.Feed(trainer, render, folder=tmp_path)
    f.close()
    f._thread.join(5)
    assert not f.path.exists() and not f._thread.is_alive()


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
    the panel waited for it forever. Now the failure is logged once per run, and the
    feed says it cannot carry that run (the page then draws it server-side)."""
    assert feed.usable(trainer.snapshot())
    monkeypatch.setattr(feedmod, "os", FullDisk())  # only app/feed.py sees a full disk
    with caplog.at_level("WARNING", logger=feedmod.__name__):
        trainer.move(status="running", step=1, started_at=11.0)
        assert wait_until(lambda: feed.error is not None)
        run = trainer.snapshot()
        for step in range(2, 5):  # the thread retries on news, and logs nothing more
            trainer.move(step=step)
        assert wait_until(lambda: trainer.snapshots >= 4)
    warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
    assert not feed.usable(run) and not feed.usable(trainer.snapshot())
    assert read(feed)["version"] == 0  # the file still holds the old state...
    assert [p.name for p in feed.folder.iterdir()] == [feed.name]  # ...and no temp file
    # space again: the file follows, but this run stays drawn by the pages
    monkeypatch.setattr(feedmod, "os", os)
    trainer.move(step=5)
    assert wait_until(lambda: read(feed)["version"] == trainer.version)
    assert feed.error is None and not feed.usable(trainer.snapshot())
    trainer.move(status="completed")  # idle again: watchers use the working file
    assert wait_until(lambda: read(feed)["version"] == trainer.version)
    assert feed.usable(trainer.snapshot())
    trainer.move(status="running", step=0, started_at=12.0)  # the next run uses the feed
    assert feed.usable(trainer.snapshot())
