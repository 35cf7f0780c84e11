"""Train: choose a configuration, see what it costs, then load it from the store or
train it live.

The choices live in the URL (?method=lora&r=8&alpha=16&targets=q,v&lr=0.005&steps=40&seed=0)
so a link opens the same configuration. Train live queues a run of this browser on the
server's run queue (app/trainer.py: up to K train at once, each in a child process,
minituner/finetune/worker.py); the tab follows its own run in one fragment (the run
area): its place in the queue and estimated start while it waits, its progress while it
trains, its outcome. ``?job=<id>`` (the Class page's links) opens any run of the class,
read-only (only its owner gets Stop). While the run waits or trains, its live panel
fetches the run's own feed file by itself (app/live.py, app/feed.py, app/follow.py), so
no tab runs anything on the server until the run starts or ends. A stored
configuration loads at once, without queueing.

Projected at 1280 × 720, the run is what the room should see: the form sits in an
expander (its state kept under ``train_form``) that closes when this tab starts a run
(one whole-page rerun, the only one a run causes) and starts closed when a link opens a
stored configuration; the live panel or the stored run's charts then sit under the title
without scrolling. The words "Train live", "Stop", "Training finished" and the run's
method, r and seed in the header of the run this tab follows are a contract (DESIGN.md).
"""

from __future__ import annotations

import streamlit as st

from app import data, follow, headline, helpers, live
from app.charts import train as charts
from app.format import format_bytes, md_rows, md_text
from app.run_state import WAITING
from minituner.finetune.config import DEFAULT_LR, FinetuneConfig
from minituner.memory import predict as memmath
from minituner.memory.shapes import ModelShape
from minituner.methods import METHODS
from minituner.store.runs import run_id

KEYS = {k: f"train_{k}" for k in ("method", "r", "alpha", "lr", "steps", "seed")}
TARGET_KEYS = {t: f"train_target_{t}" for t in helpers.TARGETS}
FINISHED_MARK = "Training finished"
FORM_KEY = "train_form"  # the configuration expander's open state
LAID_OUT_KEY = "train_laid_out_running"  # the page was drawn for a run this tab follows


def _choices_of(config: dict) -> dict:
    """The form's choices for a run's configuration (none for one the form cannot show:
    a lesson of the Teach page, a configuration this version cannot read)."""
    try:
        f = FinetuneConfig.from_dict(config)
    except (TypeError, ValueError, KeyError):
        return {}
    if f.teach:
        return {}
    return {"method": f.method, "r": f.r, "alpha": float(f.alpha), "lr": float(f.lr),
            "targets": list(f.targets), "steps": f.steps, "seed": f.seed}  # fmt: skip


st.title("Train")
base = data.base_or_stop()

# ---------------------------------------------------------------- choices (URL <-> widgets)
url_choices, url_problems = helpers.parse_train_params(st.query_params.to_dict())
for p in url_problems:
    st.warning(p)
remembered = st.session_state.get("train_choices", {})
start_from = {**helpers.default_choices(), **remembered}
if "train_from_url" not in st.session_state:  # a shared link wins on the session's first visit
    start_from.update(url_choices)
    if "lr" not in url_choices and "method" in url_choices:
        start_from["lr"] = DEFAULT_LR[url_choices["method"]]
    st.session_state["train_from_url"] = True
# ?job=<id> (the Class page's links): follow that run, read-only unless it is this browser's
url_job = follow.job_from_url(st.query_params.get("job"))
new_link = url_job is not None and url_job != st.session_state.get(follow.JOB_KEY)
snap = follow.follow(url_job if new_link else None)  # this tab's run: its own, a linked one
linked = {}
if new_link and not snap.job_id:
    st.warning(f"There is no run #{url_job} on this server today.")
elif new_link:  # the form shows the linked run's configuration (and its stored result)
    linked = _choices_of(snap.config)
    start_from.update(linked)
for name, key in KEYS.items():
    if key not in st.session_state or name in linked:
        st.session_state[key] = start_from[name]
for t, key in TARGET_KEYS.items():
    if key not in st.session_state or "targets" in linked:
        st.session_state[key] = t in start_from["targets"]


def _method_changed() -> None:
    st.session_state[KEYS["lr"]] = DEFAULT_LR[st.session_state[KEYS["method"]]]


following = snap.running or snap.status == WAITING
st.session_state[LAID_OUT_KEY] = following
if st.session_state.pop("train_collapse", False):
    st.session_state[FORM_KEY] = False  # this tab just started a run: the run comes first
elif new_link and snap.job_id:  # a linked run: it comes first
    st.session_state[FORM_KEY] = False
elif FORM_KEY not in st.session_state:  # first visit: a followed or stored run comes first
    try:
        first = helpers.config_from_choices(
            {**{n: st.session_state[k] for n, k in KEYS.items()},
             "targets": [t for t, k in TARGET_KEYS.items() if st.session_state[k]]},
            base.model.config,
        )  # fmt: skip
        stored_first = data.run_by_id(
            run_id(first, base.model_id, data.base_metrics().corpus_version)
        )
    except ValueError:
        stored_first = None
    st.session_state[FORM_KEY] = not (following or stored_first is not None)


def alpha_note(method: str, r: int, alpha: float) -> str:
    """What α/r is now, and that it moves with r (alpha is not rescaled)."""
    if method == "full":
        return "α/r does not apply: full fine-tuning trains every weight (no rank, no alpha)."
    return (
        f"Scaling α/r = {alpha:g} / {r} = **{alpha / r:.4g}**. Alpha stays fixed when r "
        f"changes, so α/r moves with r (r = {2 * r} would give {alpha / (2 * r):.4g}); "
        "change alpha with r to keep the scale."
    )


form = st.expander(
    "Configuration: method, rank r, alpha, targets, learning rate, steps, seed",
    expanded=True,
    key=FORM_KEY,
    on_change="rerun",
    icon=":material/tune:",
)
with form:  # compact: the form and the Train live button fit in 1280 x 720
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    c1.radio(
        "method",
        METHODS,
        key=KEYS["method"],
        format_func=lambda m: helpers.METHOD_NAMES[m],
        horizontal=True,
        on_change=_method_changed,
        help="The learning rate resets to the method's default when you switch.",
    )
    is_full = st.session_state[KEYS["method"]] == "full"
    c2.number_input(
        "learning rate", min_value=1e-6, max_value=1.0, step=1e-4, format="%.4g", key=KEYS["lr"]
    )
    c3.number_input("steps", min_value=1, max_value=helpers.MAX_STEPS, step=10, key=KEYS["steps"])
    c4.number_input("seed", min_value=0, max_value=2**31 - 1, step=1, key=KEYS["seed"])
    r_col, a_col, note = st.columns([1, 1, 3], vertical_alignment="bottom")
    r_col.number_input(
        "rank r",
        min_value=1,
        max_value=helpers.rank_limit(base.model.config),
        step=1,
        key=KEYS["r"],
        disabled=is_full,
    )
    a_col.number_input(
        "alpha", min_value=0.5, max_value=1024.0, step=1.0, key=KEYS["alpha"], disabled=is_full
    )
    note.caption(
        alpha_note(
            st.session_state[KEYS["method"]],
            st.session_state[KEYS["r"]],
            st.session_state[KEYS["alpha"]],
        ),
        help="LoRA adds (α/r)·B·A to a weight: with alpha fixed, a larger r makes each "
        "direction's contribution smaller (rsLoRA's α/√r is another choice).",
    )
    tcols = st.columns([2] + [1] * len(helpers.TARGETS), vertical_alignment="center")
    tcols[0].markdown(
        "**target modules**",
        help="LoRA / QLoRA only: attention q, k, v, o and the MLP's fc_in, fc_out",
    )
    for col, (t, key) in zip(tcols[1:], TARGET_KEYS.items(), strict=True):
        col.checkbox(t, key=key, disabled=is_full)

choices = {name: st.session_state[key] for name, key in KEYS.items()}
choices["targets"] = [t for t, key in TARGET_KEYS.items() if st.session_state[key]]
st.session_state["train_choices"] = choices
st.query_params.from_dict(helpers.choices_to_params(choices))
if snap.job_id and not follow.mine(snap):  # a link to this tab opens the same run
    st.query_params["job"] = str(snap.job_id)

try:
    cfg = helpers.config_from_choices(choices)
except ValueError as e:
    st.warning(f"This configuration cannot be trained: {md_text(e)}")
    st.stop()

# ---------------------------------------------------------------- what it costs
shape = ModelShape.from_gpt_config(base.model.config)
kw = {} if cfg.method == "full" else {"r": cfg.r, "targets": cfg.targets}
trainable = memmath.trainable_params(shape, cfg.method, **kw)
seq = max(len(e.prompt) + len(e.answer) for e in base.corpus.finetune_train) + 4
pred = memmath.predict_memory(
    shape, cfg.method, batch=cfg.batch_size, seq=seq, precision="fp32",
    double_quant=cfg.nf4_double_quant, block_size=cfg.nf4_block_size, **kw,
)  # fmt: skip
total = shape.total_params()
with form:  # three metrics: a 7-character value fits a third of the column at 1024 px
    m1, m2, m3 = st.columns(3)
    m1.metric("trainable parameters", f"{trainable:,}", help=headline.share_text(trainable, total))
    m2.metric(
        "predicted: model + state",
        format_bytes(pred["states_total"]),
        help="predicted memory of the weights, trainable parameters, gradients and optimizer state",
    )
    m3.metric(
        "predicted: activations",
        format_bytes(pred["activations"]),
        help="predicted memory of the activations (an estimate), for the batch below",
    )
    st.caption(
        f"Trainable: {headline.share_text(trainable, total)}. Activations for a batch of "
        f"{cfg.batch_size} × at most {seq} characters. Live training runs on "
        f"{md_text(data.device_label(), 100)}."
    )


def _start(cfg) -> None:
    """The train button's callback: it runs before the rerun it causes, so that rerun
    already draws this tab's run, waiting or training (or says why it cannot be queued:
    the trainer's pre-flight, before any child, or 2 runs of this browser waiting)."""
    jid, why = follow.submit(cfg)
    if jid is None:
        st.session_state["train_cannot_start"] = why
        return
    st.session_state[FORM_KEY] = False  # the run comes first (see _run_area)


def run_heading(config: dict, label: str = "", short: bool = False, steps: bool = True) -> str:
    """The configuration a run header names: method and r (and alpha), steps, seed;
    ``short``: method, r and seed only; ``steps=False``: no steps (the live progress line
    gives them, and the header stays one line at 1280 × 720)."""
    try:
        f = FinetuneConfig.from_dict(config)
    except (TypeError, ValueError, KeyError):
        return label
    if f.method == "full":
        core = "full fine-tuning"
    else:
        core = f"{helpers.METHOD_NAMES[f.method]} r={f.r}" + ("" if short else f", α={f.alpha:g}")
    taught = f" · teach {f.teach}" if f.teach else ""
    with_steps = steps and not short
    return f"{core}{taught}{f' · {f.steps} steps' if with_steps else ''} · seed {f.seed}"


def _live_header(s) -> None:
    """The followed run's configuration (method, r, seed), and Stop in the same row for
    the browser that submitted it; another learner's run is marked read-only."""
    word = "Waiting to train" if s.status == WAITING else "Training live"
    title = f"{word}: {md_text(run_heading(s.config, s.label, steps=False), 200)}"
    if not follow.mine(s):
        who = md_text(s.nickname, 40) if s.nickname else "another learner"
        st.subheader(f"{title} ({who}'s run #{s.job_id}, read-only)")
        return
    a, b = st.columns([5, 1], vertical_alignment="center")
    a.subheader(f"{title} (run #{s.job_id})")
    b.button(
        "Stop", icon=":material/stop:", key="train_stop", on_click=follow.stop, args=(s.job_id,)
    )


def _show_stored(info) -> None:
    """A stored run: its curves first (they fit under the title at 1280 × 720), then its
    final figures with their change against the base model, then the table."""
    m = info.metrics
    bm = data.base_metrics()
    svg = charts.live_training(m.curves.step, m.curves.loss, m.evals, info.finetune_config().steps)
    st.markdown(svg, unsafe_allow_html=True)  # st.html's sanitizer drops SVG
    headline.show(headline.accuracy_figures(info.final, bm))
    # a static table: a data grid costs every tab a canvas redraw
    rows = helpers.final_figures_rows([info], bm)
    table = headline.by_figure(rows, ["base model", f"run {info.run_id}"])
    st.table(md_rows(table), hide_index=True)  # Markdown cells
    st.caption(
        "Curves: loss per step and the periodic evaluation on a sample of each split "
        "(step 0 is the base model). Metrics and table: the final evaluation on the full "
        "held-out splits; each change is against the base model. "
        f"Trainable: {m.trainable_params:,} parameters, "
        f"{headline.share_text(m.trainable_params, bm.num_params)}."
    )


@st.fragment(run_every=live.fragment_timer() if following else None)
def _run_area(cfg, rid: str) -> None:
    """Everything this tab's run changes, in one fragment: the train button and the
    stored run while it has none going, its live view while it waits or trains, the
    outcome when it ends. Other learners' runs never show here unless the tab opened one.

    The run starting or ending reruns this fragment (the live panel asks for it); when
    this tab has just queued a run, the whole page reruns once more, so that the form
    folds away and the live panel sits under the title. Between those, nothing runs on
    the server for this tab (the fallback without static serving waits for news
    server-side and redraws)."""
    s = follow.follow()
    going = s.running or s.status == WAITING
    if going and not st.session_state.get(LAID_OUT_KEY):
        st.session_state["train_collapse"] = True
        st.rerun()  # the whole page: the form closes, the run comes first
    st.session_state[LAID_OUT_KEY] = going
    cannot = st.session_state.pop("train_cannot_start", None)
    if going:
        _live_header(s)
        if cannot:
            st.error(md_text(cannot), icon=":material/error:")
        if s.config != cfg.to_dict():  # the form changed: this configuration may queue too
            _train_button("Train live", cfg, primary=False)
        live.draw_live(s)
        return
    live.show_outcome(s, cfg, FINISHED_MARK)
    stored = data.run_by_id(rid)
    mine = follow.mine(s) and s.config == cfg.to_dict()
    if cannot:
        st.error(md_text(cannot), icon=":material/error:")
    if stored is not None:
        where = "shipped" if stored.shipped else "your cache"
        with st.container(horizontal=True, vertical_alignment="center"):
            st.info(
                f"This configuration is in the store ({where}): run **{stored.run_id}**, "
                f"{md_text(run_heading(stored.finetune_config().to_dict(), short=True), 200)}."
            )
            _train_button("Train it live anyway", cfg, primary=False)
        _show_stored(stored)
    else:
        if mine and s.status not in ("idle", "completed") and s.started_at:  # it trained here
            live.draw_live(s)  # how far the stopped, diverged or failed run got
        _train_button("Train live", cfg, primary=True)
        if cfg.method == "qlora" and data.device_label() == "CPU":
            st.caption(
                "QLoRA on a CPU is slow: every forward pass dequantizes the 4-bit base; "
                "try few steps, or load a shipped run."
            )


def _train_button(label: str, cfg, primary: bool) -> None:
    st.button(
        label,
        icon=":material/play_arrow:",
        key="train_start",
        type="primary" if primary else "secondary",
        on_click=_start,
        args=(cfg,),
    )


# ---------------------------------------------------------------- the run itself
live.hide_status()
live.keep_owner()  # a reload or another tab of this browser owns the same runs
_run_area(cfg, run_id(cfg, base.model_id, data.base_metrics().corpus_version))
