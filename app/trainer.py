"""The server's runs: a queue of training jobs, up to K child processes, one live state each.

Training never happens in the Streamlit server's interpreter. :class:`Trainer` (one per
server, ``st.cache_resource``) schedules the persistent run queue
(:class:`minituner.finetune.queue.JobQueue`): a job waits in order until one of K slots
is free (:mod:`minituner.finetune.capacity`: ``MINITUNER_MAX_RUNS``, else 1 on a CPU and
what fits on a GPU by a run's measured memory), then trains in a
:class:`~minituner.finetune.worker.TrainingProcess` whose events are folded into that
job's :class:`LiveState`. The child stores a completed run itself, so a closed tab loses
nothing (the same browser finds it again: the owner token). A failed child ends its job
as ``failed`` and the next starts; a killed server takes its children with it, and the
next server on the cache reports their jobs interrupted and starts the waiting ones. A
thread beats this server's heartbeat, sweeps dead servers' jobs and claims waiting jobs.

Before a job is queued, :func:`preflight` runs the checks the CLI runs before training
(device, base model found, rank, taught verb, run cache writable, evaluation limit), so
a run that could not be stored is refused with one line instead of trained in vain.
Only a job's owner (a token the browser keeps, see app/live.py) can stop it: the check is
here, on the server, not only in what the page shows.

The API for the pages (nothing here calls Streamlit):

* ``submit(cfg, owner, device, cache, eval_limit, nickname=None) -> int``: queue a run
  (pre-flight first; ``ValueError`` with one line, ``QueueFull`` beyond 2 waiting runs
  of one owner); returns the job id. It starts at once when a slot is free.
* ``snapshot(job_id)``: that job's :class:`LiveState` (``status`` waiting | running |
  completed | stopped | diverged | error | interrupted; ``position`` and ``eta_s`` while
  waiting; ``run_id`` when stored). A job this server does not train is read from the
  queue (no curves).
* ``snapshot_for(owner)``: the run an owner's tab follows: its training job, else its
  first waiting one, else its latest; ``LiveState()`` when it has none.
* ``jobs(owner=None, since=today)``: every job as a :class:`LiveState` (the Class page).
* ``stop(job_id, owner)``: stop the owner's training job, or take its waiting job out of
  the queue; False for anyone else. ``set_nickname(owner, name)``.
* ``version``: moves on every change of any job (a tab redraws only when it moved).
* ``busy`` (a run trains on this server), ``free_slots()``, ``max_runs`` (K), ``problems``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from app.run_state import RUNNING, WAITING, LiveState, fold, from_job, label_of, today
from minituner.finetune import capacity
from minituner.finetune import events as ev
from minituner.finetune import queue as q
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.worker import TrainingProcess

__all__ = ["RUNNING", "WAITING", "LiveState", "Trainer", "fold", "preflight", "today"]
TICK_S = 1.0  # the scheduler thread's tick: claims, heartbeats
RECOVER_S = 15.0  # how often it looks for dead servers' jobs
END_STATE = {"completed": "finished", "stopped": "stopped", "diverged": "failed", "error": "failed"}
log = logging.getLogger(__name__)


class Trainer:
    """The server's queue of runs and its up to K training children (thread-safe).

    Args:
        db: the queue file (default: ``queue.sqlite3`` in the run cache). One that cannot
            be used (corrupt, another program's) is reported in ``problems`` and the
            server queues in a temporary file instead: the app never fails for it.
        max_runs: K (default: ``MINITUNER_MAX_RUNS``, else what fits: 1 on a CPU). A bad
            ``MINITUNER_MAX_RUNS`` is reported in ``problems`` and the default is used.
        device: where runs train ("auto": the GPU when there is one).
        background: run the scheduler thread (claims, heartbeats, dead servers' jobs).
    """

    def __init__(self, db: str | os.PathLike | None = None, max_runs: int | None = None,
                 device: str = "auto", background: bool = True) -> None:  # fmt: skip
        self._lock = threading.RLock()
        self._states: dict[int, LiveState] = {}  # jobs this server trains or trained
        self._procs: dict[int, TrainingProcess] = {}  # the running ones
        self._ending: list[TrainingProcess] = []  # terminal event in, child maybe still exiting
        self._version = 0
        self.problems: list[str] = []  # one line each, for the pages to show
        self.server = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.device = device
        self.queue = self._open(db)
        self.interrupted = self.queue.recover()  # jobs a dead server left training
        self.max_runs, problem = capacity.choose(max_runs, device)
        self.problems += [problem] if problem else []
        # K from the measured memory of a run, on a GPU, unless it was given
        self._gpu_free = None
        if max_runs is None and not problem and capacity.max_runs_from_env() is None:
            self._gpu_free = capacity.gpu_free_bytes() if capacity.on_gpu(device) else None
        self._wake = threading.Event()
        self._closed = threading.Event()
        if background:
            threading.Thread(target=self._loop, name="minituner-scheduler", daemon=True).start()
        self._wake.set()

    def _open(self, db) -> q.JobQueue:
        try:
            return q.JobQueue(db)
        except q.QueueError as e:
            import tempfile

            self.problems.append(f"{e}. Until then runs queue in memory and a restart loses them.")
            log.warning("%s", e)
            return q.JobQueue(Path(tempfile.mkdtemp(prefix="minituner-queue-")) / q.FILE_NAME)

    # ------------------------------------------------------------------ queries
    @property
    def version(self) -> int:
        return self._version

    @property
    def busy(self) -> bool:
        """Whether a run trains on this server."""
        return bool(self._procs)

    def free_slots(self) -> int:
        return max(0, self.max_runs - len(self._procs))

    def _now(self, s: LiveState) -> LiveState:
        s = dataclasses.replace(s, version=self._version)
        if s.running:
            s = dataclasses.replace(s, elapsed_s=time.perf_counter() - s.started_at)
        return s

    def snapshot(self, job_id: int) -> LiveState:
        """Job ``job_id``'s state (``LiveState()`` for a job the queue does not know).
        Immutable; the elapsed time is brought up to now."""
        with self._lock:
            s = self._states.get(job_id)
            if s is not None:
                return self._now(s)
        job = self.queue.get(job_id)
        return LiveState(version=self._version) if job is None else self._from_queue(job)

    def _from_queue(self, job: q.Job, places: dict | None = None) -> LiveState:
        if job.state != "waiting":
            return from_job(job, self._version)
        places = self._places() if places is None else places
        return from_job(job, self._version, *places.get(job.id, (0, None)))

    def _places(self) -> dict[int, tuple[int, float]]:
        """Each waiting job's place in line and estimated seconds until it starts."""
        waiting = self.queue.waiting()
        per_step = capacity.seconds_per_step(self.queue.durations())
        now = time.time()
        left = [j.steps * per_step - (now - j.started_at) for j in self.queue.training()]
        etas = capacity.start_estimates(left, [j.steps * per_step for j in waiting], self.max_runs)
        return {j.id: (i + 1, eta) for i, (j, eta) in enumerate(zip(waiting, etas, strict=True))}

    def snapshot_for(self, owner: str) -> LiveState:
        """The run ``owner``'s tab follows: its training job (the newest), else its first
        waiting job, else its latest job; ``LiveState()`` when it has none today."""
        mine = [s for s in self.jobs(owner=owner) if owner]
        for pick in (
            [s for s in mine if s.running][-1:],
            [s for s in mine if s.status == WAITING][:1],
            mine[-1:],
        ):
            if pick:
                return pick[0]
        return LiveState(version=self._version)

    def jobs(self, owner: str | None = None, since: float | None = None) -> list[LiveState]:
        """Every job submitted since ``since`` (default: today), of ``owner`` if given,
        in submission order; the ones this server trains with their live state."""
        rows = self.queue.jobs(today() if since is None else since, owner)
        places = self._places()
        out = []
        for job in rows:
            with self._lock:
                s = self._states.get(job.id)
            if s is not None:
                out.append(self._now(dataclasses.replace(s, nickname=job.nickname)))
            else:
                out.append(self._from_queue(job, places))
        return out

    def set_nickname(self, owner: str, nickname: str) -> str:
        name = self.queue.set_nickname(owner, nickname)
        self._bump()
        return name

    # ------------------------------------------------------------------ control
    def submit(self, cfg: FinetuneConfig, owner: str, device: str | None = None,
               cache: str | None = None, eval_limit: int | None = None,
               nickname: str | None = None) -> int:  # fmt: skip
        """Queue ``cfg`` for ``owner``; returns the job id (it starts at once if a slot
        is free).

        Raises:
            ValueError: the run could not be trained or stored (:func:`preflight`), or
                ``owner`` already has runs waiting (:class:`~minituner.finetune.queue.QueueFull`);
                one line, nothing queued.
        """
        device = self.device if device is None else device
        preflight(cfg, device, cache, eval_limit)
        job = self.queue.submit(owner, _payload(cfg, device, cache, eval_limit), nickname)
        self._bump()
        self.pump()
        return job.id

    def pump(self) -> list[int]:
        """Start waiting jobs while slots are free; returns the ids started."""
        started = []
        with self._lock:
            while self.free_slots() > 0 and not self._closed.is_set():
                job = self.queue.claim(self.server)
                if job is None:
                    break
                self._launch(job)
                started.append(job.id)
        return started

    def _launch(self, job: q.Job) -> None:
        cfg = job.config
        self._states[job.id] = LiveState(
            version=self._version + 1, status=RUNNING, owner=job.owner, config=cfg,
            label=label_of(cfg), steps=job.steps, started_at=time.perf_counter(),
            phase="starting the training process", job_id=job.id, nickname=job.nickname,
            submitted_at=job.submitted_at,
        )  # fmt: skip
        self._bump()

        def on_event(e: ev.Event, job_id: int = job.id) -> None:
            self._on_event(job_id, e)

        try:
            proc = TrainingProcess(
                cfg, on_event, job.job.get("device", "auto"), cache=job.job.get("cache"),
                eval_limit=job.job.get("eval_limit"),
            )  # fmt: skip
        except OSError as e:
            self._on_event(job.id, ev.Failed(f"cannot start training: {e}"))
            return
        self._procs[job.id] = proc
        self._states[job.id] = dataclasses.replace(self._states[job.id], pid=proc.pid)

    def _on_event(self, job_id: int, e: ev.Event) -> None:
        with self._lock:
            s = self._states[job_id] = fold(self._states[job_id], e)
            if isinstance(e, ev.TERMINAL):
                ended = self._procs.pop(job_id, None)
                if ended is not None:  # its reader waits for the child's exit after this
                    self._ending = [p for p in self._ending if not p.join(0)] + [ended]
            self._bump()
        if isinstance(e, ev.TERMINAL):
            try:
                self.queue.finish(job_id, END_STATE[s.status], self.server, s.run_id, s.message)
            except Exception as err:  # noqa: BLE001 - the run is stored; the queue row lags
                log.warning("the run queue did not record job %s's end: %s", job_id, err)
            if s.run_id and self._gpu_free:
                self._learn_memory(job_id, s.run_id)
            self._wake.set()  # the next job starts (from the scheduler thread)

    def _learn_memory(self, job_id: int, run_id: str) -> None:
        """K from a finished GPU run's measured peak: how many such runs fit in the GPU
        memory that was free when this server started (capped at 8)."""
        job = self.queue.get(job_id)
        peak = capacity.stored_peak(run_id, job.job.get("cache") if job else None)
        self.max_runs = capacity.fits(self._gpu_free, peak) if peak else self.max_runs

    def _bump(self) -> None:
        with self._lock:
            self._version += 1

    def stop(self, job_id: int, owner: str) -> bool:
        """Stop ``owner``'s training job (after the current step; a child that does not
        end within the worker's grace period is terminated, then killed) or take its
        waiting job out of the queue. True when done or asked. Anyone else's request (a
        stale Stop of another session, an empty owner) is refused."""
        if not owner or not isinstance(job_id, int):
            return False
        with self._lock:
            p, s = self._procs.get(job_id), self._states.get(job_id)
        if p is not None and s is not None and s.running and s.owner == owner:
            p.stop()
            return True
        if self.queue.cancel(job_id, owner):
            self._bump()
            return True
        return False

    def abort(self) -> None:
        """Stop every run of this server, whoever owns it (server shutdown, tests)."""
        _ = [p.stop() for p in list(self._procs.values())]

    def kill(self) -> None:
        """End every child now (server shutdown, tests)."""
        _ = [p.kill() for p in list(self._procs.values())]

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every run of this server has ended: its terminal event is in and its
        training process has exited (and been waited for)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            procs = [*self._procs.values(), *self._ending]
        for p in procs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not p.join(left):
                return False
        with self._lock:
            self._ending = [p for p in self._ending if not p.join(0)]
        return True

    def close(self) -> None:
        """Stop the scheduler thread (running children go on to their end)."""
        self._closed.set()
        self._wake.set()

    def _loop(self) -> None:
        beat = recover = time.monotonic()
        while not self._closed.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                now = time.monotonic()
                if now - beat >= q.HEARTBEAT_S and self._procs:
                    self.queue.beat(self.server)
                    beat = now
                if now - recover >= RECOVER_S:
                    if self.queue.recover():
                        self._bump()
                    recover = now
                self.pump()
            except Exception as e:  # noqa: BLE001 - a busy or broken file: retry next tick
                log.warning("the run queue: %s", e)


def _payload(cfg: FinetuneConfig, device: str, cache, eval_limit) -> dict:
    cache = None if cache is None else str(cache)
    return {"config": cfg.to_dict(), "device": device, "cache": cache, "eval_limit": eval_limit}


def preflight(
    cfg: FinetuneConfig, device: str = "auto", cache: str | None = None, eval_limit=None
) -> None:
    """The checks the CLI runs before it trains (``minituner finetune``), for a live run:
    the evaluation limit, the device, the base model the child will load, every check of
    ``cfg`` that needs it (:func:`minituner.finetune.config.check_before_training`) and
    whether the run cache can take the run.

    Raises:
        ValueError: the first check that fails, one line.
    """
    from minituner.finetune.config import check_before_training, check_eval_limit
    from minituner.finetune.result import load_base
    from minituner.minigpt.trainutil import resolve_device
    from minituner.store.runs import check_writable

    try:
        check_eval_limit(eval_limit)
    except ValueError as e:
        raise ValueError(f"MINITUNER_EVAL_LIMIT: {e}") from None
    resolve_device(device)
    try:
        base = load_base()  # what the child will load (the same $MINITUNER_DATA)
    except OSError as e:
        raise ValueError(f"the base model cannot be read: {e.strerror or e}") from None
    check_before_training(cfg, base, eval_limit)
    if cache is not None:
        check_writable(Path(cache))
