"""The persistent run queue (minituner.finetune.queue), issue 25: order and the per-session
limit, atomic claims by two servers (real processes) on one file, a dead server's job
reported interrupted, a corrupt or foreign file refused in one line and left as it was,
and the start estimates of waiting jobs. The scheduler over it: tests/app/test_trainer.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from minituner.finetune import queue as q
from minituner.finetune.queue import JobQueue, QueueError, QueueFull


def _job(steps: int = 5) -> dict:
    return {"config": {"steps": steps}, "device": "cpu", "cache": None, "eval_limit": 4}


@pytest.fixture
def jq(tmp_path) -> JobQueue:
    queue = JobQueue(tmp_path / q.FILE_NAME)
    yield queue
    queue.close()


# ---------------------------------------------------------------------- order and fairness
def test_jobs_start_first_come_first_served_and_positions_count_from_the_next(jq):
    a, b, c = (jq.submit(o, _job()) for o in ("ann", "bob", "cid"))
    assert [j.id for j in jq.waiting()] == [a.id, b.id, c.id]
    assert [jq.position(j.id) for j in (a, b, c)] == [1, 2, 3]
    assert jq.claim("s1").id == a.id
    # with K = 1 the second and third learners are told positions 1 and 2
    assert jq.position(a.id) is None and [jq.position(j.id) for j in (b, c)] == [1, 2]
    assert jq.get(a.id).state == "training" and jq.get(a.id).server == "s1"
    assert jq.finish(a.id, "finished", "s1", run_id="0123456789ab")
    assert jq.claim("s1").id == b.id and jq.claim("s1").id == c.id and jq.claim("s1") is None


def test_one_session_may_hold_at_most_two_waiting_runs(jq):
    first, second = jq.submit("ann", _job()), jq.submit("ann", _job())
    with pytest.raises(QueueFull, match="already have 2 runs waiting") as e:
        jq.submit("ann", _job())
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert jq.submit("bob", _job()).owner == "bob"  # another session is not held back
    assert [j.id for j in jq.waiting() if j.owner == "ann"] == [first.id, second.id]
    jq.claim("s1")  # ann's first run starts: she may queue one more
    assert jq.submit("ann", _job()).state == "waiting"
    assert jq.cancel(second.id, "bob") is False  # only the owner takes a job out
    assert jq.cancel(second.id, "ann") is True and jq.get(second.id).state == "stopped"


def test_a_nickname_is_kept_with_the_sessions_jobs_and_the_next_ones(jq):
    a = jq.submit("ann", _job())
    assert jq.set_nickname("ann", "  Ann\n<b>table 3</b>\x00 ") == "Ann <b>table 3</b>"
    assert jq.get(a.id).nickname == "Ann <b>table 3</b>"
    assert jq.submit("ann", _job()).nickname == "Ann <b>table 3</b>"
    assert jq.submit("bob", _job()).nickname == ""
    assert len(jq.set_nickname("bob", "x" * 500)) == q.NICKNAME_MAX


class QueueMachine(RuleBasedStateMachine):
    """Any interleaving of submit, claim (by two servers), finish and cancel: waiting
    jobs keep their submission order, no job is claimed twice, no owner holds more than
    two waiting jobs, and every job is in exactly one state."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.q = JobQueue(Path(self.dir.name) / q.FILE_NAME)
        self.order: list[int] = []  # submitted, in order
        self.claimed: dict[int, str] = {}  # job -> server
        self.ended: set[int] = set()

    def teardown(self) -> None:
        self.q.close()
        self.dir.cleanup()

    @rule(owner=st.sampled_from(["ann", "bob", "cid"]))
    def submit(self, owner):
        waiting = sum(1 for j in self.q.waiting() if j.owner == owner)
        if waiting >= q.MAX_WAITING:
            with pytest.raises(QueueFull):
                self.q.submit(owner, _job())
        else:
            self.order.append(self.q.submit(owner, _job()).id)

    @rule(server=st.sampled_from(["s1", "s2"]))
    def claim(self, server):
        expected = next((j for j in self.order if j not in self.claimed and j not in self.ended),
                        None)  # fmt: skip
        job = self.q.claim(server)
        assert (job.id if job else None) == expected
        if job is not None:
            assert job.id not in self.claimed, "a job was claimed twice"
            self.claimed[job.id] = server

    @precondition(lambda self: any(j not in self.ended for j in self.claimed))
    @rule(data=st.data(), state=st.sampled_from(["finished", "failed", "stopped"]))
    def finish(self, data, state):
        job = data.draw(st.sampled_from(sorted(j for j in self.claimed if j not in self.ended)))
        other = "s2" if self.claimed[job] == "s1" else "s1"
        assert not self.q.finish(job, state, other), "another server ended a job it does not own"
        assert self.q.finish(job, state, self.claimed[job])
        self.ended.add(job)

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def cancel(self, data):
        job = self.q.get(data.draw(st.sampled_from(self.order)))
        done = self.q.cancel(job.id, job.owner)
        assert done == (job.state == "waiting")
        if done:
            self.ended.add(job.id)

    @invariant()
    def waiting_keep_their_order(self):
        waiting = [j.id for j in self.q.waiting()]
        assert waiting == [j for j in self.order if j not in self.claimed and j not in self.ended]
        for owner in ("ann", "bob", "cid"):
            assert sum(1 for j in self.q.waiting() if j.owner == owner) <= q.MAX_WAITING

    @invariant()
    def each_job_in_one_state(self):
        for job in self.q.jobs():
            want = "waiting"
            if job.id in self.claimed:
                want = "training" if job.id not in self.ended else job.state
            elif job.id in self.ended:
                want = "stopped"
            assert job.state == want and job.state in q.STATES


TestQueueInvariants = QueueMachine.TestCase
TestQueueInvariants.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


# ---------------------------------------------------------------------- two servers, one file
# Each server is a fresh interpreter (not a fork: a fork of the test process can inherit a
# lock some other thread held at that moment and hang). It says it is ready, waits for the
# go file, claims until the queue is empty and prints the job ids it took.
CLAIM = """
import json, os, sys, time
from minituner.finetune.queue import JobQueue
path, server, ready, go = sys.argv[1:5]
queue = JobQueue(path)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
got = []
while (job := queue.claim(server)) is not None:
    got.append(job.id)
queue.close()
print(json.dumps(got))
"""


def test_two_servers_on_one_cache_never_take_the_same_job(tmp_path):
    """issue 25: four server processes claim from one file at once; each job is taken
    exactly once (the claim is one BEGIN IMMEDIATE transaction)."""
    path = tmp_path / q.FILE_NAME
    jq = JobQueue(path)
    ids = [jq.submit(f"owner{i}", _job()).id for i in range(60)]
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    go = tmp_path / "go"
    procs = {
        f"s{i}": subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(path), f"s{i}", str(tmp_path / f"ready{i}"), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(4)
    }  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        assert time.monotonic() < deadline, "the server processes did not start"
        assert all(p.poll() is None for p in procs.values()), "a server process died"
        time.sleep(0.01)
    go.touch()
    got = {}
    for server, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        got[server] = json.loads(stdout)
    taken = [j for js in got.values() for j in js]
    assert sorted(taken) == ids, "a job was taken twice or not at all"
    assert all(jq.get(j).server == s for s, js in got.items() for j in js)
    for js in got.values():  # each server took its jobs in queue order
        assert js == sorted(js)


# ---------------------------------------------------------------------- a server that died
def _claim_and_die(path: str) -> None:
    JobQueue(path).claim("dead-server")
    os._exit(0)  # no clean-up: as if the server were killed


def test_a_job_whose_server_died_is_reported_interrupted_and_waiting_jobs_stay(tmp_path):
    path = tmp_path / q.FILE_NAME
    jq = JobQueue(path)
    a, b = jq.submit("ann", _job()), jq.submit("bob", _job())
    p = multiprocessing.get_context("fork").Process(target=_claim_and_die, args=(str(path),))
    p.start()
    p.join(60)
    assert jq.get(a.id).state == "training" and jq.get(a.id).pid == p.pid
    (dead,) = jq.recover()
    assert dead.id == a.id
    job = jq.get(a.id)
    assert job.state == "interrupted" and "process is gone" in job.message and job.ended_at
    assert jq.get(b.id).state == "waiting" and jq.claim("s2").id == b.id
    assert jq.recover() == []  # this process lives: its job stays training


def test_a_job_without_a_heartbeat_is_interrupted_and_a_beating_one_is_not(jq):
    a, b = jq.submit("ann", _job()), jq.submit("bob", _job())
    jq.claim("far", host="elsewhere", pid=1, now=1000.0)
    jq.claim("near", host="elsewhere", pid=2, now=1000.0)
    assert jq.beat("near", now=1000.0 + q.STALE_S) == 1
    (dead,) = jq.recover(now=1000.0 + q.STALE_S + 1)
    assert dead.id == a.id and "no heartbeat" in jq.get(a.id).message
    assert jq.get(b.id).state == "training"
    assert not jq.finish(a.id, "finished", "near") and jq.finish(a.id, "finished", "far")


# ---------------------------------------------------------------------- a file that is not ours
def _refused(path: Path, match: str) -> None:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(QueueError, match=match) as e:
        JobQueue(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert "move it away" in str(e.value)
    if before is not None:
        assert path.read_bytes() == before, "the file was changed"


def test_a_corrupt_file_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    path = tmp_path / q.FILE_NAME
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    _refused(path, "cannot be used")
    path.write_bytes(b"{'not': 'a database'}\n" * 50)
    _refused(path, "not a database")


def test_another_programs_database_and_a_newer_schema_are_refused(tmp_path):
    path = tmp_path / "foreign.sqlite3"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE jobs (id INTEGER)")
    con.commit()
    con.close()
    _refused(path, "another program's database")
    newer = tmp_path / q.FILE_NAME
    JobQueue(newer).close()
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {q.SCHEMA_VERSION + 1}")
    con.close()
    _refused(newer, "newer than this minituner")
    (tmp_path / "dir").mkdir()
    _refused(tmp_path / "dir", "not a regular file")


def test_a_queue_survives_reopening_with_its_waiting_jobs(tmp_path):
    path = tmp_path / q.FILE_NAME
    first = JobQueue(path)
    ids = [first.submit(o, _job(7)).id for o in ("ann", "bob")]
    first.close()
    again = JobQueue(path)
    assert [j.id for j in again.waiting()] == ids and again.waiting()[0].job == _job(7)
    assert again.path == path


def test_the_file_is_in_the_run_cache_and_in_wal_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITUNER_CACHE", str(tmp_path / "cache"))
    jq = JobQueue()
    assert jq.path == tmp_path / "cache" / q.FILE_NAME and jq.path.is_file()
    con = sqlite3.connect(jq.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA application_id").fetchone()[0] == q.APPLICATION_ID
    con.close()
