"""Fine-tuning in a child process of its own, speaking typed events over a pipe.

The app never trains in its server's interpreter: :class:`TrainingProcess` spawns
``python -m minituner.finetune.worker JOB`` (a fresh interpreter, not a fork, so CUDA works), which
has the CPU threads or the GPU to itself. The protocol:

* **argv**: one JSON object, the job: ``{"config": FinetuneConfig.to_dict(), "device":
  "auto", "cache": "<run-store save root>" | null, "eval_limit": int | null}``.
* **stdout**: one :mod:`minituner.finetune.events` event per line, ending with exactly one
  terminal event (``Finished`` with the stored ``run_id``, ``Stopped``, ``Diverged`` or
  ``Failed``). Anything else the child prints goes to stderr.
* **stdin**: the line ``stop`` asks for a stop between two steps (the run ends with
  ``Stopped`` and nothing is stored). End of file means the parent is gone: the child
  exits at once, so a killed server leaves no orphan. A run is stored atomically by the
  run store, so exiting at any moment never leaves a half-written run.
* **signals**: a child that has not ended ``STOP_GRACE_S`` after ``stop`` (frozen, or
  stuck in native code) gets SIGTERM (and SIGCONT, so that a stopped child receives it),
  then after ``KILL_GRACE_S`` more SIGKILL; the parent then reports ``Stopped``.

A completed run is saved by the child itself (``Phase("saving")`` then ``Finished``),
so it is kept even when no one is watching any more. When the child dies without a
terminal event (killed, out of memory, a crash in native code) the parent reports
``Failed`` with the exit code and the last line the child wrote to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path

from minituner.finetune import events as ev

STOP = "stop"
STOP_GRACE_S = 10.0  # after Stop, how long a child may take to end by itself (a step, a save)
KILL_GRACE_S = 5.0  # after SIGTERM, how long before SIGKILL


# ---------------------------------------------------------------------- the child
def _watch_stdin(stop: threading.Event) -> None:
    """``stop`` lines set the flag; end of file (the parent died) ends the process."""
    for line in sys.stdin:
        if line.strip() == STOP:
            stop.set()
    os._exit(3)


def child_main(job_text: str) -> int:
    """The child process: run the job, write events to the real stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints (libraries, compilers) must not corrupt the protocol

    def emit(e: ev.Event) -> None:
        out.write(ev.dumps(e) + "\n")
        out.flush()

    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    try:
        from minituner.finetune.config import FinetuneConfig
        from minituner.finetune.loop import Training
        from minituner.minigpt.trainutil import torch_threads_from_env
        from minituner.store.runs import RunStore

        torch_threads_from_env()
        job = json.loads(job_text)
        cfg = FinetuneConfig.from_dict(job["config"])
        run = Training(cfg, None, job.get("device", "auto"), stop.is_set, job.get("eval_limit"))
        for e in run:
            if isinstance(e, ev.Finished):
                emit(ev.Phase("saving", "writing the run to the store"))
                cache = job.get("cache")
                store = RunStore() if cache is None else RunStore(save_root=Path(cache))
                info = store.save(run.result)
                e = ev.Finished(
                    e.wall_time_s, e.irregular_accuracy, e.control_en_drift, info.run_id
                )
            emit(e)
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        traceback.print_exc()
        emit(ev.Failed(_one_line(e)))
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------- the parent
def _child_env(env: dict | None) -> dict:
    """The parent's environment, with this copy of the package first on the path."""
    env = dict(os.environ if env is None else env)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class TrainingProcess:
    """One training child and a reader thread that hands its events to ``on_event``.

    ``on_event`` is called from the reader thread, once per event, ending with exactly
    one terminal event (synthesised as ``Failed`` when the child dies without one).
    ``stop()`` asks for a stop between steps and, should the child not end within
    ``stop_grace_s``, terminates it, then kills it ``kill_grace_s`` later (the run then
    ends as ``Stopped``); ``kill()`` ends the child at once. The child is always waited
    for (no zombie).
    """

    def __init__(
        self,
        config: dict,
        on_event: Callable[[ev.Event], None],
        device: str = "auto",
        cache: str | os.PathLike | None = None,
        eval_limit: int | None = None,
        python: str = sys.executable,
        env: dict | None = None,
        stop_grace_s: float | None = None,
        kill_grace_s: float | None = None,
    ) -> None:
        job = {
            "config": config,
            "device": device,
            "cache": None if cache is None else str(cache),
            "eval_limit": eval_limit,
        }
        self._on_event = on_event
        self.stop_grace_s = STOP_GRACE_S if stop_grace_s is None else stop_grace_s
        self.kill_grace_s = KILL_GRACE_S if kill_grace_s is None else kill_grace_s
        self._stop_asked = False
        self._forced = ""  # the signal that ended a child which ignored stop, if any
        self._steps = 0  # the last step reported (for a forced Stopped)
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [python, "-m", "minituner.finetune.worker", json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            env=_child_env(env),
        )
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._err.start()
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Ask the child to stop after the current step (it reports ``Stopped``); a child
        that has not ended ``stop_grace_s`` later is terminated, then killed."""
        with self._lock:
            try:
                self.proc.stdin.write(STOP + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # already gone: the reader reports how it ended
            if self._stop_asked:
                return
            self._stop_asked = True
        threading.Thread(target=self._end_if_stuck, daemon=True).start()

    def _end_if_stuck(self) -> None:
        for sig, grace in (
            (signal.SIGTERM, self.stop_grace_s),
            (signal.SIGKILL, self.kill_grace_s),
        ):
            try:
                self.proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                pass
            self._forced = sig.name
            try:
                self.proc.send_signal(sig)
                if sig == signal.SIGTERM:
                    self.proc.send_signal(signal.SIGCONT)  # a stopped child gets the SIGTERM
            except OSError:
                return  # it has just ended

    def kill(self) -> None:
        """End the child now (the reader reports ``Failed`` unless it already ended)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader to see the end; True when it has."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            sys.stderr.write(line)
            if line.strip():
                self._stderr_tail.append(line.rstrip())

    def _read_events(self) -> None:
        ended = False
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                e = ev.loads(line)
            except ValueError as err:
                sys.stderr.write(f"minituner worker: ignoring a bad event line: {err}\n")
                continue
            if ended:
                continue
            ended = isinstance(e, ev.TERMINAL)
            if isinstance(e, ev.Step):
                self._steps = e.step
            self._on_event(e)
        rc = self.proc.wait()
        self._err.join(5)
        with self._lock:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if not ended and self._forced:
            why = f"did not stop within {self.stop_grace_s:g} s and was ended ({self._forced})"
            self._on_event(
                ev.Stopped(f"stopped by the user; the training process {why}", self._steps)
            )
        elif not ended:
            last = self._stderr_tail[-1] if self._stderr_tail else ""
            why = f"the training process exited with code {rc}"
            self._on_event(ev.Failed(f"{why}: {last}" if last else why))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m minituner.finetune.worker JOB_JSON\n")
        sys.exit(2)
    sys.exit(child_main(sys.argv[1]))
