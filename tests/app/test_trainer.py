"""app/trainer.py without a browser or Streamlit: the server's runs check a run before
it starts a child (issue 23, item 10) and stop a run only for its owner (item 12); the
training child is replaced by a fake that records what the trainer asked of it
(tests/finetune/test_worker.py runs real children). The run queue over those (issue 25): K runs at
once, the rest in order with their positions, Stop for each owner's own run, a child that
fails, a restart, a bad MINITUNER_MAX_RUNS or queue file. Then the Train page under AppTest:
a refused run is one error box (item 10), a reload of the same browser still owns its
run (item 11), a feed that cannot be written leaves the run to the page (item 13).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
APP_TIMEOUT = 180  # seconds: a live run on a loaded 2-core machine

from app_util import shown  # noqa: E402

from app import trainer as trainermod  # noqa: E402
from app.trainer import Trainer  # noqa: E402
from minituner.finetune import events as ev  # noqa: E402
from minituner.finetune.config import FinetuneConfig  # noqa: E402


class FakeProcess:
    """Stands in for minituner.finetune.worker.TrainingProcess: no child at all."""

    started: list[FakeProcess] = []

    def __init__(self, config, on_event, device="auto", cache=None, eval_limit=None):
        self.config, self.on_event, self.cache, self.eval_limit = (
            config,
            on_event,
            cache,
            eval_limit,
        )
        self.stops = 0
        self.pid = 4242
        FakeProcess.started.append(self)

    def stop(self) -> None:
        self.stops += 1
        self.on_event(ev.Stopped("stopped by the user after 1 steps", 1))

    def kill(self) -> None:
        self.on_event(ev.Failed("killed"))

    def join(self, timeout=None) -> bool:
        return True


@pytest.fixture
def fake(monkeypatch):
    FakeProcess.started = []
    monkeypatch.setattr(trainermod, "TrainingProcess", FakeProcess)
    return FakeProcess.started


@pytest.fixture
def new_trainer(tmp_path):
    """A trainer on a run queue of its own (never the user's cache)."""
    made = []

    def make(**kw) -> Trainer:
        made.append(Trainer(db=tmp_path / f"queue{len(made)}.sqlite3", **kw))
        return made[-1]

    yield make
    for t in made:
        t.close()


# ---------------------------------------------------------------------- item 12: ownership
def test_stop_from_another_owner_is_refused_on_the_server(fake, tmp_path, new_trainer):
    """issue 23, item 12: a stale Stop button of another session does not stop the run."""
    t = new_trainer()
    job = t.submit(FinetuneConfig(steps=5), owner="alice", cache=str(tmp_path / "c"))
    (proc,) = fake
    assert t.stop(job, "bob") is False and t.stop(job, "") is False
    assert proc.stops == 0 and t.busy and t.snapshot(job).owner == "alice"
    assert t.stop(job, "alice") is True
    assert proc.stops == 1 and t.snapshot(job).status == "stopped"
    assert t.stop(job, "alice") is False  # nothing runs any more


def test_join_waits_for_a_child_that_is_still_exiting(fake, tmp_path, new_trainer, monkeypatch):
    """A run's terminal event arrives before its child has exited (the worker's reader
    waits for the exit after handing the event on): join() waits for that exit too, as a
    server shutting down must (a CI run once found the child alive after join)."""
    import threading

    exited = threading.Event()

    class Exiting(FakeProcess):
        def join(self, timeout=None) -> bool:
            return exited.wait(timeout)

    monkeypatch.setattr(trainermod, "TrainingProcess", Exiting)
    t = new_trainer()
    job = t.submit(FinetuneConfig(steps=5), owner="a", cache=str(tmp_path / "c"))
    assert t.stop(job, "a") and t.snapshot(job).status == "stopped" and not t.busy
    assert t.join(0.2) is False  # the terminal event is in, the child not yet gone
    exited.set()
    assert t.join(5) is True and t._ending == []


@settings(max_examples=30, deadline=None)
@given(other=st.text(max_size=40))
def test_only_the_owner_token_stops_a_run(other):
    """issue 23, item 12: any other owner string, the empty one included, is refused."""
    import tempfile

    owner = "0123456789abcdef0123456789abcdef"
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(db=Path(d) / "q.sqlite3", background=False)
        t._states[7] = trainermod.LiveState(status=trainermod.RUNNING, owner=owner, job_id=7)
        stops = []
        t._procs[7] = type("P", (), {"stop": lambda self: stops.append(1)})()
        assert t.stop(7, other) is (other == owner)
        assert len(stops) == (other == owner)
        t.queue.close()


def test_abort_stops_whoever_owns_the_run(fake, tmp_path, new_trainer):
    """The server itself (shutdown, tests) stops a run without an owner token."""
    t = new_trainer()
    job = t.submit(FinetuneConfig(steps=5), owner="alice", cache=str(tmp_path / "c"))
    t.abort()
    assert fake[0].stops == 1 and t.snapshot(job).status == "stopped"


# ---------------------------------------------------------------------- item 10: pre-flight
def _refused(t: Trainer, fake, match: str, cfg=None, **kw) -> None:
    before = t.jobs()
    with pytest.raises(ValueError, match=match) as e:
        t.submit(cfg or FinetuneConfig(steps=5), owner="alice", **kw)
    assert "\n" not in str(e.value)
    assert fake == [], "a child was started although the run cannot be stored"
    assert t.jobs() == before == [] and not t.busy  # nothing queued either


def test_a_cache_that_is_a_file_is_refused_before_any_child(fake, tmp_path, new_trainer):
    """issue 23, item 10: the app trained the whole run, then failed to save it."""
    f = tmp_path / "cache"
    f.write_text("not a folder")
    _refused(new_trainer(), fake, "cannot store runs in .*it is a file", cache=str(f))
    assert f.read_text() == "not a folder"


def test_a_cache_below_a_file_is_refused_before_any_child(fake, tmp_path, new_trainer):
    f = tmp_path / "file"
    f.write_text("x")
    _refused(new_trainer(), fake, "cannot store runs in", cache=str(f / "runs"))


@pytest.mark.parametrize("limit", [0, -3, 2**62 + 1, 10**30, True, 2.5])
def test_an_eval_limit_out_of_range_is_refused_before_any_child(fake, tmp_path, limit, new_trainer):
    """issue 23, item 10: a huge MINITUNER_EVAL_LIMIT failed only when the run was saved."""
    _refused(
        new_trainer(), fake, "MINITUNER_EVAL_LIMIT", cache=str(tmp_path / "c"), eval_limit=limit
    )


def test_missing_data_is_refused_before_any_child(fake, tmp_path, monkeypatch, new_trainer):
    """issue 23, item 10: the child would not find the base model."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MINITUNER_DATA", str(tmp_path / "empty"))
    _refused(new_trainer(), fake, ".", cache=str(tmp_path / "c"))


def test_a_rank_the_model_cannot_take_is_refused_before_any_child(fake, tmp_path, new_trainer):
    cfg = FinetuneConfig(steps=5, r=100000)
    _refused(new_trainer(), fake, "rank r=100000 is too large", cfg, cache=str(tmp_path / "c"))


def test_a_run_that_passes_the_pre_flight_starts(fake, tmp_path, new_trainer):
    t = new_trainer()
    assert t.submit(FinetuneConfig(steps=5), owner="a", cache=str(tmp_path / "c"), eval_limit=4)
    (proc,) = fake
    assert proc.eval_limit == 4 and proc.cache == str(tmp_path / "c") and t.busy


# ---------------------------------------------------------------------- the pages (AppTest)
def _page(query: dict):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=APP_TIMEOUT)
    at.run()
    at.query_params.update(query)
    at.switch_page("views/train.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _components(at, name: str) -> list[dict]:
    return [json.loads(e.proto.json) for e in at.get("bidi_component")
            if e.proto.component_name == name]  # fmt: skip


def _wait_for_step(trainer, job: int, step: int = 1) -> None:
    deadline = time.monotonic() + APP_TIMEOUT
    while trainer.snapshot(job).step < step and trainer.busy:
        assert time.monotonic() < deadline, "no training step in time"
        time.sleep(0.1)


@pytest.mark.parametrize("problem", ["cache is a file", "huge eval limit"])
def test_train_page_refuses_a_run_it_could_not_store(problem, idle_trainer, tmp_path, monkeypatch):
    """issue 23, item 10: one error box, and no child is started."""
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    at = _page({"method": "lora", "r": "2", "steps": "3", "seed": "4848"})
    if problem == "cache is a file":
        (tmp_path / "cache").write_text("not a folder")
        named = "cannot store runs in the run cache"
    else:
        monkeypatch.setenv("MINITUNER_EVAL_LIMIT", "1" + "0" * 30)
        named = "MINITUNER_EVAL_LIMIT"
    before = len(idle_trainer.jobs())
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [shown(str(e.value)) for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Training cannot start: "), errors
    assert named in errors[0] and "\n" not in errors[0]
    assert len(idle_trainer.jobs()) == before and not idle_trainer.busy
    assert at.button(key="train_start").label == "Train live"


def test_a_reload_of_the_same_browser_still_owns_its_run(empty_cache, idle_trainer, monkeypatch):
    """issue 23, item 11: after a reload the run's owner was "another session" and no tab
    had Stop. The owner token lives in the browser's cookie: a reload (a new session of
    the same browser) gets Stop; another browser sees only its own runs (issue 25)."""
    from app import live

    jar: dict[str, str] = {}  # this browser's cookies, as the next page load sends them
    monkeypatch.setattr(live, "_cookies", lambda: dict(jar))
    query = {"method": "lora", "r": "2", "steps": "2000", "seed": "4949"}
    first = _page(query)
    (keep,) = _components(first, "minituner_owner")
    assert keep["name"] == live.OWNER_COOKIE and len(keep["value"]) == 32
    jar[keep["name"]] = keep["value"]  # what the component does in the browser
    first.button(key="train_start").click().run()
    job = first.session_state["live_job"]
    assert idle_trainer.busy and idle_trainer.snapshot(job).owner == keep["value"]

    reloaded = _page(query)
    assert "Training live" in _texts(reloaded.subheader)
    assert [b.label for b in reloaded.button if b.key == "train_stop"] == ["Stop"]
    jar.clear()
    jar[live.OWNER_COOKIE] = "0" * 31 + "g"  # another browser, with a forged token
    other = _page(query)
    assert "Training live" not in _texts(other.subheader) and not _components(
        other, "minituner_live")  # fmt: skip
    assert [b.label for b in other.button if b.key == "train_start"] == ["Train live"]
    assert not [b for b in other.button if b.key == "train_stop"]
    opened = _page({**query, "job": str(job)})  # the run opened by its link: read-only
    assert "read-only" in _texts(opened.subheader)
    assert not [b for b in opened.button if b.key == "train_stop"]

    _wait_for_step(idle_trainer, job)
    reloaded.button(key="train_stop").click().run()
    idle_trainer.join(APP_TIMEOUT)
    assert idle_trainer.snapshot(job).status == "stopped"
    reloaded.run()
    assert "Training stopped" in _texts(reloaded.warning)


def test_a_feed_that_cannot_be_written_leaves_the_run_to_the_page(
    empty_cache, idle_trainer, monkeypatch
):
    """issue 23, item 13: the live feed cannot be written (a full disk): the page draws
    the run itself instead of a panel waiting for the file, and the outcome appears."""
    from app import feed as feedmod
    from app import live

    sys.path.insert(0, str(REPO_ROOT / "tests" / "app"))
    from test_feed import FullDisk

    f = live.feed()
    assert f is not None, "the app tests run with static serving (the live feed)"
    at = _page({"method": "lora", "r": "2", "steps": "6", "seed": "5050"})
    monkeypatch.setattr(feedmod, "os", FullDisk())
    try:
        at.button(key="train_start").click().run()
        deadline = time.monotonic() + APP_TIMEOUT
        while f.error is None and idle_trainer.busy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if idle_trainer.busy:  # drawn while it runs: by Streamlit, not a panel on the feed
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            assert not [c for c in _components(at, "minituner_live") if c["running"]]
            assert 'class="live-progress"' in _texts(at.get("html"))
        idle_trainer.join(APP_TIMEOUT)
        at.run()
        assert "Training finished" in _texts(at.success), _texts(at.warning) + _texts(at.error)
    finally:
        monkeypatch.setattr(feedmod, "os", os)
        f.publish()  # the feed works again for the tests after this one
    assert f.error is None


# ---------------------------------------------------------------------- item 14: a frozen child
def test_stop_ends_a_frozen_child_and_the_server_is_free_again(tmp_path, monkeypatch, new_trainer):
    """issue 23, item 14: a child frozen with SIGSTOP kept the server busy after Stop (every
    tab "busy"). Now it is ended after the worker's grace period: the run ends as
    stopped and the next run can start."""
    import signal

    from minituner.finetune import worker

    monkeypatch.setattr(worker, "STOP_GRACE_S", 1.0)
    monkeypatch.setattr(worker, "KILL_GRACE_S", 1.0)
    t = new_trainer()
    cfg = FinetuneConfig(steps=100000, batch_size=8, eval_every=100000, eval_sample=4)
    job = t.submit(cfg, owner="a", device="cpu", cache=str(tmp_path / "c"), eval_limit=4)
    try:
        _wait_for_step(t, job)
        os.kill(t.snapshot(job).pid, signal.SIGSTOP)
        assert t.stop(job, "a")
        assert t.join(60), "Stop waited for a frozen child"
        end = t.snapshot(job)
        assert end.status == "stopped" and not t.busy and "did not stop" in end.message
    finally:
        t.kill()
        t.join(30)


def test_teach_page_refuses_a_lesson_it_could_not_store(idle_trainer, tmp_path, monkeypatch):
    """issue 23, item 10, on the Teach page: one error box, and no child is started."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=APP_TIMEOUT)
    at.run()
    at.switch_page("views/teach.py")
    at.run()
    (tmp_path / "cache").write_text("not a folder")
    before = len(idle_trainer.jobs())
    at.button(key="teach_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [shown(str(e.value)) for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Training cannot start: "), errors
    assert "cannot store runs in the run cache" in errors[0] and "it is a file" in errors[0]
    assert len(idle_trainer.jobs()) == before and not idle_trainer.busy


# ---------------------------------------------------------------------- issue 25: the queue
def _cfg(seed: int) -> FinetuneConfig:
    return FinetuneConfig(steps=5, seed=seed)


def _end(proc: FakeProcess, run_id: str = "0123456789ab") -> None:
    proc.on_event(ev.Finished(1.0, 0.5, 0.01, run_id))


def _wait(cond, what: str, timeout: float = APP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_three_learners_with_one_slot_wait_in_order_and_each_follows_its_own_run(
    fake, tmp_path, new_trainer
):
    """issue 25: with K = 1 the second and third learners see positions 1 and 2 and an
    estimate of when they start; each tab follows its own run; the next starts when the
    run before it ends."""
    t = new_trainer(max_runs=1, background=False)
    cache = str(tmp_path / "c")
    ids = [t.submit(_cfg(i), owner=o, cache=cache) for i, o in enumerate(("ann", "bob", "cid"))]
    assert len(fake) == 1 and fake[0].config == _cfg(0).to_dict()
    ann, bob, cid = (t.snapshot_for(o) for o in ("ann", "bob", "cid"))
    assert ann.running and ann.job_id == ids[0] and ann.owner == "ann"
    assert (bob.status, bob.position, cid.status, cid.position) == ("waiting", 1, "waiting", 2)
    assert 0 <= bob.eta_s <= cid.eta_s and bob.config == _cfg(1).to_dict()
    v = t.version
    _end(fake[0])
    assert t.snapshot(ids[0]).status == "completed" and t.snapshot(ids[0]).run_id
    assert t.version > v
    t.pump()  # the scheduler thread does this at once; here by hand
    assert len(fake) == 2 and t.snapshot_for("bob").running
    assert t.snapshot_for("cid").position == 1
    assert t.queue.get(ids[0]).state == "finished"
    assert [s.owner for s in t.jobs()] == ["ann", "bob", "cid"]


def test_stop_from_one_learner_stops_only_its_own_run(fake, tmp_path, new_trainer):
    t = new_trainer(max_runs=1, background=False)
    cache = str(tmp_path / "c")
    a, b, c = (t.submit(_cfg(i), owner=o, cache=cache) for i, o in enumerate("xyz"))
    assert not t.stop(a, "y") and not t.stop(b, "x") and not t.stop(c, "")
    assert t.stop(b, "y")  # a waiting run leaves the queue
    assert t.snapshot(b).status == "stopped" and t.snapshot(c).position == 1
    assert fake[0].stops == 0 and t.snapshot(a).running
    assert t.stop(a, "x") and fake[0].stops == 1 and t.snapshot(a).status == "stopped"
    t.pump()
    assert t.snapshot(c).running and t.queue.get(a).state == "stopped"


def test_a_session_may_hold_at_most_two_waiting_runs(fake, tmp_path, new_trainer):
    t = new_trainer(max_runs=1, background=False)
    cache = str(tmp_path / "c")
    t.submit(_cfg(0), owner="ann", cache=cache)  # trains
    t.submit(_cfg(1), owner="ann", cache=cache)
    t.submit(_cfg(2), owner="ann", cache=cache)
    with pytest.raises(ValueError, match="already have 2 runs waiting") as e:
        t.submit(_cfg(3), owner="ann", cache=cache)
    assert "\n" not in str(e.value)
    assert t.submit(_cfg(3), owner="bob", cache=cache)
    assert [s.status for s in t.jobs()] == ["running", "waiting", "waiting", "waiting"]


def test_k_runs_train_at_once_and_a_stop_frees_a_slot_for_the_next(fake, tmp_path, new_trainer):
    t = new_trainer(max_runs=2, background=False)
    cache = str(tmp_path / "c")
    a, b, c = (t.submit(_cfg(i), owner=o, cache=cache) for i, o in enumerate("xyz"))
    assert len(fake) == 2 and t.busy and t.free_slots() == 0
    assert t.snapshot(c).status == "waiting" and t.snapshot(c).position == 1
    assert not t.stop(b, "x") and t.stop(b, "y") and t.snapshot(b).status == "stopped"
    t.pump()
    assert len(fake) == 3 and t.snapshot(c).running and t.snapshot(a).running


def test_a_failed_child_lets_the_next_run_start(fake, tmp_path, new_trainer):
    """issue 25: a child that fails ends its job as failed, and the next job starts
    (here by the scheduler thread)."""
    t = new_trainer(max_runs=1)
    cache = str(tmp_path / "c")
    a = t.submit(_cfg(0), owner="x", cache=cache)
    b = t.submit(_cfg(1), owner="y", cache=cache)
    fake[0].on_event(ev.Failed("RuntimeError: CUDA error: out of memory"))
    _wait(lambda: len(fake) == 2, "the next run")
    assert t.queue.get(a).state == "failed" and "out of memory" in t.queue.get(a).message
    assert t.snapshot(a).status == "error" and t.snapshot(b).running


def test_real_children_a_crashing_one_then_the_next_in_order(tmp_path, new_trainer):
    """issue 25, with real training children: a job whose child crashes (a configuration
    the child cannot read) fails with one line, and the job after it then starts."""
    t = new_trainer(max_runs=1)
    bad = {"config": {"method": "nope"}, "device": "cpu", "cache": str(tmp_path), "eval_limit": 4}
    a, b = t.queue.submit("x", bad).id, t.queue.submit("y", bad).id  # past the pre-flight
    t.pump()
    _wait(lambda: t.queue.get(b).state == "failed", "both children to fail")
    first, second = t.queue.get(a), t.queue.get(b)
    assert first.state == "failed" and "method" in first.message and "\n" not in first.message
    assert second.started_at >= first.ended_at, "the second started before the first ended"


def _server_that_dies(db: str, cache: str) -> None:
    """A server that queued three runs, started the first and was killed."""
    from minituner.finetune.queue import JobQueue

    jq = JobQueue(db)
    for i, owner in enumerate(("ann", "bob", "cid")):
        job = {"config": _cfg(i).to_dict(), "device": "cpu", "cache": cache, "eval_limit": 4}
        jq.submit(owner, job)
    jq.claim("dead-server")
    os._exit(0)


def test_a_restart_resumes_waiting_runs_and_reports_the_training_one_interrupted(fake, tmp_path):
    """issue 25: the server dies with one run training and two waiting; the next server
    on the same cache reports the first as interrupted and trains the others in order."""
    import multiprocessing

    db = tmp_path / "queue.sqlite3"
    p = multiprocessing.get_context("fork").Process(
        target=_server_that_dies, args=(str(db), str(tmp_path / "c"))
    )
    p.start()
    p.join(60)
    t = Trainer(db=db, max_runs=1, background=False)
    try:
        (lost,) = t.interrupted
        s = t.snapshot(lost.id)
        assert s.status == "interrupted" and "train it again" in s.message and s.owner == "ann"
        t.pump()
        assert [f.config["seed"] for f in fake] == [1]
        assert t.snapshot_for("bob").running and t.snapshot_for("cid").position == 1
    finally:
        t.close()


def test_a_bad_max_runs_is_reported_and_the_default_used(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("MINITUNER_MAX_RUNS", "lots")
    t = Trainer(db=tmp_path / "q.sqlite3", device="cpu", background=False)
    (problem,) = t.problems
    assert "MINITUNER_MAX_RUNS='lots' is not a whole number from 1 to 64" in problem
    assert t.max_runs == 1 and "\n" not in problem
    with pytest.raises(ValueError, match="max_runs"):
        Trainer(db=tmp_path / "q.sqlite3", max_runs=0, background=False)


def test_a_corrupt_queue_file_is_a_message_and_the_server_still_trains(fake, tmp_path):
    db = tmp_path / "queue.sqlite3"
    db.write_bytes(b"not a database at all " * 100)
    t = Trainer(db=db, max_runs=1, background=False)
    (problem,) = t.problems
    assert "cannot be used" in problem and str(db) in problem and "\n" not in problem
    assert t.submit(_cfg(0), owner="x", cache=str(tmp_path / "c")) and len(fake) == 1
    assert db.read_bytes() == b"not a database at all " * 100


def test_a_closed_tab_does_not_matter_the_server_trains_and_stores_the_run(tmp_path, new_trainer):
    """issue 25: nobody watches (the tab was closed): the server trains the run with a
    real child and stores it; the owner finds it when they come back."""
    t = new_trainer(max_runs=1)
    cache = tmp_path / "cache"
    cfg = FinetuneConfig(steps=2, batch_size=8, eval_every=100, eval_sample=4, seed=2525)
    job = t.submit(cfg, owner="gone", device="cpu", cache=str(cache), eval_limit=4)
    _wait(lambda: t.queue.get(job).state != "training" and not t.busy, "the run")
    back = t.snapshot_for("gone")
    assert back.status == "completed" and back.job_id == job, back.message
    assert (cache / back.run_id / "metrics.json").is_file()
    assert t.queue.get(job).run_id == back.run_id


def test_two_servers_on_one_queue_train_each_job_once(fake, tmp_path):
    """issue 25: two schedulers (two servers) on one queue file, both claiming from
    their threads: every job starts exactly once, spread over both servers' slots."""
    db = tmp_path / "queue.sqlite3"
    a = Trainer(db=db, max_runs=3)
    b = Trainer(db=db, max_runs=3)
    try:
        cache = str(tmp_path / "c")
        ids = [a.queue.submit(f"o{i}", {"config": _cfg(i).to_dict(), "device": "cpu",
                                        "cache": cache, "eval_limit": 4}).id for i in range(6)]  # fmt: skip
        a._wake.set()
        b._wake.set()
        _wait(lambda: len(fake) == 6, "six starts")
        time.sleep(2 * trainermod.TICK_S)  # a double claim would start a seventh
        assert sorted(f.config["seed"] for f in fake) == list(range(6))
        servers = {a.queue.get(j).server for j in ids}
        assert servers == {a.server, b.server}
    finally:
        a.close()
        b.close()
