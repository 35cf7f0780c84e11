"""The server's one live run: a training child process and the state every tab reads.

Training never happens in the Streamlit server's interpreter. :class:`Trainer` (one per
server, ``st.cache_resource``) starts a :class:`minituner.finetune.worker.TrainingProcess`; its
reader thread folds each typed event into a :class:`LiveState` under a lock and bumps
``version``. Sessions only read: ``snapshot()`` is a cheap copy, and the Train page
redraws only when ``version`` moved. The child saves a completed run to the store itself,
so the run is kept when every tab has been closed; a killed server takes its child with
it (the child exits when its stdin pipe closes).

Nothing here calls Streamlit.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

from minituner.finetune import events as ev
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.worker import TrainingProcess

RUNNING = "running"


@dataclass(frozen=True)
class LiveState:
    """What every tab shows about the current (or last) live run."""

    version: int = 0  # bumped by every event: a tab redraws only when it changed
    status: str = "idle"  # idle | running | completed | stopped | diverged | error
    owner: str = ""  # the session that started it (only it gets the Stop button)
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


class Trainer:
    """The server's single live run (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = LiveState()
        self._proc: TrainingProcess | None = None

    # ------------------------------------------------------------------ queries
    def snapshot(self) -> LiveState:
        """The current state (immutable; the elapsed time is brought up to now)."""
        with self._lock:
            s = self._state
        if s.running:
            s = dataclasses.replace(s, elapsed_s=time.perf_counter() - s.started_at)
        return s

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def busy(self) -> bool:
        return self._state.running

    # ------------------------------------------------------------------ control
    def start(
        self,
        cfg: FinetuneConfig,
        owner: str,
        device: str = "auto",
        cache: str | None = None,
        eval_limit: int | None = None,
    ) -> bool:
        """Start training ``cfg`` in a child process. False when a run is already going."""
        with self._lock:
            if self._state.running:
                return False
            self._state = LiveState(
                version=self._state.version + 1,
                status=RUNNING,
                owner=owner,
                config=cfg.to_dict(),
                label=cfg.label(),
                steps=cfg.steps,
                started_at=time.perf_counter(),
                phase="starting the training process",
            )
            try:
                self._proc = TrainingProcess(
                    cfg.to_dict(), self._on_event, device, cache=cache, eval_limit=eval_limit
                )
            except OSError as e:
                self._state = fold(self._state, ev.Failed(f"cannot start training: {e}"))
                return True
            self._state = dataclasses.replace(self._state, pid=self._proc.pid)
            return True

    def stop(self) -> None:
        """Ask the child to stop after the current step."""
        p = self._proc
        if p is not None:
            p.stop()

    def kill(self) -> None:
        """End the child now (server shutdown, tests)."""
        p = self._proc
        if p is not None:
            p.kill()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the run has ended (its terminal event is in the state)."""
        p = self._proc
        return True if p is None else p.join(timeout)

    def _on_event(self, e: ev.Event) -> None:
        with self._lock:
            self._state = fold(self._state, e)
