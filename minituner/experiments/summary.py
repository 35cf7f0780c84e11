"""Aggregation: the stored runs of the plan (minituner.experiments.plan) summarized into
the typed :class:`~minituner.experiments.record.ExperimentsRecord` that
``precomputed/experiments.json`` holds. Nothing here trains: :func:`summarize` reads the
run store, and a run it lacks is left out and listed in ``missing``.

* :func:`aggregate`: one setting's runs over seeds (mean ± std of each figure);
* :func:`grid_config`, :func:`frontier_summary`, :func:`replay_summary`: the grids,
  each method's Pareto fronts and LoRA against full fine-tuning at matched learning
  (minituner.analysis.frontier).
"""

from __future__ import annotations

import dataclasses

from minituner.analysis import frontier
from minituner.analysis import spectrum as analysis
from minituner.experiments.plan import (
    FRONTIER_MEASURES,
    RANKS,
    REPLAY_SHARES,
    TARGET_SETS,
    best_full_lr,
    frontier_grid,
    lr_search_plan,
    replay_grid,
    seeded,
)
from minituner.experiments.record import ExperimentsRecord
from minituner.experiments.record_grids import (
    LEARNING,
    Frontier,
    GridConfig,
    Matched,
    Replay,
    SeedFigures,
)
from minituner.experiments.record_sections import (
    FIGURES,
    Aggregate,
    BaseSummary,
    Elbow,
    LrRun,
    LrSearch,
    MeanStd,
    RankSweep,
    Truncation,
)
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.result import Base
from minituner.store.base_record import BaseMetrics
from minituner.store.runs import RunInfo, RunStore


def _mean_std(values) -> MeanStd:
    return MeanStd(*analysis.mean_std(list(values)))


def aggregate(infos: list[RunInfo]) -> Aggregate:
    """Mean ± std over the runs of each figure, the trainable parameters and measured
    state memory of the first (the same for every seed)."""
    mem = infos[0].metrics.memory
    return Aggregate(
        run_ids=[i.run_id for i in infos],
        n=len(infos),
        **{name: _mean_std(getattr(i.final, name) for i in infos) for name in FIGURES},
        stable_rank_mean=_mean_std(i.metrics.stable_rank_mean for i in infos),
        final_loss=_mean_std(sum(i.metrics.curves.loss[-5:]) / 5 for i in infos),
        trainable_params=infos[0].metrics.trainable_params,
        # weights, LoRA, NF4, grads, AdamW
        measured_state_bytes=mem.measured.get("total", 0) if mem else 0,
    )


def base_summary(base: Base) -> BaseSummary:
    """The base model's figures, from its metrics.json (validated here)."""
    bm = BaseMetrics.from_json(base.metrics, f"metrics.json of base model {base.model_id}")
    return BaseSummary(
        model_id=base.model_id,
        corpus_version=bm.corpus_version,
        irregular_accuracy=bm.irregular_accuracy,
        overregularized_rate=bm.overregularized_rate,
        regular_accuracy=bm.regular_accuracy,
        control_en_ppl=bm.control_en_ppl,
        control_es_ppl=bm.control_es_ppl,
    )


def summarize(
    store: RunStore, base: Base, seeds: int = 3, truncation: Truncation | None = None
) -> ExperimentsRecord:
    """experiments.json from the stored runs (missing runs are left out and listed)."""
    missing: list[str] = []

    def runs(cfgs):
        found = []
        for c in cfgs:
            info = store.lookup(c, base)
            (found.append(info) if info else missing.append(c.label()))
        return found

    s = range(seeds)
    full_lr = best_full_lr(store, base)
    lr_search = []
    for c in lr_search_plan():
        info = store.lookup(c, base)
        if info:
            figures = {k: getattr(info.final, k) for k in FIGURES}
            lr_search.append(LrRun(lr=c.lr, run_id=info.run_id, **figures))
    sweep_runs = {r: runs([FinetuneConfig(method="lora", r=r, seed=k) for k in s]) for r in RANKS}
    full_runs = runs([FinetuneConfig(method="full", lr=full_lr, seed=k) for k in s])
    acc = {r: [i.final.irregular_accuracy for i in v] for r, v in sweep_runs.items() if v}
    sweep = RankSweep(
        ranks=[r for r in RANKS if sweep_runs[r]],
        runs={r: [i.run_id for i in v] for r, v in sweep_runs.items() if v},
        full_runs=[i.run_id for i in full_runs],
        summary={r: aggregate(v) for r, v in sweep_runs.items() if v},
        full=aggregate(full_runs) if full_runs else None,
        elbow=Elbow(**analysis.rank_elbow(acc)) if acc else None,
    )
    targets = {}
    for name, t in TARGET_SETS.items():
        v = runs([FinetuneConfig(method="lora", r=8, targets=t, seed=k) for k in s])
        if v:
            targets[name] = aggregate(v)
    forgetting = {}
    for method in ("full", "lora", "qlora"):
        lr = full_lr if method == "full" else None
        v = runs([FinetuneConfig(method=method, lr=lr, seed=k) for k in s])
        if v:
            forgetting[method] = aggregate(v)
            if method == "qlora":
                nf4 = [i.metrics.nf4_base_metrics for i in v if i.metrics.nf4_base_metrics]
                if nf4:
                    forgetting[method] = dataclasses.replace(forgetting[method], nf4_base=nf4[0])
    grid = {c.label(): runs(seeded(c, seeds)) for c in frontier_grid()}
    front = frontier_summary(grid)
    replay = replay_summary({c.label(): runs(seeded(c, seeds)) for c in replay_grid()})
    return ExperimentsRecord(
        base=base_summary(base),
        rank_sweep=sweep,
        full_lr_search=LrSearch(best_lr=full_lr, runs=lr_search),
        targets=targets,
        forgetting=forgetting,
        frontier=front,
        replay=replay,
        truncation=truncation,
        missing=sorted(set(missing)),
    )


def grid_config(infos: list[RunInfo]) -> GridConfig:
    """One grid config: its settings, :func:`aggregate` over its seeds, and each seed's
    figures (in the order of ``seeds``)."""
    c = infos[0].finetune_config()
    return GridConfig(
        method=c.method,
        lr=c.lr,
        steps=c.steps,
        replay=c.replay,
        r=None if c.method == "full" else c.r,
        label=dataclasses.replace(c, seed=0).label().replace(" seed=0", ""),
        stats=aggregate(infos),
        seeds=[i.finetune_config().seed for i in infos],
        per_seed=SeedFigures(**{k: [getattr(i.final, k) for i in infos] for k in FIGURES}),
    )


def frontier_summary(grid: dict[str, list[RunInfo]]) -> Frontier:
    """The frontier section from the grid's stored runs (by config).

    ``configs``: one :func:`grid_config` per config with runs; ``fronts[measure]
    [method]``: the indices into ``configs`` of the method's Pareto front of the means, by
    increasing learning; ``matched[measure]``: LoRA's front against full fine-tuning's at
    matched irregular accuracy (:func:`minituner.analysis.frontier.compare`, a = LoRA, b = full),
    for the means and for each seed's own fronts (``per_seed_advantage``)."""
    configs = [grid_config(v) for v in grid.values() if v]
    fronts: dict[str, dict[str, list[int]]] = {}
    matched = {}
    methods = sorted({c.method for c in configs})
    for measure, low in FRONTIER_MEASURES.items():
        fronts[measure] = {}
        for m in methods:
            idx = [i for i, c in enumerate(configs) if c.method == m]
            pts = [_point(configs[i].stats, measure) for i in idx]
            fronts[measure][m] = [idx[j] for j in frontier.pareto_front(pts, low)]
        matched[measure] = _matched(configs, measure, low)
    return Frontier(
        learning=LEARNING,
        measures={
            k: f"{'lower' if low else 'higher'} is better" for k, low in FRONTIER_MEASURES.items()
        },
        configs=configs,
        fronts=fronts,
        matched=matched,
    )


def _point(a: Aggregate, measure: str) -> tuple[float, float]:
    """(learning, forgetting) of a config's means."""
    return (a.irregular_accuracy.mean, getattr(a, measure).mean)


def _matched(configs: list[GridConfig], measure: str, low: bool) -> Matched:
    """LoRA against full fine-tuning at matched learning (:func:`frontier.compare`, LoRA
    as ``a``), on the config means and on each seed's own runs."""

    def points(method, seed=None):
        pts = []
        for c in configs:
            if c.method != method:
                continue
            if seed is None:
                pts.append(_point(c.stats, measure))
            elif seed in c.seeds:
                j = c.seeds.index(seed)
                pts.append((c.per_seed.irregular_accuracy[j], getattr(c.per_seed, measure)[j]))
        return pts

    lora, full = points("lora"), points("full")
    if not lora or not full:
        return Matched([], [], [], [], None, 0, {})
    cmp = frontier.compare(lora, full, low)
    seeds = sorted({s for c in configs for s in c.seeds})
    per_seed = {}
    for s in seeds:
        a, b = points("lora", s), points("full", s)
        if a and b:
            per_seed[str(s)] = frontier.compare(a, b, low)["mean_advantage"]
    return Matched(
        levels=cmp["levels"],
        lora=cmp["a"],
        full=cmp["b"],
        advantage=cmp["advantage"],
        mean_advantage=cmp["mean_advantage"],
        wins=cmp["wins"],
        per_seed_advantage=per_seed,
    )


def replay_summary(grid: dict[str, list[RunInfo]]) -> Replay:
    """The replay section: ``shares`` and, per method, one :func:`grid_config` per replay
    share with runs (by increasing share)."""
    by_method: dict[str, list[GridConfig]] = {"lora": [], "full": []}
    for v in grid.values():
        if v:
            e = grid_config(v)
            by_method[e.method].append(e)
    for entries in by_method.values():
        entries.sort(key=lambda e: e.replay)
    return Replay(shares=list(REPLAY_SHARES), **by_method)
