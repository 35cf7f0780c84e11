"""What a tab shows about one run, waiting, training or ended: :class:`LiveState`.

The scheduler (app/trainer.py) keeps one per job it trains and folds each typed event of
the training child into it (:func:`fold`, pure); a job it does not train (waiting, or
trained by another server on the same run cache, or ended before this server started)
is read from the run queue (:func:`from_job`: no curves, only what the queue keeps).
Sessions only read these states; they are immutable, so a snapshot is a cheap copy.

Nothing here calls Streamlit.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field

from minituner.finetune import events as ev
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.queue import Job

RUNNING = "running"
WAITING = "waiting"
FROM_QUEUE = {"waiting": WAITING, "training": RUNNING, "finished": "completed", "failed": "error",
              "stopped": "stopped", "interrupted": "interrupted"}  # fmt: skip


@dataclass(frozen=True)
class LiveState:
    """What a tab shows about one run (waiting, training or ended)."""

    version: int = 0  # moves with every event: a tab redraws only when it changed
    status: str = (
        "idle"  # idle | waiting | running | completed | stopped | diverged | error | interrupted
    )
    owner: str = ""  # the session that submitted it (only it gets the Stop button)
    config: dict = field(default_factory=dict)
    label: str = ""
    device: str = ""
    step: int = 0
    steps: int = 0
    trainable_params: int = 0
    total_params: int = 0
    loss_steps: tuple[int, ...] = ()
    losses: tuple[float, ...] = ()
    evals: tuple[ev.Evaluation, ...] = ()
    tokens_per_s: float = 0.0
    message: str = ""
    run_id: str = ""  # set once the finished run is in the store
    started_at: float = 0.0
    elapsed_s: float = 0.0
    phase: str = ""  # what the child is doing now
    pid: int = 0
    job_id: int = 0  # the job in the run queue (0: none)
    nickname: str = ""
    position: int = 0  # while waiting: 1 starts next
    eta_s: float | None = None  # while waiting: the estimated seconds until it starts
    submitted_at: float = 0.0  # wall clock (time.time())

    @property
    def running(self) -> bool:
        return self.status == RUNNING


def fold(s: LiveState, e: ev.Event) -> LiveState:
    """The state after one event (pure: the reader thread and the tests use it)."""
    r = dataclasses.replace
    match e:
        case ev.Phase(name=name):
            s = r(s, phase=name)
        case ev.Started():
            s = r(s, device=e.device, trainable_params=e.trainable_params,
                  total_params=e.total_params, steps=e.steps, label=e.label)  # fmt: skip
        case ev.Step():
            s = r(s, step=e.step, loss_steps=(*s.loss_steps, e.step),
                  losses=(*s.losses, e.loss), tokens_per_s=e.tokens_per_s)  # fmt: skip
        case ev.Evaluation():
            s = r(s, evals=(*s.evals, e))
        case ev.Finished():
            s = r(s, status=ev.STATUS[type(e)], run_id=e.run_id, phase="")
        case ev.Stopped() | ev.Diverged() | ev.Failed():
            s = r(s, status=ev.STATUS[type(e)], message=e.message, phase="")
    return r(s, version=s.version + 1, elapsed_s=time.perf_counter() - s.started_at)


def label_of(config: dict) -> str:
    """A configuration's label (what the Train page's header shows)."""
    try:
        return FinetuneConfig.from_dict(config).label()
    except (ValueError, TypeError, KeyError):
        return "(a configuration this version cannot read)"


def from_job(job: Job, version: int, position: int = 0, eta_s: float | None = None) -> LiveState:
    """The state of a job this server does not train, from its row in the run queue."""
    s = LiveState(
        version=version, status=FROM_QUEUE[job.state], owner=job.owner, config=job.config,
        label=label_of(job.config), steps=job.steps, message=job.message, run_id=job.run_id,
        job_id=job.id, nickname=job.nickname, pid=job.pid, submitted_at=job.submitted_at,
        position=position, eta_s=eta_s,
    )  # fmt: skip
    if job.state == "training":
        s = dataclasses.replace(s, phase=f"training on another server ({job.host})")
    return s


def today() -> float:
    """Local midnight as a time.time() value (the Class page shows today's runs)."""
    return datetime.datetime.combine(datetime.date.today(), datetime.time()).timestamp()
