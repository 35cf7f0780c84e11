"""Train: choose a configuration, see what it costs, then load it from the store or
train it live.

The choices live in the URL (?method=lora&r=8&alpha=16&targets=q,v&lr=0.005&steps=40&seed=0)
so a link opens the same configuration. Live training runs in a child process of the
server (app/trainer.py, minituner/finetune/worker.py); every tab shows the one shared live state
in one fragment (the run area). While a run goes, its live panel fetches the server's
live feed by itself (app/live.py, app/feed.py), so no tab runs anything on the server
until the run ends; the whole page never reruns when a run starts or ends.
"""

from __future__ import annotations

import streamlit as st

from app import data, helpers, live
from app.charts import train as charts
from app.format import format_bytes, md_rows, md_text
from minituner.finetune.config import DEFAULT_LR
from minituner.memory import predict as memmath
from minituner.memory.shapes import ModelShape
from minituner.methods import METHODS
from minituner.store.runs import run_id

KEYS = {k: f"train_{k}" for k in ("method", "r", "alpha", "lr", "steps", "seed")}
TARGET_KEYS = {t: f"train_target_{t}" for t in helpers.TARGETS}
FINISHED_MARK = "Training finished"

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
for name, key in KEYS.items():
    if key not in st.session_state:
        st.session_state[key] = start_from[name]
for t, key in TARGET_KEYS.items():
    if key not in st.session_state:
        st.session_state[key] = t in start_from["targets"]


def _method_changed() -> None:
    st.session_state[KEYS["lr"]] = DEFAULT_LR[st.session_state[KEYS["method"]]]


with st.container(border=True):
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
        "rank r",
        min_value=1,
        max_value=helpers.rank_limit(base.model.config),
        step=1,
        key=KEYS["r"],
        disabled=is_full,
    )
    c3.number_input(
        "alpha", min_value=0.5, max_value=1024.0, step=1.0, key=KEYS["alpha"], disabled=is_full
    )
    c4.number_input(
        "learning rate", min_value=1e-6, max_value=1.0, step=1e-4, format="%.4g", key=KEYS["lr"]
    )
    st.markdown(
        "**target modules** (LoRA / QLoRA): attention q, k, v, o and the MLP's fc_in, fc_out"
    )
    tcols = st.columns(len(helpers.TARGETS) + 2)
    for col, (t, key) in zip(tcols, TARGET_KEYS.items(), strict=False):
        col.checkbox(t, key=key, disabled=is_full)
    c5, c6, _ = st.columns([1, 1, 2])
    c5.number_input("steps", min_value=1, max_value=helpers.MAX_STEPS, step=10, key=KEYS["steps"])
    c6.number_input("seed", min_value=0, max_value=2**31 - 1, step=1, key=KEYS["seed"])

choices = {name: st.session_state[key] for name, key in KEYS.items()}
choices["targets"] = [t for t, key in TARGET_KEYS.items() if st.session_state[key]]
st.session_state["train_choices"] = choices
st.query_params.from_dict(helpers.choices_to_params(choices))

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
m1, m2, m3, m4 = st.columns(4)
m1.metric(
    "trainable parameters",
    f"{trainable:,}",
    delta=f"{100 * trainable / total:.2f}% of {total:,}",
    delta_color="off",
)
m2.metric("predicted memory: model and training state", format_bytes(pred["states_total"]))
m3.metric(
    "predicted memory: activations (estimate)",
    format_bytes(pred["activations"]),
    delta=f"batch {cfg.batch_size} × ≤{seq} characters",
    delta_color="off",
)
m4.metric("device", data.device_label())


def _stop() -> None:
    data.get_trainer().stop(live.owner())  # the trainer stops only its owner's run


def _start(cfg) -> None:
    """The train button's callback: it runs before the rerun it causes, so that rerun
    already draws the live view (or says the server is busy, or why the run cannot
    start: the trainer's pre-flight, before any child)."""
    try:
        started = data.get_trainer().start(
            cfg, owner=live.owner(), cache=data.cache_dir(), eval_limit=data.eval_limit()
        )
    except ValueError as e:
        st.session_state["train_cannot_start"] = str(e)
        return
    st.session_state["train_refused"] = not started


def _live_header(s) -> None:
    """The run's name and Stop for the tab that started it, a note for every other tab."""
    if s.owner == live.owner():
        st.subheader(f"Training live: {s.label}")
        st.button("Stop", icon=":material/stop:", key="train_stop", on_click=_stop)
    else:
        st.info(
            f"Training is busy: another session is training **{md_text(s.label)}**. "
            "One run at a time per server; you can watch it here and start yours when it ends."
        )


def _show_stored(info, heading: str) -> None:
    st.subheader(heading)
    m = info.metrics
    svg = charts.live_training(m.curves.step, m.curves.loss, m.evals, info.finetune_config().steps)
    st.markdown(svg, unsafe_allow_html=True)
    # a static table: a data grid costs every tab a canvas redraw
    st.table(md_rows(helpers.final_figures_rows([info], data.base_metrics())))  # Markdown cells
    st.caption(
        "Curves: loss per step and the periodic evaluation on a sample of each split; the "
        "table: the final evaluation on the full held-out splits."
    )


@st.fragment(run_every=live.fragment_timer())
def _run_area(cfg, rid: str) -> None:
    """Everything a run changes, in one fragment: the train button and the stored run
    while idle, the live view while a run goes (in every tab), the outcome when it ends.

    A run starting or ending reruns this fragment, never the whole page (the choices
    above stay as they are): the live panel, or the idle tab's watcher, asks for it.
    Between those, nothing runs on the server for this tab (the fallback without static
    serving waits for news server-side and redraws)."""
    s = data.get_trainer().snapshot()
    if s.running:
        _live_header(s)
        live.draw_live(s)
        return
    live.show_outcome(s, cfg, FINISHED_MARK)
    stored = data.run_by_id(rid)
    mine = s.owner == live.owner() and s.config == cfg.to_dict()
    cannot = st.session_state.pop("train_cannot_start", None)
    if cannot:
        st.error(f"Training cannot start: {md_text(cannot)}", icon=":material/error:")
    if st.session_state.pop("train_refused", False):
        st.info(
            "Training is busy: another session started a run a moment ago. "
            "Start yours when it ends."
        )
    start_label = "Train live"
    if stored is not None:
        where = "shipped with the app" if stored.shipped else "in your cache"
        st.info(
            f"This configuration is in the store ({where}): run **{stored.run_id}**, loaded below."
        )
        start_label = "Train it live anyway"
    elif mine and s.status not in ("idle", "completed"):
        live.draw_live(s)  # how far the stopped, diverged or failed run got
    st.button(
        start_label,
        icon=":material/play_arrow:",
        key="train_start",
        type="primary" if stored is None else "secondary",
        on_click=_start,
        args=(cfg,),
    )
    if stored is not None:
        _show_stored(stored, "Stored run")
    elif cfg.method == "qlora" and data.device_label() == "CPU":
        st.caption(
            "QLoRA on a CPU is slow: every forward pass dequantizes the 4-bit base; "
            "try few steps, or load a shipped run."
        )
    live.watch(s)


# ---------------------------------------------------------------- the run itself
live.hide_status()
live.keep_owner()  # a reload or another tab of this browser owns the same runs
_run_area(cfg, run_id(cfg, base.model_id, data.base_metrics().corpus_version))
