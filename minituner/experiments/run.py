"""Resumable orchestration: train what the plan (minituner.experiments.plan) needs, then
summarize (minituner.experiments.summary) and write the outputs
(minituner.experiments.report). ``python -m minituner precompute`` is :func:`precompute`.

Each run goes through the run store, so training is resumable: a run already stored is
skipped. The frontier and replay runs are stored metrics-only (no adapter, delta or
spectrum: RunStore.save(weights=False)); a run that another experiment also needs keeps
its weights. :func:`truncation_test` evaluates W + ΔW_k of a full fine-tune (no
training; reused from experiments.json when it was made from the same run).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from minituner.analysis import spectrum as analysis
from minituner.experiments import subspace as subspace_runs
from minituner.experiments.plan import (
    METRICS_ONLY,
    TRUNCATION_K,
    best_full_lr,
    check_only,
    lr_search_plan,
    plan,
)
from minituner.experiments.record import ExperimentsRecord
from minituner.experiments.record_sections import Truncation
from minituner.experiments.report import write_outputs
from minituner.experiments.summary import summarize
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import Base, load_base
from minituner.io import read_json
from minituner.minigpt.evaluate import evaluate
from minituner.paths import experiments_file, runs_dir
from minituner.store.records import Figures
from minituner.store.runs import RunInfo, RunStore


def run_all(
    store: RunStore,
    base: Base,
    seeds: int = 3,
    device: str = "auto",
    log: Callable[[str], None] = print,
    only: tuple[str, ...] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[RunInfo]:
    """Train every planned run that is not in the store yet (resumable).

    ``only``: the experiments to train (default: all; full fine-tuning's learning-rate
    search always comes first). ``shard=(k, n)``: train only the runs at positions
    k, k+n, k+2n, … of the plan, so n processes can share one device.

    Raises:
        ValueError: an unknown experiment name or a bad shard.
    """
    only = check_only(only)
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"shard must be k/n with 0 <= k < n, got {k}/{n}")
    todo: dict[str, FinetuneConfig] = {}
    for c in lr_search_plan():  # first, so the full runs below can use its result
        todo.setdefault(c.label(), c)
    out = []
    done = 0
    for cfg in list(todo.values()):
        done += 1
        info = _train_or_get(store, base, cfg, device, log, f"[lr {done}/{len(todo)}]")
        if info:
            out.append(info)
    full_lr = best_full_lr(store, base)
    log(f"full fine-tuning: best learning rate {full_lr}")
    todo = {}
    weights: dict[str, bool] = {}  # a run keeps its weights if any experiment needs them
    for name, cfgs in plan(seeds, full_lr).items():
        if name not in only:
            continue
        for c in cfgs:
            todo.setdefault(c.label(), c)
            weights[c.label()] = weights.get(c.label(), False) or name not in METRICS_ONLY
    for i, (label, cfg) in enumerate(todo.items(), 1):
        if (i - 1) % n != k:
            continue
        tag = f"[{i}/{len(todo)}]"
        info = _train_or_get(store, base, cfg, device, log, tag, weights[label])
        if info:
            out.append(info)
    return out


def _train_or_get(store, base, cfg, device, log, tag, weights: bool = True) -> RunInfo | None:
    found = store.lookup(cfg, base)
    if found is not None and (found.has_weights or not weights):
        log(f"{tag} stored   {found.label()}")
        return found
    res = finetune(cfg, base, device=device)
    if not res.ok():
        log(f"{tag} {res.status}: {cfg.label()}: {res.message}")
        return None
    info = store.save(res, weights=weights)
    f = info.final
    log(
        f"{tag} trained  {info.label()}  acc={f.irregular_accuracy:.3f} "
        f"en_drift={f.control_en_drift:+.4f}  {info.metrics.wall_time_s:.1f}s"
    )
    return info


@torch.no_grad()
def truncation_test(store: RunStore, base: Base, info: RunInfo) -> Truncation:
    """Accuracy and drift of W + ΔW_k for a full fine-tune, ΔW_k the best rank-k
    approximation of each block Linear's update (other parameters keep their
    fine-tuned values), for k in TRUNCATION_K and the full update."""
    tuned = store.load_model(info, base)
    deltas = analysis.weight_deltas(base.model.state_dict(), tuned.state_dict())
    deltas = {k: v for k, v in deltas.items() if k.startswith("blocks.") and v.dim() == 2}
    base_sd = base.model.state_dict()
    ks, found = [*TRUNCATION_K, "full"], []
    for k in ks:
        model = copy.deepcopy(tuned)
        sd = model.state_dict()
        for name, d in deltas.items():
            dk = d if k == "full" else analysis.low_rank_approx(d, int(k))
            sd[name].copy_(base_sd[name] + dk.to(sd[name].dtype))
        m = evaluate(model, base.tok, base.corpus, base_metrics=base.metrics)
        found.append(Figures.from_json(m, f"the evaluation at k={k}"))
    return Truncation(
        run_id=info.run_id,
        k=ks,
        irregular_accuracy=[f.irregular_accuracy for f in found],
        control_en_drift=[f.control_en_drift for f in found],
        control_es_drift=[f.control_es_drift for f in found],
    )


def _stored_truncation(info: RunInfo) -> Truncation | None:
    """The truncation test already in experiments.json, if it was made from this run
    (the test is deterministic: its run's weights and the base model fix it)."""
    path = experiments_file()
    try:
        tr = ExperimentsRecord.from_json(read_json(path), str(path), lenient=True).truncation
    except ValueError:
        return None
    if tr is not None and tr.run_id == info.run_id and tr.k:
        return tr
    return None


def precompute(
    seeds: int = 3,
    device: str = "auto",
    log: Callable[[str], None] = print,
    root: Path | None = None,
    only: tuple[str, ...] | None = None,
    shard: tuple[int, int] | None = None,
) -> ExperimentsRecord | None:
    """Train what is missing into ``root`` (default: the shipped runs), then write
    experiments.json and README.md. ``only``: train these experiments alone (the
    summary still covers every stored run). ``shard=(k, n)``: train the k-th of every n
    planned runs and write no summary (n such processes share one device; run once
    without a shard afterwards to write it); returns None then.

    Raises:
        ValueError: an unknown experiment or a bad shard.
    """
    base = load_base()
    root = root or runs_dir()
    store = RunStore([root], save_root=root)
    run_all(store, base, seeds, device, log, only, shard or (0, 1))
    if shard is not None:
        return None
    full0 = store.lookup(FinetuneConfig(method="full", lr=best_full_lr(store, base), seed=0), base)
    trunc = _stored_truncation(full0) if full0 else None
    if full0 and trunc is None:
        trunc = truncation_test(store, base, full0)
    exp = summarize(store, base, seeds, trunc)
    subspace_runs.refresh(store, base, exp, log)  # no training: reads the stored updates
    write_outputs(exp)
    return exp
