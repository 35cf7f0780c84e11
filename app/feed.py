"""The live run as a small JSON file that every watching tab's live panel fetches itself.

A Streamlit redraw costs each watching browser far more than the chart it carries (the
frontend reruns its whole app tree: measured with benchmarks/bench_live.py, about
0.1-0.2 s of browser CPU per redraw per tab, on the same cores as the training). So
while a run goes, the live panel (app/live.py) polls this file through Streamlit's static
file serving (``server.enableStaticServing``, files under ``app/static/``) and redraws
only the parts that changed; Streamlit itself draws nothing until the run ends.

:class:`Feed` is one thread per server: it waits for the trainer's version to move,
renders the panel (a function from a :class:`app.trainer.LiveState` to its parts' HTML) and
replaces the file atomically, at most every ``min_gap_s``. The file is
``app/static/live/live-<server pid>-<random>.json``: a random name per server, removed
when the server exits (files of servers that died are swept by the next one).

A write that fails (a full disk, a folder made read-only or removed) is logged once per
run and remembered: :meth:`Feed.usable` is then False for that run, and the page draws it
server-side instead (app/live.py), so a tab never waits for a file that will not change.

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
MIN_GAP_S = 0.5  # the file changes at most this often
log = logging.getLogger(__name__)


def run_key(s) -> float:
    """Which run a snapshot belongs to (its start time; 0 before any run)."""
    return s.started_at


class Feed:
    """Publishes ``render(trainer.snapshot())`` to a JSON file whenever the version moves.

    The file holds ``{"version": int, "running": bool, "status": str, "parts": {name: html}}``:
    the rendered panel, part by part, while a run goes; no parts otherwise (the page draws
    a run's outcome itself).

    Args:
        trainer: anything with ``version`` and ``snapshot()`` (``app.trainer.Trainer``).
        render: the panel's markup for a snapshot, part by part (``{name: html}``).
        folder: where the file goes (Streamlit serves ``app/static/``).
        min_gap_s: the least time between two writes.

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
        self.name = f"live-{os.getpid()}-{secrets.token_hex(8)}.json"
        self.path = self.folder / self.name
        self.written = -1  # the version last written
        self.error: str | None = None  # why the last write failed (None: it succeeded)
        self.failed_run: float | None = None  # the run (run_key) during which a write failed
        self._closed = threading.Event()
        self._lock = threading.Lock()  # one writer at a time (the thread, or a caller)
        self.publish()  # the file exists before any tab asks for it
        self._thread = threading.Thread(target=self._loop, name="minituner-live-feed", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def url(self, base_url_path: str = "") -> str:
        """The file's path on the server, for a page served under ``base_url_path``."""
        base = base_url_path.strip("/")
        return "/" + (f"{base}/" if base else "") + f"{URL_DIR}/{self.name}"

    def usable(self, s) -> bool:
        """Whether tabs can follow snapshot ``s`` through the file: the last write
        succeeded and, while ``s`` runs, none failed during its run (an idle watcher
        needs only a working file)."""
        return self.error is None and not (s.running and self.failed_run == run_key(s))

    def publish(self) -> int:
        """Write the current snapshot now; returns its version.

        Raises:
            OSError: the file cannot be written (logged, and remembered: :meth:`usable`).
        """
        with self._lock:
            if self._closed.is_set():  # closed: the file stays removed
                return self.written
            s = self.trainer.snapshot()
            payload = {"version": s.version, "running": s.running, "status": s.status}
            payload["parts"] = self.render(s) if s.running else {}  # idle tabs poll a tiny file
            tmp = self.path.with_name(self.name + ".tmp")
            try:
                tmp.write_text(json.dumps(payload), encoding="utf-8")
                os.replace(tmp, self.path)  # a fetch sees the old file or the new one
            except OSError as e:
                self._failed(s, e)
                raise
            self.written, self.error = s.version, None
            return s.version

    def _failed(self, s, e: OSError) -> None:
        if self.failed_run != run_key(s):  # once per run: the thread retries on every news
            log.warning(
                "the live feed %s cannot be written (%s); the pages draw this run themselves",
                self.path, e,
            )  # fmt: skip
        self.error, self.failed_run = str(e), run_key(s)
        try:
            self.path.with_name(self.name + ".tmp").unlink(missing_ok=True)
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._closed.wait(TICK_S):
            if self.trainer.version == self.written:
                continue
            try:
                self.publish()
            except OSError:  # logged; the pages draw this run; try again on the next news
                pass
            self._closed.wait(self.min_gap_s)

    def close(self) -> None:
        """Stop the thread and remove the file."""
        self._closed.set()
        with self._lock:
            for p in (self.path, self.path.with_name(self.name + ".tmp")):
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
