"""What the Train and Teach pages share about the run a tab follows: which run that is,
the live panel, and how a run ended.

Each tab follows its own run (app/follow.py: the job its Train live or Teach it live
queued, a job a link opened with ``?job=<id>``, or, when the browser comes back, the
owner's current or latest job of today). While that run waits
or trains, the live panel (the place in the queue and the estimated start while it
waits; progress, the latest figures, the loss and evaluation panels, a small panel per
verb while it trains: app/charts/train.py, app/charts/verbs.py) is a small Streamlit v2
component (plain DOM, no iframe) that fetches the run's own file of the server's live
feed (app/feed.py: JSON files served by Streamlit's static file serving) every
``FEED_POLL_MS`` while it trains (``IDLE_POLL_MS`` while it waits) and redraws only the
parts that changed (the charts at most every ``CHART_MS``). When the run starts or ends
it sends one trigger and Streamlit reruns the fragment around it. No script runs on the
server for any tab meanwhile, and no tab shows Streamlit's "running" state: a watching
tab costs its browser one small fetch per poll.

Where static serving is off (the app started from another folder, without
.streamlit/config.toml), the panel is drawn by Streamlit instead (its SVG charts through
Markdown's raw HTML: st.html's sanitizer removes SVG) and the fragment waits
for news server-side and redraws, at most every ``MIN_REDRAW_S``. The same happens for a
run whose feed file could not be written (a full disk: :meth:`app.feed.Feed.usable`):
a running panel whose feed has not moved for ``STALE_MS`` asks for a rerun, and the
server then draws that run itself, so its outcome always appears.

Runs belong to a browser, not to one Streamlit session: :func:`owner` is a random token
kept in the ``minituner_owner`` cookie (set by a tiny v2 component, :func:`keep_owner`,
read back by ``st.context.cookies`` when a page is loaded), so a reload or a reopened tab
of the same browser still owns its run and gets Stop, and a run whose tab was closed is
followed again when the browser comes back. The trainer checks the token on every Stop
(app/trainer.py). A cookie rather than the URL: a shared link (``?job=<id>``) opens a run
read-only and must not carry the right to stop it.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from html import escape

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app import data, headline
from app.charts import train as train_charts
from app.charts import verbs as verb_charts
from app.feed import Feed
from app.run_state import WAITING

POLL_S = 1.0  # the fallback's fragment timer: how soon a new fragment run starts...
MIN_REDRAW_S = 2.0  # ...and its live panel redraws at most this often, only on news
TICK_S = 0.1
MAX_WAIT_S = 60.0
HIDE_STATUS = (  # the fallback's fragment waiting for news counts as "running": keep quiet
    "<style>[data-testid='stStatusWidget'],[data-testid='stDecoration']{display:none}</style>"
)
FEED_POLL_MS = 1000  # how often a live panel fetches the feed while a run goes...
IDLE_POLL_MS = 2000  # ...and how often an idle tab looks whether a run started
CHART_MS = 2000  # a chart part of the panel is redrawn at most this often
SLOW_PARTS = ("loss", "verbs")
STALE_MS = 15000  # a running panel whose feed has not moved for this long asks for a rerun
WATCH_KEY = "live_feed"
OWNER_COOKIE = "minituner_owner"
OWNER_KEY = "minituner_owner"  # the session's copy of the token (session_state)
OWNER_MAX_AGE_S = 30 * 24 * 3600
_TOKEN = re.compile(r"[0-9a-f]{32}")

# The live panel in the browser (a Streamlit v2 component: plain DOM, no iframe). It
# fetches its run's feed file and redraws the parts whose markup changed; when the run it
# was drawn for has left the state it was drawn in (a waiting run started, a running one
# ended), it sends one trigger, and Streamlit reruns the fragment around it. A running
# panel whose feed has not moved for stale_ms (a feed the server cannot write) sends one too.
LIVE_JS = """
export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  const { url, version, running, waiting, poll_ms, idle_poll_ms, chart_ms, slow, stale_ms } = data;
  if (parentElement.liveStop) parentElement.liveStop();  // new data: this call takes over
  let panel = parentElement.querySelector(".live-panel");
  const active = running || waiting;  // a panel: the run trains, or waits for its turn
  if (active && !panel) {
    panel = document.createElement("div");
    panel.className = "live-panel";
    panel.innerHTML = '<div class="live-progress-text">starting…</div>';
    parentElement.appendChild(panel);
  } else if (!active && panel) {
    panel.remove();
  }
  const shown = {};  // part name -> [element, markup]
  let chartAt = -Infinity, done = false, timer = null, seen = null, movedAt = performance.now();
  function show(parts) {  // redraw the parts whose markup changed; charts at most every chart_ms
    const now = performance.now(), charts = now - chartAt >= chart_ms;
    let drewChart = false;
    for (const [name, html] of Object.entries(parts)) {
      let part = shown[name];
      if (part && part[1] === html) continue;
      if (part && slow.includes(name) && !charts) continue;  // the next poll draws it
      if (!part) {
        if (!Object.keys(shown).length) panel.textContent = "";
        const el = document.createElement("div");
        el.className = "live-part live-part-" + name;
        panel.appendChild(el);
        part = shown[name] = [el, null];
      }
      part[0].innerHTML = html;
      part[1] = html;
      drewChart = drewChart || slow.includes(name);
    }
    if (drewChart) chartAt = now;
  }
  async function poll() {
    try {
      const r = await fetch(url, { cache: "no-cache" });
      if (r.ok && !done) {
        const d = await r.json();
        if (d.version !== seen) { seen = d.version; movedAt = performance.now(); }
        const same = running ? d.running : waiting ? d.status === "waiting" : false;
        if (same && d.parts) show(d.parts);
        if (d.version > version && !same) {  // it started or ended: the server redraws
          done = true;
          setTriggerValue("news", d.version);
        }
      }
    } catch (e) {}
    if (running && !done && performance.now() - movedAt > stale_ms) {
      done = true;  // no news for long: the server looks (and draws the run itself if need be)
      setTriggerValue("news", -1);
    }
    if (!done) timer = setTimeout(poll, running ? poll_ms : idle_poll_ms);
  }
  const stop = () => { done = true; clearTimeout(timer); };
  parentElement.liveStop = stop;
  poll();
  return stop;
}
"""
LIVE_CSS = ".live-panel svg{max-width:100%;height:auto} .live-part{contain:content}"
_live_component = st.components.v2.component(
    "minituner_live", js=LIVE_JS, css=LIVE_CSS, isolate_styles=False
)
# Keeps this browser's owner token in a cookie (nothing shown); the server reads it back
# from st.context.cookies when a page is loaded (a reload, another tab).
OWNER_JS = """
export default function (component) {
  const { name, value, max_age } = component.data;
  if (!document.cookie.split("; ").includes(name + "=" + value)) {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${name}=${value}; path=/; max-age=${max_age}; SameSite=Strict${secure}`;
  }
}
"""
_owner_component = st.components.v2.component("minituner_owner", js=OWNER_JS)


def _cookies() -> dict:
    """The cookies the browser sent when this session's page was loaded."""
    return dict(st.context.cookies)


def owner() -> str:
    """This browser's owner token: the one in its cookie (a reload, a reopened tab), or a
    new random one for this session (which :func:`keep_owner` puts in the cookie)."""
    if OWNER_KEY not in st.session_state:
        token = _cookies().get(OWNER_COOKIE, "")
        st.session_state[OWNER_KEY] = token if _TOKEN.fullmatch(token) else secrets.token_hex(16)
    return st.session_state[OWNER_KEY]


def keep_owner() -> None:
    """Put this session's owner token into the browser's cookie (an invisible component)."""
    _owner_component(
        key="minituner_owner_cookie",  # not OWNER_KEY: a widget key owns its session_state entry
        data={"name": OWNER_COOKIE, "value": owner(), "max_age": OWNER_MAX_AGE_S},
    )


def _news() -> None:
    """The trigger's callback: Streamlit reruns the fragment (or the page) that holds the
    live panel; the rerun itself reads the news from the trainer."""


def _mount(s) -> None:
    f = feed()
    _live_component(
        key=WATCH_KEY,
        data={
            "url": f.url(s.job_id, st.get_option("server.baseUrlPath") or ""),
            "version": s.version,
            "running": s.running,
            "waiting": s.status == WAITING,
            "poll_ms": FEED_POLL_MS,
            "idle_poll_ms": IDLE_POLL_MS,
            "chart_ms": CHART_MS,
            "slow": list(SLOW_PARTS),
            "stale_ms": STALE_MS,
            "drawn": time.time(),  # a redraw at the same version still restarts the poll
        },
        on_news_change=_news,
    )


def waiting_html(s) -> str:
    """A waiting run's panel: its place in the queue and when it should start."""
    eta = "" if s.eta_s is None else f" · starts in about {_duration(s.eta_s)}"
    where = "next in line" if s.position == 1 else f"{s.position} in line"
    return (
        f'<div class="live-progress live-waiting" style="margin:0 0 0.5rem 0">'
        f'<div class="live-progress-text" style="font-size:1rem">Waiting: '
        f"<b>{where}</b>{eta}. Other learners' runs train first; "
        f"this tab shows the run when it starts (you may close it: the run is kept).</div></div>"
    )


def _duration(seconds: float) -> str:
    """A rough wait: to 5 s under a minute, else to the minute."""
    if seconds < 60:
        return f"{max(5, 5 * round(seconds / 5)):.0f} s"
    return f"{round(seconds / 60):.0f} min"


def hide_status() -> None:
    """In the fallback, hide Streamlit's running indicator, which a fragment waiting for
    news would keep on; with the live feed no script waits, so the indicator stays."""
    if feed() is None:
        st.html(HIDE_STATUS)


def fragment_timer() -> float | None:
    """``run_every`` for a fragment that holds the live panel: none with the live feed
    (the panel in the browser asks for a rerun), ``POLL_S`` in the fallback (and while
    the feed's last write failed)."""
    f = feed()
    return None if f is not None and f.error is None else POLL_S


def wait_for_news(version: int) -> None:
    """The fallback without the live feed: hold this fragment run until the live state's
    version moves past ``version``, then rerun the fragment.

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
    if trainer.busy:  # a fragment without a timer (the feed failed for this run) goes on
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


def panel_html(s) -> str:
    """The live panel of a snapshot as one piece of markup (:func:`panel_parts`, joined)."""
    return "".join(panel_parts(s).values())


def panel_parts(s) -> dict[str, str]:
    """The live panel of a state, part by part, in order: ``progress`` (a bar with step,
    loss, throughput, time, phase), ``figures`` (the latest evaluation's), ``loss`` (the
    loss/evaluation chart) and ``verbs`` (the per-verb chart, a lesson's verb bold).
    Plain HTML and SVG, no script. The browser redraws only the parts that changed, and
    the charts (``SLOW_PARTS``) at most every ``CHART_MS``. A waiting run: ``progress``
    only (its place in the queue, :func:`waiting_html`)."""
    if s.status == WAITING:
        return {"progress": waiting_html(s)}
    frac = min(1.0, s.step / max(1, s.steps))
    tps = f" · {s.tokens_per_s:,.0f} tokens/s" if s.tokens_per_s else ""
    loss = f" · loss {s.losses[-1]:.4f}" if s.losses and math.isfinite(s.losses[-1]) else ""
    phase = f" · {escape(s.phase)}" if s.phase else ""
    device = f" · on {escape(s.device)}" if s.device else ""
    text = f"step {s.step}/{s.steps}{loss}{tps} · {s.elapsed_s:.1f} s{phase}{device}"
    bar = (
        f'<div class="live-progress" role="progressbar" aria-valuenow="{100 * frac:.0f}" '
        f'aria-valuemin="0" aria-valuemax="100" style="margin:0 0 0.5rem 0">'
        f'<div class="live-progress-text" style="font-size:1rem;margin-bottom:0.25rem">{text}</div>'
        f'<div style="background:#e6e8ee;border-radius:4px;height:8px">'
        f'<div style="width:{100 * frac:.1f}%;background:#ff4b4b;border-radius:4px;height:8px">'
        f"</div></div></div>"
    )
    lemma = s.config.get("teach", "").split(":")[0] if s.config else ""
    return {
        "progress": bar,
        "figures": headline.live_line(s.evals, lemma),
        "loss": train_charts.live_training(s.loss_steps, s.losses, s.evals, s.steps),
        "verbs": verb_charts.live_verbs(verb_charts.per_verb_points(s.evals), s.steps, lemma),
    }


@st.cache_resource
def feed() -> Feed | None:
    """The server's live feed (one thread, a file per job), or None where Streamlit's static
    file serving is off or the folder cannot be written: the panel is then drawn by
    Streamlit itself."""
    if not st.get_option("server.enableStaticServing"):
        return None
    try:
        return Feed(data.get_trainer(), panel_parts)
    except OSError:
        return None


def live_feed(s) -> Feed | None:
    """The live feed, if it can carry snapshot ``s``'s run: None without static serving,
    or when a write of the feed failed during that run (or the last write failed)."""
    f = feed()
    return f if f is not None and f.usable(s) else None


def draw_live(s) -> None:
    """Draw the live panel of state ``s`` (waiting or training).

    With the live feed: the panel that updates itself in the browser from the run's own
    feed file and reruns the fragment around it when the run starts or ends; nothing runs
    on the server meanwhile. Otherwise (no feed, or a feed that failed for this run)
    Streamlit draws ``s`` here, and while ``s`` waits or trains the fragment waits for
    news server-side (:func:`wait_for_news`)."""
    active = s.running or s.status == WAITING
    if active and live_feed(s) is not None:
        _mount(s)
        return
    if active and feed() is not None:  # the feed failed for this run: keep quiet too
        st.html(HIDE_STATUS)
    parts = panel_parts(s)
    st.html(parts["progress"] + parts.get("figures", ""))
    if "loss" in parts:  # st.html's sanitizer drops SVG: Markdown's raw HTML instead
        st.markdown(parts["loss"] + parts["verbs"], unsafe_allow_html=True)
    if active:
        wait_for_news(s.version)


def show_outcome(s, cfg, finished_mark: str) -> str | None:
    """How run ``s`` ended, when it is a run of ``cfg`` (the configuration the tab shows);
    returns the status shown, or None."""
    if s.status in ("idle", WAITING) or s.running or s.config != cfg.to_dict():
        return None
    where = f" ({s.elapsed_s:.1f} s on {s.device})" if s.device else ""
    if s.status == "completed" and s.run_id:
        st.success(f"{finished_mark}: run {s.run_id} saved to the store{where}.")
    elif s.status == "stopped":
        st.warning(f"Training stopped: {s.message}. Stopped runs are not stored.")
    elif s.status == "diverged":
        st.warning(f"Training diverged: {s.message}. Diverged runs are not stored.")
    elif s.status == "error":
        st.error(f"Training failed: {s.message}")
    elif s.status == "interrupted":
        st.warning(f"Training interrupted: {s.message or 'the server stopped'}. Train it again.")
    return s.status
