"""The server's one live run: a training child process and the state every tab reads.

Training never happens in the Streamlit server's interpreter. :class:`Trainer` (one per
server, ``st.cache_resource``) starts a :class:`minituner.finetune.worker.TrainingProcess`; its
reader thread folds each typed event into a :class:`LiveState` under a lock and bumps
``version``. Sessions only read: ``snapshot()`` is a cheap copy, and the Train page
redraws only when ``version`` moved. The child saves a completed run to the store itself,
so the run is kept when every tab has been closed; a killed server takes its child with
it (the child exits when its stdin pipe closes).

Before a child starts, :func:`preflight` runs the checks the CLI runs before training
(device, base model found, rank, taught verb, run cache writable, evaluation limit), so
a run that could not be stored is refused with one line instead of trained in vain.
Only the run's owner (a token the browser keeps, see app/live.py) can stop it: the check
is here, on the server, not only in what the page shows.

Nothing here calls Streamlit.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        """Start training ``cfg`` in a child process. False when a run is already going.

        Raises:
            ValueError: the run could not be trained or stored (:func:`preflight`, one
                line); nothing was started and the state is unchanged.
        """
        if self._state.running:
            return False
        preflight(cfg, device, cache, eval_limit)
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

    def stop(self, owner: str) -> bool:
        """Ask the child to stop after the current step, if ``owner`` started the run
        (a stale Stop of another session is refused); True when it was asked. A child
        that does not end within the worker's grace period is terminated, then killed."""
        with self._lock:
            p, s = self._proc, self._state
        if p is None or not s.running or not owner or owner != s.owner:
            return False
        p.stop()
        return True

    def abort(self) -> None:
        """Stop the run whoever owns it (server shutdown, tests)."""
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
