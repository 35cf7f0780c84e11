"""The minituner explorer: `streamlit run app/main.py`.

One module per page under app/views/; the charts in app/charts/ (one per page), the cached
loading in app/data.py, the live-training worker in app/trainer.py. Pages only arrange
what the minituner package computes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import data  # noqa: E402
from minituner.minigpt.trainutil import torch_threads_from_env  # noqa: E402

st.set_page_config(
    page_title="minituner: LoRA & QLoRA explorer",
    page_icon=":material/tune:",
    layout="wide",
)

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = [
    st.Page(
        VIEWS / "overview.py",
        title="Overview",
        icon=":material/home:",
        url_path="overview",
        default=True,
    ),
    st.Page(VIEWS / "train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page(VIEWS / "teach.py", title="Teach a verb", icon=":material/school:", url_path="teach"),
    st.Page(VIEWS / "class_page.py", title="Class", icon=":material/groups:", url_path="class"),
    st.Page(
        VIEWS / "compare.py", title="Compare runs", icon=":material/show_chart:", url_path="compare"
    ),
    st.Page(
        VIEWS / "completions.py",
        title="Completions",
        icon=":material/chat:",
        url_path="completions",
    ),
    st.Page(
        VIEWS / "spectrum.py", title="Spectrum", icon=":material/equalizer:", url_path="spectrum"
    ),
    st.Page(
        VIEWS / "forgetting.py",
        title="Forgetting",
        icon=":material/psychology:",
        url_path="forgetting",
    ),
    st.Page(VIEWS / "memory.py", title="Memory", icon=":material/memory:", url_path="memory"),
    st.Page(
        VIEWS / "rank_sweep.py",
        title="Rank sweep",
        icon=":material/straighten:",
        url_path="rank-sweep",
    ),
    st.Page(VIEWS / "nf4.py", title="NF4", icon=":material/grid_4x4:", url_path="nf4"),
]

# Optional: pin torch's CPU threads (a busy 2-core machine trains faster with 1). A value
# that is not a whole number from 1 to 1024 is ignored here (a training child reports it).
try:
    torch_threads_from_env()
except ValueError:
    pass

page = st.navigation(PAGES)

with st.sidebar:
    st.caption(f"Device for live training: **{data.device_label()}**")
    # every learner's runs on this server (several train at once, others wait)
    going = [s.status for s in data.get_trainer().jobs() if s.status in ("running", "waiting")]
    if going:
        st.caption(
            f"Training now: {going.count('running')} run(s), {going.count('waiting')} "
            "waiting (the Class page lists them)"
        )

page.run()
