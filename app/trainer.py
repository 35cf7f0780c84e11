"""The live-training worker: one fine-tuning run at a time, in a background thread.

The thread never calls Streamlit. It runs :func:`minituner.train.finetune_events` and
copies each event into a :class:`TrainState` under a lock; the Train page polls
:meth:`Trainer.snapshot` from an ``st.fragment(run_every=...)`` and draws what it sees.
``Trainer.stop()`` sets a flag that ``finetune_events`` checks between steps. A finished
run is saved to the run store by the thread itself, so it is kept even when the browser
tab that started it has been closed.

The app holds one :class:`Trainer` per server (``st.cache_resource``): a second session
that asks for a run while one is going is told so (``start`` returns False).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import traceback
from dataclasses import dataclass, field

from minituner.runs import RunStore
from minituner.train import Base, FinetuneConfig, finetune_events

RUNNING = "running"
FINISHED = ("completed", "stopped", "diverged", "error")


@dataclass
class TrainState:
    """What the page shows about the current (or last) live run."""

    status: str = "idle"  # idle | running | completed | stopped | diverged | error
    owner: str = ""  # the session that started it
    config: dict = field(default_factory=dict)
    label: str = ""
    device: str = ""
    step: int = 0
    steps: int = 0
    trainable_params: int = 0
    total_params: int = 0
    loss_steps: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    tokens_per_s: float = 0.0
    message: str = ""
    run_id: str = ""  # set once the finished run is in the store
    started_at: float = 0.0
    elapsed_s: float = 0.0
    phase: str = ""  # what the worker is doing now (preparing, training, evaluating, saving)

    @property
    def running(self) -> bool:
        return self.status == RUNNING


class Trainer:
    """A single background fine-tuning worker (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = TrainState()

    # ------------------------------------------------------------------ queries
    def snapshot(self) -> TrainState:
        """A copy of the state, safe to read while the worker runs."""
        with self._lock:
            s = self._state
            if s.running:
                s.elapsed_s = time.perf_counter() - s.started_at
            return copy.deepcopy(s)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._state.running

    # ------------------------------------------------------------------ control
    def start(
        self,
        cfg: FinetuneConfig,
        base: Base,
        owner: str,
        device: str = "auto",
        store: RunStore | None = None,
    ) -> bool:
        """Start training ``cfg`` in the background. False when a run is already going."""
        with self._lock:
            if self._state.running:
                return False
            self._stop.clear()
            self._state = TrainState(
                status=RUNNING,
                owner=owner,
                config=cfg.to_dict(),
                label=cfg.label(),
                steps=cfg.steps,
                started_at=time.perf_counter(),
                phase="preparing (copying the base model, evaluating it)",
            )
            # the worker moves its model between devices: give it its own copy, so
            # pages that read the shared base model are never disturbed
            own = dataclasses.replace(base, model=copy.deepcopy(base.model))
            self._thread = threading.Thread(
                target=self._run,
                args=(cfg, own, device, store),
                name="minituner-train",
                daemon=True,
            )
            self._thread.start()
            return True

    def stop(self) -> None:
        """Ask the worker to stop after the current step."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout)

    # ------------------------------------------------------------------ worker
    def _update(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self._state, k, v)
            self._state.elapsed_s = time.perf_counter() - self._state.started_at

    def _run(self, cfg: FinetuneConfig, base: Base, device: str, store: RunStore | None):
        try:
            result = None
            for ev in finetune_events(cfg, base, device, should_stop=self._stop.is_set):
                kind = ev["type"]
                if kind == "start":
                    self._update(
                        device=ev["device"],
                        trainable_params=ev["trainable_params"],
                        total_params=ev["total_params"],
                        phase="training",
                    )
                elif kind == "step":
                    with self._lock:
                        s = self._state
                        s.step = ev["step"]
                        s.loss_steps = [*s.loss_steps, ev["step"]]
                        s.losses = [*s.losses, ev["loss"]]
                        s.tokens_per_s = ev["tokens_per_s"]
                        last = ev["step"] == ev["steps"]
                        s.phase = "final evaluation" if last else "training"
                elif kind == "eval":
                    ev = {k: v for k, v in ev.items() if k != "type"}
                    with self._lock:
                        self._state.evals = [*self._state.evals, ev]
                elif kind == "end":
                    result = ev["result"]
            if result is None:  # pragma: no cover - finetune_events always ends
                raise RuntimeError("training ended without a result")
            if result.ok():
                self._update(phase="saving to the run store")
                info = (store or RunStore()).save(result)
                self._update(run_id=info.run_id)
            self._update(status=result.status, message=result.message, phase="")
        except Exception as e:  # noqa: BLE001 - the page shows it; the server lives on
            self._update(
                status="error",
                message=f"{type(e).__name__}: {e}",
                phase="",
            )
            traceback.print_exc()
