"""Everything the pages load, cached so that a rerun does not load it again.

* the base model (``st.cache_resource``: one copy per server, never modified);
* the run-store index (``st.cache_data`` keyed by a cheap signature of the store's
  directories, so a new or changed run is picked up at the next rerun and an unchanged
  store is never re-read);
* fine-tuned models of stored runs (``st.cache_resource``, a few at a time);
* the base model's figures (its metrics.json as a typed
  :class:`~minituner.store.base_record.BaseMetrics`);
* ``precomputed/experiments.json`` (the sweeps written by ``python -m minituner precompute``)
  as a typed :class:`~minituner.experiments.record.ExperimentsRecord`;
* the live-training worker, one per server.

Broken runs, a missing or unreadable experiments file and a malformed section of it
become warnings on the page that needs them; nothing here raises into a page except a
missing base model. What a message quotes from a file or an error is shown as text
(app.format.md_text, md_code): a crafted store cannot put a link on the page.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import streamlit as st
import torch

from app.format import md_code, md_text
from app.helpers import distance_to_defaults
from app.trainer import Trainer
from minituner.experiments.record import ExperimentsRecord
from minituner.finetune.result import Base, load_base
from minituner.io import read_json
from minituner.minigpt.trainutil import device_name, resolve_device
from minituner.paths import base_dir, experiments_file
from minituner.store.base_record import BaseMetrics
from minituner.store.runs import RUN_FILES, RunInfo, RunStore
from minituner.store.spectrum_record import SpectrumRecord

EXPERIMENTS_PATH: Path | None = None  # None: the data folder's experiments.json
PRECOMPUTE_HINT = "run `python -m minituner precompute` to create them"


# ---------------------------------------------------------------------- base model
@st.cache_resource(show_spinner="Loading the base model…")
def get_base() -> Base:
    return load_base()


def base_or_stop() -> Base:
    """The base model, or an error box and the end of this page's run."""
    try:
        return get_base()
    except ValueError as e:
        st.error(f"The base model cannot be loaded: {md_text(e)}")
        st.stop()


@st.cache_resource(show_spinner=False)
def _base_metrics(model_id: str) -> BaseMetrics:
    return BaseMetrics.from_json(get_base().metrics, str(base_dir() / BaseMetrics.FILE))


def base_metrics() -> BaseMetrics:
    """The base model's figures (its metrics.json, validated once per model), or an
    error box and the end of this page's run."""
    base = base_or_stop()
    try:
        return _base_metrics(base.model_id)
    except ValueError as e:
        st.error(f"The base model's figures cannot be read: {md_text(e)}")
        st.stop()


@st.cache_resource
def device_label() -> str:
    """The device live training uses: the GPU's name, or CPU."""
    return device_name(resolve_device("auto"))


# ---------------------------------------------------------------------- run store
def store() -> RunStore:
    """A RunStore over precomputed/runs and the user cache (read from the environment
    each time, so tests can point MINITUNER_CACHE somewhere else), or an error box and
    the end of the page's run when the data folder cannot be used."""
    try:
        return RunStore()
    except ValueError as e:
        st.error(f"The data folder cannot be used: {md_text(e)}")
        st.stop()


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st_ = path.stat()
        return (st_.st_mtime_ns, st_.st_size)
    except OSError:
        return (-1, -1)


def _signature(roots: list[Path]) -> tuple:
    """Changes whenever a run directory appears, disappears or one of its records is
    rewritten."""
    sig = []
    for root in roots:
        entries = []
        try:
            paths = sorted(root.iterdir()) if root.is_dir() else []
        except OSError:
            paths = []
        for p in paths:
            entries.append((p.name, *(_stamp(p / f) for f in RUN_FILES)))
        sig.append((str(root), tuple(entries)))
    return tuple(sig)


@st.cache_resource(show_spinner=False, max_entries=4)
def _list_runs(roots: tuple[str, ...], signature: tuple) -> tuple[list[RunInfo], list[str]]:
    # a resource, not data: the (frozen) records are shared, never copied or re-read
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = RunStore([Path(r) for r in roots]).list()
    return runs, [str(w.message) for w in caught]


def runs() -> tuple[list[RunInfo], list[str]]:
    """Every readable finished run, and a warning for each broken one."""
    roots = store().roots
    found, problems = _list_runs(tuple(str(r) for r in roots), _signature(roots))
    return list(found), list(problems)


def runs_with_warnings() -> list[RunInfo]:
    """:func:`runs`, with its warnings shown on the page (collapsed when many)."""
    found, problems = runs()
    if problems:
        with st.expander(
            f"{len(problems)} run(s) in the store could not be read", icon=":material/warning:"
        ):
            for p in problems:
                st.warning(md_text(p))
    return found


def run_by_id(rid: str) -> RunInfo | None:
    return next((r for r in runs()[0] if r.run_id == rid), None)


@st.cache_resource(max_entries=8, show_spinner="Loading the fine-tuned model…")
def _run_model(rid: str, path: str, mtime: int) -> torch.nn.Module:
    info = store().get(rid)
    return store().load_model(info, get_base())


def run_model(info: RunInfo) -> torch.nn.Module | None:
    """The fine-tuned model of a stored run (cached), or None with a warning."""
    try:
        mtime = (info.path / "metrics.json").stat().st_mtime_ns
        return _run_model(info.run_id, str(info.path), mtime)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        st.warning(f"Run {md_text(info.run_id)} cannot be loaded: {md_text(e)}")
        return None


def spectrum(info: RunInfo) -> SpectrumRecord:
    """The ΔW spectrum of a run (validated with the run when the store was listed)."""
    return info.spectrum


def default_run(found: list[RunInfo]) -> RunInfo | None:
    """The run a newcomer sees first: FinetuneConfig()'s defaults if stored, else the
    LoRA run closest to them, else the run closest to its method's defaults."""
    if not found:
        return None
    lora = [r for r in found if r.method == "lora"]
    return min(lora or found, key=distance_to_defaults)


def run_stamp(info: RunInfo) -> float:
    """When a run was stored (its metrics.json's modification time; 0 when unreadable):
    run menus list the newest first."""
    return _stamp(info.path / "metrics.json")[0] / 1e9


def just_trained(owner: str) -> str | None:
    """The run this browser (``owner``, app.live.owner()) trained last, when its latest
    run of today finished in the store; remembered in the session so that
    another session's later run does not take it away."""
    s = get_trainer().snapshot_for(owner)  # its training run, else waiting, else latest
    if owner and s.owner == owner and s.status == "completed" and s.run_id:
        st.session_state["just_trained_run"] = s.run_id
    return st.session_state.get("just_trained_run")


def preferred_run_ids() -> list[str]:
    """The runs the experiments compare (first seed of each method), for menus' defaults
    (a missing experiments file is no news here; one that cannot be read is a warning)."""
    exp = load_experiments(quiet="missing")
    forgetting = exp.forgetting if exp is not None else None
    return [a.run_ids[0] for a in (forgetting or {}).values() if a.run_ids]


# ---------------------------------------------------------------------- experiments
@st.cache_resource(show_spinner=False, max_entries=4)
def _read_experiments(path: str, mtime: int) -> ExperimentsRecord:
    # a resource, not data: the (frozen) record is shared, never copied or re-read
    return ExperimentsRecord.from_json(read_json(path), path, lenient=True)


def load_experiments(
    path: Path | None = None, quiet: bool | str = False
) -> ExperimentsRecord | None:
    """precomputed/experiments.json (or ``path``), read leniently (a malformed section is
    None, its reason in ``problems``), or None, with a warning on the page when it is
    missing or unreadable (``quiet``: no warning; ``quiet="missing"``: none when it is
    missing). Without a data folder (an invalid MINITUNER_DATA): an error box and the end
    of the page's run."""
    try:
        path = Path(path or EXPERIMENTS_PATH or experiments_file())
    except ValueError as e:
        st.error(f"The data folder cannot be used: {md_text(e)}")
        st.stop()
    if not path.is_file():
        if not quiet:
            st.warning(
                f"The experiment summaries ({md_text(path.name)}) are missing: {PRECOMPUTE_HINT}."
            )
        return None
    try:
        return _read_experiments(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError) as e:
        if quiet is not True:
            st.warning(f"{md_text(path.name)} cannot be read ({md_text(e)}): {PRECOMPUTE_HINT}.")
        return None


def experiment_section(
    experiments: ExperimentsRecord | None, key: str, what: str, hint: str | None = None
):
    """One section of the experiments record (``key``: its name), or None with a note:
    a warning naming ``what`` when the section is malformed; when it is missing or
    empty, a warning, or for a section older files lack an info with ``hint`` (the
    command that computes it)."""
    if experiments is None:
        return None
    if key in experiments.problems:
        problem = md_text(experiments.problems[key])
        st.warning(f"The {what} in experiments.json is malformed ({problem}).")
        return None
    section = getattr(experiments, key)
    if not section:
        if hint is not None:
            st.info(f"experiments.json has no {key} results yet: `{hint}` computes them.")
        else:
            st.warning(f"experiments.json has no {key!r} section: {PRECOMPUTE_HINT}.")
        return None
    return section


# ---------------------------------------------------------------------- sessions
@st.cache_resource
def get_trainer() -> Trainer:
    """The server's single live run (its training runs in a child process)."""
    return Trainer()


def cache_dir() -> str:
    """Where live runs are saved: the store's save root (the user cache)."""
    return str(store().save_root)


def eval_limit() -> int | None:
    """``MINITUNER_EVAL_LIMIT`` caps every evaluation of a live run at that many items
    per split (quick demos and tests); unset: the full held-out splits at the end."""
    v = os.environ.get("MINITUNER_EVAL_LIMIT", "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        st.warning(
            f"{md_code(f'MINITUNER_EVAL_LIMIT={v!r}')} ignored: it must be a whole number >= 1"
        )
        return None
    return n


# ---------------------------------------------------------------------- NF4
def base_linear_names() -> list[str]:
    """The transformer-layer Linear weights of the base model (what QLoRA quantizes)."""
    model = get_base().model
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.startswith("blocks.")
    ]


def _base_weight(layer: str) -> torch.Tensor:
    return get_base().model.get_submodule(layer).weight.detach().float().cpu()


@st.cache_data(show_spinner="Quantizing…", max_entries=32)
def quant_errors(layer: str, block_size: int, model_id: str) -> dict:
    """Per-weight errors of NF4, int4 and FP4 on one base layer (numpy arrays)."""
    from minituner.nf4.compare import QUANT_METHODS, quantization_errors

    w = _base_weight(layer)
    return {m: quantization_errors(w, m, block_size).numpy() for m in QUANT_METHODS}


@st.cache_data(show_spinner="Quantizing every layer…", max_entries=8)
def quant_report(block_size: int, model_id: str) -> list[dict]:
    """quantization_error_report over every layer Linear of the base model."""
    from minituner.nf4.compare import quantization_error_report

    return quantization_error_report(
        {name: _base_weight(name) for name in base_linear_names()}, block_size
    )
