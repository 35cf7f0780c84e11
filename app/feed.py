"""Each run of the server as a small JSON file that the live panel of every tab following
it fetches itself.

A Streamlit redraw costs each watching browser far more than the chart it carries (the
frontend reruns its whole app tree: measured with benchmarks/bench_live.py, about
0.1-0.2 s of browser CPU per redraw per tab, on the same cores as the training). So
while a run waits or trains, the live panel (app/live.py) polls its run's file through
Streamlit's static file serving (``server.enableStaticServing``, files under
``app/static/``) and redraws only the parts that changed; Streamlit itself draws nothing
until the run starts or ends.

:class:`Feed` is one thread per server: it waits for the trainer's version to move,
renders the panel of every job of today that waits or trains (a function from a
:class:`app.run_state.LiveState` to its parts' HTML) and replaces that job's file
atomically when what it shows changed, at most every ``min_gap_s``; a job that ended
gets one last file without parts (the tab then draws the outcome itself). Each tab
follows its own job's file, so one learner's run never shows in another's tab unless
they open it. The files are ``app/static/live/live-<server pid>-<random>-<job id>.json``:
a random prefix per server (a job's file cannot be guessed from its id), removed when
the server exits (files of servers that died are swept by the next one).

A write that fails (a full disk, a folder made read-only or removed) is logged once per
job and remembered: :meth:`Feed.usable` is then False for that job while it runs, and
the page draws it server-side instead (app/live.py), so a tab never waits for a file
that will not change.

Nothing here calls Streamlit.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

FEED_DIR = Path(__file__).resolve().parent / "static" / "live"
URL_DIR = "app/static/live"  # where Streamlit serves FEED_DIR (relative to the base URL)
TICK_S = 0.1  # how often the thread looks at the trainer's version (an int read)
MIN_GAP_S = 0.5  # the files change at most this often
ACTIVE = ("waiting", "running")  # a job in these states has a panel in its file
GONE = "gone"  # the status of a job that left the trainer's list (another day's)
log = logging.getLogger(__name__)


class Feed:
    """Publishes ``render(state)`` of every waiting or training job to the job's own JSON
    file whenever the trainer's version moves.

    A job's file holds ``{"job": int, "version": int, "running": bool, "status": str,
    "parts": {name: html}}``: the rendered panel, part by part, while the job waits or
    trains; no parts once it has ended (the page draws the outcome itself). ``version``
    is the trainer's version when the file last changed.

    Args:
        trainer: anything with ``version`` and ``jobs()`` (``app.trainer.Trainer``).
        render: the panel's markup for a state, part by part (``{name: html}``).
        folder: where the files go (Streamlit serves ``app/static/``).
        min_gap_s: the least time between two rounds of writes.

    Raises:
        OSError: if ``folder`` cannot be created.
    """

    def __init__(
        self,
        trainer,
        render: Callable[[object], dict[str, str]],
        folder: Path = FEED_DIR,
        min_gap_s: float = MIN_GAP_S,
    ) -> None:
        self.trainer, self.render, self.min_gap_s = trainer, render, min_gap_s
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        sweep(self.folder)
        self.prefix = f"live-{os.getpid()}-{secrets.token_hex(8)}"
        self.seen = -1  # the trainer's version at the last round of writes
        self._shown: dict[int, str] = {}  # job -> what its file shows (without the version)
        self.error: str | None = None  # why the last write failed (None: it succeeded)
        self.failed: set[int] = set()  # jobs during whose run a write failed
        self._closed = threading.Event()
        self._lock = threading.Lock()  # one writer at a time (the thread, or a caller)
        self.publish()  # the files of today's jobs exist before any tab asks for them
        self._thread = threading.Thread(target=self._loop, name="minituner-live-feed", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def name(self, job_id: int) -> str:
        return f"{self.prefix}-{int(job_id)}.json"

    def path(self, job_id: int) -> Path:
        return self.folder / self.name(job_id)

    def url(self, job_id: int, base_url_path: str = "") -> str:
        """Job ``job_id``'s file on the server, for a page served under ``base_url_path``."""
        base = base_url_path.strip("/")
        return "/" + (f"{base}/" if base else "") + f"{URL_DIR}/{self.name(job_id)}"

    def usable(self, s) -> bool:
        """Whether a tab can follow state ``s`` through its job's file: the last write
        succeeded and, while ``s`` waits or trains, none failed for its job."""
        active = s.status in ACTIVE
        return self.error is None and not (active and s.job_id in self.failed)

    def publish(self) -> int:
        """Write every job's file whose content changed; returns the trainer's version.

        Raises:
            OSError: a file cannot be written (logged, and remembered: :meth:`usable`).
        """
        with self._lock:
            if self._closed.is_set():  # closed: the files stay removed
                return self.seen
            version = self.trainer.version
            states = {s.job_id: s for s in self.trainer.jobs() if s.job_id}
            for job_id in [j for j in self._shown if j not in states]:
                self._write(job_id, version, {"running": False, "status": GONE, "parts": {}})
                del self._shown[job_id]
            for job_id, s in states.items():
                active = s.status in ACTIVE
                body = {"running": s.running, "status": s.status}
                body["parts"] = self.render(s) if active else {}
                self._write(job_id, version, body)
            self.seen, self.error = version, None
            return version

    def _write(self, job_id: int, version: int, body: dict) -> None:
        text = json.dumps(body, sort_keys=True)
        if self._shown.get(job_id) == text:
            return
        path = self.path(job_id)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"job": job_id, "version": version, **body}), "utf-8")
            os.replace(tmp, path)  # a fetch sees the old file or the new one
        except OSError as e:
            self._failed(job_id, path, e)
            raise
        self._shown[job_id] = text

    def _failed(self, job_id: int, path: Path, e: OSError) -> None:
        if job_id not in self.failed:  # once per job: the thread retries on every news
            log.warning(
                "the live feed %s cannot be written (%s); the pages draw this run themselves",
                path, e,
            )  # fmt: skip
        self.error = str(e)
        self.failed.add(job_id)
        try:
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._closed.wait(TICK_S):
            if self.trainer.version == self.seen:
                continue
            try:
                self.publish()
            except OSError:  # logged; the pages draw that run; try again on the next news
                pass
            except Exception as e:  # noqa: BLE001 - a busy queue file: the next news retries
                log.warning("the live feed: %s", e)
            self._closed.wait(self.min_gap_s)

    def close(self) -> None:
        """Stop the thread and remove the files."""
        self._closed.set()
        with self._lock:
            for p in self.folder.glob(f"{self.prefix}-*.json*"):
                p.unlink(missing_ok=True)


def sweep(folder: Path) -> list[Path]:
    """Remove the feed files of servers that are no longer running; returns them."""
    gone = []
    for p in folder.glob("live-*.json*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
