"""Which run a tab follows, and what a tab may do with it (submit, Stop).

Every session's Train live and Teach it live queue a run that belongs to the browser
(its owner token, :func:`app.live.owner`); the tab then follows that job (``JOB_KEY`` in
the session). A link ``?job=<id>`` (the Class page has one per run) opens any run of the
class read-only: only its owner gets Stop, checked by the trainer too. A tab that was
closed loses nothing: when the browser comes back, a new session follows the owner's
training job, else its first waiting one, else its latest of today
(``Trainer.snapshot_for``).
"""

from __future__ import annotations

import streamlit as st

from app import data
from app.live import owner
from app.run_state import LiveState
from minituner.finetune.queue import QueueFull

JOB_KEY = "live_job"  # the job this tab follows (0: none)
NICK_KEY = "class_nickname"  # the Class page's nickname: it names the session's new runs


def follow(job_id: int | None = None) -> LiveState:
    """The run this tab follows, as a state: ``job_id`` when given (a link's ``?job=``, a
    run this tab just queued), else the one it followed before in this session, else
    this browser's current run (training, else its first waiting) or its latest of
    today, so a learner who closed the tab finds the run again. ``LiveState()`` when
    there is none (or the job is unknown)."""
    trainer = data.get_trainer()
    if job_id is not None:
        st.session_state[JOB_KEY] = int(job_id)
    jid = st.session_state.get(JOB_KEY)
    if jid is None:
        s = trainer.snapshot_for(owner())
        st.session_state[JOB_KEY] = s.job_id or 0
        return s
    return trainer.snapshot(jid) if jid else LiveState(version=trainer.version)


def job_from_url(value) -> int | None:
    """A ``?job=`` value as a job id, or None (not a positive whole number)."""
    value = value[0] if isinstance(value, list) and value else value
    try:
        jid = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return jid if jid > 0 else None


def mine(s) -> bool:
    """Whether this browser submitted run ``s`` (only then it gets Stop)."""
    return bool(s.owner) and s.owner == owner()


def stop(job_id: int) -> None:
    """Stop's callback: the trainer stops (or takes out of the queue) only its owner's job."""
    data.get_trainer().stop(int(job_id), owner())


def submit(cfg, nickname_key: str = NICK_KEY) -> tuple[int | None, str]:
    """Queue ``cfg`` for this browser; returns ``(job id, "")``, or ``(None, why)`` with
    the one-line reason it was refused (the pre-flight, or 2 runs already waiting). The
    tab follows the new job."""
    try:
        jid = data.get_trainer().submit(
            cfg, owner=owner(), cache=data.cache_dir(), eval_limit=data.eval_limit(),
            nickname=st.session_state.get(nickname_key) or None,
        )  # fmt: skip
    except QueueFull as e:
        return None, f"{e}. Wait until one starts, or stop one."
    except ValueError as e:
        return None, f"Training cannot start: {e}"
    st.session_state[JOB_KEY] = jid
    return jid, ""
