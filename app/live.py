"""What the Train and Teach pages share about the server's one live run: waiting for news
without sending anything, and how a run ended.

A live panel is a fragment that draws the live state, then calls :func:`wait_for_news`:
the fragment run is held server-side until the live state moves on (a new event), so a
watching tab costs nothing between events and redraws at most every ``MIN_REDRAW_S``.
"""

from __future__ import annotations

import time

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app import data

POLL_S = 1.0  # a waiting fragment's timer: how soon a new fragment run starts...
MIN_REDRAW_S = 2.0  # ...and a live panel redraws at most this often, only on news
TICK_S = 0.1
MAX_WAIT_S = 60.0
HIDE_STATUS = (  # a fragment waiting for news counts as "running": keep the corner quiet
    "<style>[data-testid='stStatusWidget'],[data-testid='stDecoration']{display:none}</style>"
)


def wait_for_news(version: int) -> None:
    """Hold this fragment run until the live state's version moves past ``version``, then
    rerun the fragment.

    Only in a fragment run (the first draw comes with the whole page): the elements drawn
    stay on screen while this waits. Nothing is sent while it waits, unless Streamlit has
    a click, a page change or a closed tab to act on.
    """
    ctx = get_script_run_ctx()
    if ctx is None or not ctx.fragment_ids_this_run:
        return
    trainer = data.get_trainer()
    t_draw = time.monotonic()
    tick = st.empty()
    while time.monotonic() - t_draw < MAX_WAIT_S:
        time.sleep(TICK_S)
        if request_pending(ctx):
            tick.empty()  # an st call: Streamlit stops here for a page-wide request...
            return  # ...and a click inside this fragment waits for this run to end
        if trainer.version != version and time.monotonic() - t_draw >= MIN_REDRAW_S:
            st.rerun(scope="fragment")


def request_pending(ctx) -> bool:
    """Whether Streamlit wants this run to stop or rerun now: a click inside the fragment,
    a change of a choice outside it, a page change, a closed tab.

    Streamlit has no public accessor for this, so it peeks at the runner's requests; the
    poll timer's own reruns of the fragment (``is_auto_rerun``) wait for this run and do
    not count, unless a click was folded into one. Should those internals change, every
    tick counts (a tiny message each ``TICK_S``)."""
    try:
        req = ctx.script_requests
        state = req._state.name
        if state != "RERUN":
            return state != "CONTINUE"
        queued = req._rerun_data
        if not queued.fragment_id_queue or queued.is_fragment_scoped_rerun:
            return True  # the whole page, or an explicit st.rerun
        return not queued.is_auto_rerun or clicked(queued.widget_states)
    except AttributeError:
        return True


def clicked(widget_states) -> bool:
    """Whether pending widget states carry a pressed button (a trigger value)."""
    if widget_states is None:
        return False
    return any(
        w.WhichOneof("value") == "trigger_value" and w.trigger_value for w in widget_states.widgets
    )


def progress(s) -> None:
    """The live state's progress bar: step, loss, throughput, time and phase."""
    frac = min(1.0, s.step / max(1, s.steps))
    tps = f" · {s.tokens_per_s:,.0f} tokens/s" if s.tokens_per_s else ""
    loss = f" · loss {s.losses[-1]:.4f}" if s.losses else ""
    phase = f" · {s.phase}" if s.phase else ""
    st.progress(frac, text=f"step {s.step}/{s.steps}{loss}{tps} · {s.elapsed_s:.1f} s{phase}")


def show_outcome(s, cfg, finished_mark: str) -> str | None:
    """How this session's last run of ``cfg`` ended (nothing for another session's run or
    another configuration); returns the status shown, or None."""
    if s.owner != data.session_id() or s.status == "idle" or s.config != cfg.to_dict():
        return None
    if s.status == "completed" and s.run_id:
        st.success(
            f"{finished_mark}: run {s.run_id} saved to the store "
            f"({s.elapsed_s:.1f} s on {s.device})."
        )
    elif s.status == "stopped":
        st.warning(f"Training stopped: {s.message}. Stopped runs are not stored.")
    elif s.status == "diverged":
        st.warning(f"Training diverged: {s.message}. Diverged runs are not stored.")
    elif s.status == "error":
        st.error(f"Training failed: {s.message}")
    return s.status
