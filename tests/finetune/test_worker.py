"""The training child process (minituner.finetune.worker) and the app's live state (app/trainer.py):
a run in its own interpreter speaking typed events, stop, a child that fails, a child that
is killed, a parent that dies, and the state every tab reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from minituner.finetune import events as ev
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.worker import TrainingProcess

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.trainer import LiveState, Trainer, fold  # noqa: E402

QUICK = dict(steps=3, batch_size=8, eval_every=3, eval_sample=4)
LONG = dict(steps=100000, batch_size=8, eval_every=100000, eval_sample=4)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Recorder:
    def __init__(self):
        self.events: list[ev.Event] = []
        self.done = threading.Event()
        self.first_step = threading.Event()

    def __call__(self, e):
        self.events.append(e)
        if isinstance(e, ev.Step):
            self.first_step.set()
        if isinstance(e, ev.TERMINAL):
            self.done.set()


def _start(cfg: dict, tmp_path, **kw) -> tuple[TrainingProcess, Recorder]:
    rec = Recorder()
    proc = TrainingProcess(cfg, rec, "cpu", cache=tmp_path / "cache", eval_limit=4, **kw)
    return proc, rec


def test_a_run_in_a_child_process_is_stored_and_reported(tmp_path):
    proc, rec = _start(FinetuneConfig(**QUICK).to_dict(), tmp_path)
    assert proc.join(300), "the child did not finish"
    kinds = [type(e) for e in rec.events]
    assert kinds[0] is ev.Phase and ev.Started in kinds
    assert [e.step for e in rec.events if isinstance(e, ev.Step)] == [1, 2, 3]
    assert ev.Phase("saving", "writing the run to the store") in rec.events
    end = rec.events[-1]
    assert isinstance(end, ev.Finished) and len(end.run_id) == 12
    assert (tmp_path / "cache" / end.run_id / "metrics.json").is_file()
    assert sum(isinstance(e, ev.TERMINAL) for e in rec.events) == 1
    assert proc.proc.returncode == 0 and not _alive(proc.pid)


def test_stop_ends_the_child_cleanly_and_stores_nothing(tmp_path):
    proc, rec = _start(FinetuneConfig(**LONG).to_dict(), tmp_path)
    assert rec.first_step.wait(300)
    proc.stop()
    assert proc.join(60)
    end = rec.events[-1]
    assert isinstance(end, ev.Stopped) and "stopped by the user" in end.message
    assert proc.proc.returncode == 0 and not _alive(proc.pid)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_child_that_fails_reports_one_line(tmp_path):
    proc, rec = _start({"method": "lora", "r": 0}, tmp_path)
    assert proc.join(120)
    assert len(rec.events) == 1
    (end,) = rec.events
    assert isinstance(end, ev.Failed)
    assert end.message.startswith("ValueError: ") and "rank r must be" in end.message
    assert "\n" not in end.message
    assert proc.proc.returncode == 1


def test_a_killed_child_is_reported_as_failed(tmp_path):
    proc, rec = _start(FinetuneConfig(**LONG).to_dict(), tmp_path)
    assert rec.first_step.wait(300)
    proc.kill()
    assert proc.join(60)
    end = rec.events[-1]
    assert isinstance(end, ev.Failed) and "exited with code -9" in end.message
    assert not _alive(proc.pid)  # waited for: no zombie
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_child_without_a_terminal_event_is_reported_with_its_last_words(tmp_path):
    """A crash in native code: the child dies and says something on stderr first."""
    fake = tmp_path / "fake_python"
    fake.write_text(
        "#!/bin/sh\n"
        'echo \'{"event":"phase","name":"preparing","detail":""}\'\n'
        "echo 'not an event'\n"
        "echo 'Segmentation fault in libtorch' >&2\n"
        "exit 139\n"
    )
    fake.chmod(0o755)
    proc, rec = _start({}, tmp_path, python=str(fake))
    assert proc.join(60)
    assert rec.events[0] == ev.Phase("preparing")
    end = rec.events[-1]
    assert isinstance(end, ev.Failed)
    assert "code 139" in end.message and "Segmentation fault in libtorch" in end.message


def test_the_child_exits_when_its_parent_dies(tmp_path):
    """A parent killed with SIGKILL leaves no training process behind."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from minituner.finetune.worker import TrainingProcess
        from minituner.finetune.config import FinetuneConfig
        cfg = FinetuneConfig(steps=100000, batch_size=8, eval_every=100000, eval_sample=4)
        started = []
        p = TrainingProcess(cfg.to_dict(), started.append, "cpu", cache={str(tmp_path)!r})
        open({str(pidfile)!r}, "w").write(str(p.pid))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() < deadline, "the parent did not start a child"
        time.sleep(0.1)
    child = int(pidfile.read_text())
    time.sleep(1.0)
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the training child outlived its parent"


# ---------------------------------------------------------------------- the live state
def test_fold_builds_the_live_state_and_bumps_the_version():
    s = LiveState(status="running", steps=2)
    evs = [
        ev.Phase("preparing"),
        ev.Started("lora r=8", "CPU", 10, 100, 2),
        ev.Evaluation(
            irregular_accuracy=0.2,
            irregular_accuracy_per_verb={},
            overregularized_rate=0.8,
            regular_accuracy=1.0,
            control_en_ppl=1.36,
            control_es_ppl=1.31,
            control_en_drift=0.0,
            control_es_drift=0.0,
            step=0,
        ),  # fmt: skip
        ev.Step(1, 2, 0.5, 1e-3, 100.0),
        ev.Step(2, 2, 0.4, 1e-3, 120.0),
        ev.Finished(3.0, 0.9, 0.01, "0123456789ab"),
    ]
    for i, e in enumerate(evs, 1):
        s = fold(s, e)
        assert s.version == i
    assert s.status == "completed" and s.run_id == "0123456789ab" and not s.running
    assert s.loss_steps == (1, 2) and s.losses == (0.5, 0.4) and s.tokens_per_s == 120.0
    assert s.device == "CPU" and s.trainable_params == 10 and len(s.evals) == 1
    assert fold(LiveState(status="running"), ev.Diverged("boom", 3)).status == "diverged"
    failed = fold(LiveState(status="running"), ev.Failed("ValueError: x"))
    assert failed.status == "error" and failed.message == "ValueError: x"


def test_the_trainer_runs_one_child_at_a_time(tmp_path):
    t = Trainer(db=tmp_path / "queue.sqlite3", max_runs=1)
    cfg = FinetuneConfig(**LONG)
    job = t.submit(cfg, owner="a", device="cpu", cache=str(tmp_path), eval_limit=4)
    try:
        assert t.busy and t.snapshot(job).owner == "a"
        other = t.submit(cfg, owner="b", device="cpu", cache=str(tmp_path))
        assert t.snapshot(other).status == "waiting"  # one slot: the second run waits
        deadline = time.time() + 300
        while t.snapshot(job).step < 1:
            assert time.time() < deadline
            time.sleep(0.1)
        v = t.version
        snap = t.snapshot(job)
        assert snap.running and snap.pid and _alive(snap.pid) and snap.device == "CPU"
        assert not t.stop(job, "b")  # only the owner stops a run
        assert t.stop(other, "b")  # b takes its waiting run out of the queue
        assert t.stop(job, "a")
        assert t.join(60)
        end = t.snapshot(job)
        assert end.status == "stopped" and end.version > v and not _alive(end.pid)
        assert t.snapshot(other).status == "stopped" and not t.busy
    finally:
        t.close()
        t.kill()
        t.join(30)


def test_a_frozen_child_is_ended_after_the_stop_grace_period(tmp_path):
    """issue 23, item 14: a child frozen with SIGSTOP ignores the ``stop`` line; after
    the grace period it is terminated, then killed, and the run ends as stopped."""
    rec = Recorder()
    proc = TrainingProcess(
        FinetuneConfig(**LONG).to_dict(), rec, "cpu", cache=tmp_path / "cache", eval_limit=4,
        stop_grace_s=1.0, kill_grace_s=1.0,
    )  # fmt: skip
    try:
        assert rec.first_step.wait(300)
        os.kill(proc.pid, signal.SIGSTOP)
        steps = sum(isinstance(e, ev.Step) for e in rec.events)
        proc.stop()
        assert proc.join(60), "Stop waited for a frozen child"
        end = rec.events[-1]
        assert isinstance(end, ev.Stopped), end
        assert "did not stop" in end.message and end.step >= steps
        assert sum(isinstance(e, ev.TERMINAL) for e in rec.events) == 1
        assert not _alive(proc.pid)
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    finally:
        proc.kill()
        proc.join(30)


def test_the_grace_period_is_a_named_constant_and_a_responsive_child_is_not_killed(tmp_path):
    """issue 23, item 14: a child that stops by itself within the grace period ends with
    its own Stopped event and exit code 0 (no signal was needed)."""
    from minituner.finetune import worker

    assert 0 < worker.STOP_GRACE_S and 0 < worker.KILL_GRACE_S
    proc, rec = _start(FinetuneConfig(**LONG).to_dict(), tmp_path)
    assert rec.first_step.wait(300)
    proc.stop()
    assert proc.join(60)
    assert (
        isinstance(rec.events[-1], ev.Stopped) and "stopped by the user" in rec.events[-1].message
    )
    assert proc.proc.returncode == 0
