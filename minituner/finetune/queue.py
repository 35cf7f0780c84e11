"""The run queue: every live run a server was asked for, kept on disk so a restart loses none.

A class on one server submits many runs at once; up to K train (``app/trainer.py``, one
child process each), the rest wait in order. :class:`JobQueue` is the persistent part:
one SQLite file from the standard library (``queue.sqlite3`` in the run cache, beside the
runs it produces), in WAL mode so that readers (every tab, the Class page) never wait
for a writer, and one transaction per change, so a server killed at any moment leaves
each job in exactly one state. Nothing here starts a process or imports Streamlit.

A :class:`Job` is its ``owner`` (the browser's token: only it may stop the job), a
``nickname``, the child's ``job`` (``{"config", "device", "cache", "eval_limit"}``),
``state``, ``position``, the ``server``/``host``/``pid``/``heartbeat`` of the server that
claimed it, the stored ``run_id``, a one-line ``message`` and timestamps. States::

    waiting -> training -> finished | failed | stopped
    waiting -> stopped               (its owner took it out of the queue)
    training -> interrupted          (the server training it died: pid gone or heartbeat stale)

Why these rules:

* **Claims are atomic.** :meth:`JobQueue.claim` is one ``BEGIN IMMEDIATE`` transaction
  whose ``UPDATE ... WHERE state = 'waiting' ... RETURNING`` moves the first waiting job
  to ``training`` for the claiming server; SQLite lets one writer in at a time, so two
  servers on one cache never take the same job.
* **Fairness by a limit.** One owner may hold at most ``MAX_WAITING`` waiting jobs
  (:class:`QueueFull` says so in one line); the queue itself is first come, first served.
* **A dead server's runs are not silently lost.** The server that claimed a job beats
  its heartbeat every few seconds; :meth:`JobQueue.recover` (run by every server when it
  starts and now and then) marks a training job ``interrupted`` when its server's
  process is gone (same host) or its heartbeat is older than ``STALE_S``. Waiting jobs
  stay waiting: the next server takes them.
* **A file that is not ours is never touched.** The file carries SQLite's
  ``application_id`` and a ``user_version`` (the schema version); a corrupt file, another
  program's database or a newer schema raise :class:`QueueError` with one line saying
  what to do, and the stored runs are not affected.

When a waiting job should start is estimated from :meth:`JobQueue.durations` by
:func:`minituner.finetune.capacity.start_estimates`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

FILE_NAME = "queue.sqlite3"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x4D4E5451  # "MNTQ": a minituner queue
MAX_WAITING = 2  # waiting jobs one owner may hold
HEARTBEAT_S = 5.0  # a server beats its training jobs this often...
STALE_S = 60.0  # ...and a job whose heartbeat is older than this has lost its server
BUSY_S = 10.0  # how long a change waits for another server's transaction
NICKNAME_MAX = 40
STATES = ("waiting", "training", "finished", "failed", "stopped", "interrupted")
ENDED = ("finished", "failed", "stopped", "interrupted")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL,
    nickname TEXT NOT NULL DEFAULT '', job TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    position INTEGER NOT NULL, server TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT 0,
    heartbeat REAL NOT NULL DEFAULT 0, run_id TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '', submitted_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0, ended_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, position);
"""


class QueueError(ValueError):
    """The queue file cannot be used (corrupt, foreign, newer, unreadable): one line."""


class QueueFull(ValueError):
    """An owner already holds ``MAX_WAITING`` waiting jobs."""


@dataclass(frozen=True)
class Job:
    """One row of the queue (immutable: a change is a new row read back)."""

    id: int
    owner: str
    nickname: str
    job: dict
    state: str
    position: int
    server: str
    host: str
    pid: int
    heartbeat: float
    run_id: str
    message: str
    submitted_at: float
    started_at: float
    ended_at: float

    @property
    def config(self) -> dict:
        return self.job.get("config", {})

    @property
    def steps(self) -> int:
        steps = self.config.get("steps", 0)
        return steps if isinstance(steps, int) and steps > 0 else 1

    @property
    def duration_s(self) -> float | None:
        """How long it trained (None until it has ended after a start)."""
        if self.started_at and self.ended_at >= self.started_at:
            return self.ended_at - self.started_at
        return None


_COLUMNS = ", ".join(f.name for f in fields(Job))


def _row(r: tuple) -> Job:
    d = dict(zip((f.name for f in fields(Job)), r, strict=True))
    d["job"] = json.loads(d["job"])
    return Job(**d)


def default_path() -> Path:
    """``queue.sqlite3`` in the run cache (``$MINITUNER_CACHE``, default ~/.cache/minituner/runs)."""
    from minituner.store.runs import default_cache_dir

    return default_cache_dir() / FILE_NAME


def clean_nickname(name: str) -> str:
    """A nickname as stored: printable, one line, spaces folded, at most NICKNAME_MAX."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(name)).split())
    return text[:NICKNAME_MAX]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


class JobQueue:
    """The queue in one SQLite file (thread-safe; one connection per instance).

    Raises:
        QueueError: the file is corrupt, another program's, of a newer schema, or cannot
            be opened (one line naming it; nothing in it is changed).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.Lock()
        self._con = self._open()

    # ------------------------------------------------------------------ opening
    def _fail(self, why: str) -> QueueError:
        return QueueError(
            f"the run queue {self.path} cannot be used: {why}; move it away (stored runs "
            "are not affected) and restart"
        )

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from None
        if self.path.exists() and not self.path.is_file():
            raise self._fail("it is not a regular file")
        try:
            con = sqlite3.connect(
                self.path, timeout=BUSY_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise self._fail(str(e)) from None
        try:
            self._check(con)
            con.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
            con.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint, fast
        except sqlite3.Error as e:
            con.close()
            raise self._fail(" ".join(str(e).split())) from None
        except QueueError:
            con.close()
            raise
        return con

    def _check(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")  # two servers creating one file: one does it
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app == 0 and tables == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif app != APPLICATION_ID:
                raise self._fail("it is another program's database, not a minituner queue")
            elif version > SCHEMA_VERSION:
                raise self._fail(
                    f"its schema version {version} is newer than this minituner's "
                    f"({SCHEMA_VERSION})"
                )
            elif version < 1:
                raise self._fail(f"its schema version {version} is unknown")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # ------------------------------------------------------------------ transactions
    def _tx(self, fn):
        """Run ``fn(connection)`` in one ``BEGIN IMMEDIATE`` transaction."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._con)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
            return out

    def _read(self, sql: str, args: tuple = ()) -> list[Job]:
        with self._lock:
            return [_row(r) for r in self._con.execute(f"SELECT {_COLUMNS} FROM jobs " + sql, args)]

    # ------------------------------------------------------------------ changes
    def submit(
        self,
        owner: str,
        job: dict,
        nickname: str | None = None,
        limit: int = MAX_WAITING,
        now: float | None = None,
    ) -> Job:
        """Add a waiting job at the end of the queue.

        Raises:
            QueueFull: ``owner`` already holds ``limit`` waiting jobs.
            ValueError: an empty owner.
        """
        if not owner:
            raise ValueError("a job needs an owner")
        payload = json.dumps(job)
        now = time.time() if now is None else now

        def add(con):
            (waiting,) = con.execute(
                "SELECT count(*) FROM jobs WHERE owner = ? AND state = 'waiting'", (owner,)
            ).fetchone()
            if waiting >= limit:
                raise QueueFull(
                    f"you already have {waiting} runs waiting (at most {limit} per session): "
                    "wait until one starts, or stop one, before you add another"
                )
            name = nickname
            if name is None:
                r = con.execute(
                    "SELECT nickname FROM jobs WHERE owner = ? ORDER BY id DESC LIMIT 1", (owner,)
                ).fetchone()
                name = r[0] if r else ""
            (last,) = con.execute("SELECT coalesce(max(position), 0) FROM jobs").fetchone()
            return con.execute(
                "INSERT INTO jobs (owner, nickname, job, state, position, submitted_at) "
                f"VALUES (?, ?, ?, 'waiting', ?, ?) RETURNING {_COLUMNS}",
                (owner, clean_nickname(name), payload, last + 1, now),
            ).fetchone()

        return _row(self._tx(add))

    def claim(self, server: str, pid: int | None = None, host: str | None = None,
              now: float | None = None, job_id: int | None = None) -> Job | None:  # fmt: skip
        """Move the first waiting job (or waiting job ``job_id``) to ``training`` for
        ``server``; None when there is none. Atomic across servers sharing the file."""
        now = time.time() if now is None else now
        which = (
            "SELECT id FROM jobs WHERE state = 'waiting' ORDER BY position, id LIMIT 1"
            if job_id is None
            else "SELECT id FROM jobs WHERE state = 'waiting' AND id = ?"
        )
        args = (server, host or socket.gethostname(), os.getpid() if pid is None else pid,
                now, now, *(() if job_id is None else (job_id,)))  # fmt: skip
        r = self._tx(
            lambda con: con.execute(
                "UPDATE jobs SET state = 'training', server = ?, host = ?, pid = ?, "
                f"heartbeat = ?, started_at = ? WHERE id = ({which}) AND state = 'waiting' "
                f"RETURNING {_COLUMNS}",
                args,
            ).fetchone()
        )
        return None if r is None else _row(r)

    def _change(self, sql: str, args: tuple) -> int:
        """One UPDATE in its own transaction; returns how many rows it changed."""
        return self._tx(lambda con: con.execute(sql, args).rowcount)

    def finish(self, job_id: int, state: str, server: str, run_id: str = "",
               message: str = "", now: float | None = None) -> bool:  # fmt: skip
        """End a job ``server`` trains; False when it is not (any more) that server's."""
        if state not in ENDED:
            raise ValueError(f"a job ends as one of {', '.join(ENDED)}, not {state!r}")
        return 1 == self._change(
            "UPDATE jobs SET state = ?, run_id = ?, message = ?, ended_at = ? "
            "WHERE id = ? AND server = ? AND state IN ('training', 'interrupted')",
            (state, run_id, " ".join(message.split()), now or time.time(), job_id, server),
        )

    def cancel(self, job_id: int, owner: str, now: float | None = None) -> bool:
        """Take ``owner``'s waiting job out of the queue (it ends as ``stopped``)."""
        return 1 == self._change(
            "UPDATE jobs SET state = 'stopped', ended_at = ?, message = 'taken out of the queue "
            "by its owner' WHERE id = ? AND owner = ? AND owner != '' AND state = 'waiting'",
            (now or time.time(), job_id, owner),
        )

    def beat(self, server: str, now: float | None = None) -> int:
        """Refresh the heartbeat of every job ``server`` trains; returns how many."""
        return self._change(
            "UPDATE jobs SET heartbeat = ? WHERE server = ? AND state = 'training'",
            (now or time.time(), server),
        )

    def recover(self, now: float | None = None, stale_s: float = STALE_S, alive=pid_alive,
                host: str | None = None) -> list[Job]:  # fmt: skip
        """Mark ``interrupted`` every training job whose server is dead: its process is
        gone (a server on this host) or its heartbeat is older than ``stale_s``."""
        now = time.time() if now is None else now
        here = host or socket.gethostname()

        def sweep(con):
            rows = [_row(r) for r in con.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state = 'training'")]  # fmt: skip
            dead = []
            for j in rows:
                gone = j.host == here and not alive(j.pid)
                if gone or now - j.heartbeat > stale_s:
                    why = "its process is gone" if gone else f"no heartbeat for {stale_s:g} s"
                    con.execute(
                        "UPDATE jobs SET state = 'interrupted', message = ?, ended_at = ? "
                        "WHERE id = ? AND state = 'training'",
                        (f"the server training it stopped ({why}); train it again", now, j.id),
                    )
                    dead.append(j)
            return dead

        return self._tx(sweep)

    def set_nickname(self, owner: str, nickname: str) -> str:
        """Give every job of ``owner`` (and its later ones) ``nickname``; returns it cleaned."""
        name = clean_nickname(nickname)
        self._change("UPDATE jobs SET nickname = ? WHERE owner = ?", (name, owner))
        return name

    # ------------------------------------------------------------------ queries
    def get(self, job_id: int) -> Job | None:
        rows = self._read("WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs(self, since: float = 0.0, owner: str | None = None) -> list[Job]:
        """Jobs submitted at or after ``since`` (of ``owner``), in submission order."""
        if owner is None:
            return self._read("WHERE submitted_at >= ? ORDER BY id", (since,))
        return self._read("WHERE submitted_at >= ? AND owner = ? ORDER BY id", (since, owner))

    def waiting(self) -> list[Job]:
        """The waiting jobs in the order they will start."""
        return self._read("WHERE state = 'waiting' ORDER BY position, id")

    def training(self) -> list[Job]:
        return self._read("WHERE state = 'training' ORDER BY started_at, id")

    def position(self, job_id: int) -> int | None:
        """1 for the next job to start, 2 after it...; None when the job is not waiting."""
        order = [j.id for j in self.waiting()]
        return order.index(job_id) + 1 if job_id in order else None

    def durations(self, limit: int = 50) -> list[tuple[int, float]]:
        """(steps, seconds from claim to end) of the latest finished jobs."""
        rows = self._read("WHERE state = 'finished' ORDER BY ended_at DESC LIMIT ?", (limit,))
        return [(j.steps, j.duration_s) for j in rows if j.duration_s is not None]
