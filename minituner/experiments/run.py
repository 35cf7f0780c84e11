"""The experiments behind the explorer's charts, and ``precompute``.

* rank sweep: LoRA r in {1, 2, 4, 8, 16, 32, 64} on q,v and full fine-tuning, over seeds;
* target modules at r=8: q,v / q,k,v,o / mlp / all;
* forgetting: full, LoRA and QLoRA with their control perplexity over the steps;
* truncation: W + ΔW_k (best rank-k part of a full fine-tune's update) for k = 1…32, full;
* frontier: full fine-tuning over learning rates x step budgets, LoRA (q,v) over ranks x
  learning rates, QLoRA at its defaults; each config's learning (irregular accuracy)
  against its forgetting (control drift, regular-verb accuracy), with each method's Pareto
  front and LoRA against full fine-tuning at matched learning (minituner.analysis.frontier);
* replay: a share of regular-verb cloze pairs mixed into the training data (0 … 25%), for
  LoRA and full fine-tuning at their defaults.

The frontier and replay runs are stored metrics-only (no adapter, delta or spectrum:
RunStore.save(weights=False)); a run that another experiment also needs keeps its weights.

Each run goes through the run store, so ``precompute`` is resumable: a run already
stored is skipped. ``summarize`` reads the stored runs (it trains nothing) and produces
``precomputed/experiments.json`` and the findings table of ``precomputed/README.md``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from minituner.analysis import frontier, subspace_record
from minituner.analysis import spectrum as analysis
from minituner.experiments import subspace as subspace_runs
from minituner.finetune.config import FinetuneConfig
from minituner.finetune.loop import finetune
from minituner.finetune.result import Base
from minituner.io import atomic_write_text, read_json, write_json
from minituner.minigpt.evaluate import evaluate
from minituner.paths import experiments_file, experiments_readme, runs_dir
from minituner.store.records import MetricsRecord, read_record
from minituner.store.runs import RunInfo, RunStore

RANKS = (1, 2, 4, 8, 16, 32, 64)
# by name; the values are normalised (FinetuneConfig expands mlp and all the same way)
TARGET_SETS = {
    "q,v": ("q", "v"),
    "q,k,v,o": ("q", "k", "v", "o"),
    "mlp": ("fc_in", "fc_out"),
    "all": ("q", "k", "v", "o", "fc_in", "fc_out"),
}
TRUNCATION_K = (1, 2, 4, 8, 16, 32)
FULL_LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # full fine-tuning's own learning-rate search (seed 0)
REGENERATE = "python -m minituner precompute"
FRONTIER_FULL_LRS = (1e-4, 3e-4, 1e-3)
FRONTIER_STEPS = (20, 40, 80)
FRONTIER_RANKS = (2, 8, 32)
FRONTIER_LORA_LRS = (1e-3, 5e-3, 2e-2)
REPLAY_SHARES = (0.0, 0.05, 0.10, 0.25)
METRICS_ONLY = ("frontier", "replay")  # experiments whose runs are stored without weights
EXPERIMENTS = ("rank_sweep", "targets", "forgetting", "frontier", "replay")
# the forgetting measures of the frontier: lower is better?
FRONTIER_MEASURES = {"control_en_drift": True, "control_es_drift": True, "regular_accuracy": False}
_FIGURES = ("irregular_accuracy", "regular_accuracy", "control_en_drift", "control_es_drift")


def lr_search_plan() -> list[FinetuneConfig]:
    return [FinetuneConfig(method="full", lr=lr, seed=0) for lr in FULL_LRS]


def best_full_lr(store: RunStore, base: Base) -> float | None:
    """The full fine-tuning learning rate with the best irregular accuracy at the
    default step budget (ties: the lower control_en drift). None until searched."""
    found = [(c.lr, store.lookup(c, base)) for c in lr_search_plan()]
    found = [(lr, i) for lr, i in found if i is not None]
    if not found:
        return None
    best = max(found, key=lambda x: (x[1].final.irregular_accuracy, -x[1].final.control_en_drift))
    return best[0]


def plan(seeds: int = 3, full_lr: float | None = None) -> dict[str, list[FinetuneConfig]]:
    """Every run the experiments need, by experiment (runs may appear in several)."""
    s = range(seeds)
    sweep = [FinetuneConfig(method="lora", r=r, seed=k) for r in RANKS for k in s]
    full = [FinetuneConfig(method="full", lr=full_lr, seed=k) for k in s]
    targets = [
        FinetuneConfig(method="lora", r=8, targets=t, seed=k)
        for t in TARGET_SETS.values()
        for k in s
    ]
    qlora = [FinetuneConfig(method="qlora", seed=k) for k in s]
    return {
        "rank_sweep": sweep + full,
        "targets": targets,
        "forgetting": qlora,
        "frontier": [c for g in frontier_grid() for c in _seeded(g, seeds)],
        "replay": [c for g in replay_grid() for c in _seeded(g, seeds)],
    }


def frontier_grid() -> list[FinetuneConfig]:
    """The frontier's configs (seed 0): full fine-tuning lr x steps, LoRA (q,v) r x lr at
    the default steps, QLoRA at its defaults."""
    full = [FinetuneConfig(method="full", lr=lr, steps=n)
            for lr in FRONTIER_FULL_LRS for n in FRONTIER_STEPS]  # fmt: skip
    lora = [FinetuneConfig(method="lora", r=r, lr=lr)
            for r in FRONTIER_RANKS for lr in FRONTIER_LORA_LRS]  # fmt: skip
    return full + lora + [FinetuneConfig(method="qlora")]


def replay_grid() -> list[FinetuneConfig]:
    """The replay sweep's configs (seed 0): LoRA and full fine-tuning at their defaults,
    each replay share."""
    return [FinetuneConfig(method=m, replay=share)
            for m in ("lora", "full") for share in REPLAY_SHARES]  # fmt: skip


def _seeded(cfg: FinetuneConfig, seeds: int) -> list[FinetuneConfig]:
    return [dataclasses.replace(cfg, seed=k) for k in range(seeds)]


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


def check_only(only) -> tuple[str, ...]:
    """The experiment names to run (all when None).

    Raises:
        ValueError: a name that is not one of EXPERIMENTS.
    """
    if only is None:
        return EXPERIMENTS
    bad = [e for e in only if e not in EXPERIMENTS]
    if bad or not only:
        raise ValueError(
            f"unknown experiment {', '.join(map(repr, bad)) or '(none given)'}; choose from "
            + ", ".join(EXPERIMENTS)
        )
    return tuple(only)


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


def _get(store: RunStore, base: Base, cfg: FinetuneConfig) -> RunInfo | None:
    return store.lookup(cfg, base)


def _agg(infos: list[RunInfo]) -> dict:
    def ms(values):
        return analysis.mean_std(list(values))

    out = {"run_ids": [i.run_id for i in infos], "n": len(infos)}
    for key in ("irregular_accuracy", "regular_accuracy", "control_en_drift", "control_es_drift"):
        out[f"{key}_mean"], out[f"{key}_std"] = ms(getattr(i.final, key) for i in infos)
    out["stable_rank_mean_mean"], out["stable_rank_mean_std"] = ms(
        i.metrics.stable_rank_mean for i in infos
    )
    losses = [sum(i.metrics.curves.loss[-5:]) / 5 for i in infos]
    out["final_loss_mean"], out["final_loss_std"] = analysis.mean_std(losses)
    out["trainable_params"] = infos[0].metrics.trainable_params
    mem = infos[0].metrics.memory
    # weights, LoRA, NF4, grads, AdamW
    out["measured_state_bytes"] = mem.measured.get("total", 0) if mem else 0
    return out


def summarize(store: RunStore, base: Base, seeds: int = 3, truncation: dict | None = None) -> dict:
    """experiments.json from the stored runs (missing runs are left out and listed)."""
    missing: list[str] = []

    def runs(cfgs):
        found = []
        for c in cfgs:
            info = _get(store, base, c)
            (found.append(info) if info else missing.append(c.label()))
        return found

    s = range(seeds)
    full_lr = best_full_lr(store, base)
    lr_search = []
    for c in lr_search_plan():
        info = _get(store, base, c)
        if info:
            f = info.final
            lr_search.append({"lr": c.lr, "run_id": info.run_id, **{
                k: getattr(f, k) for k in ("irregular_accuracy", "regular_accuracy",
                                           "control_en_drift", "control_es_drift")}})  # fmt: skip
    sweep_runs = {r: runs([FinetuneConfig(method="lora", r=r, seed=k) for k in s]) for r in RANKS}
    full_runs = runs([FinetuneConfig(method="full", lr=full_lr, seed=k) for k in s])
    summary = {str(r): _agg(v) for r, v in sweep_runs.items() if v}
    if full_runs:
        summary["full"] = _agg(full_runs)
    acc = {r: [i.final.irregular_accuracy for i in v] for r, v in sweep_runs.items() if v}
    out: dict = {
        "base": {
            "model_id": base.model_id,
            "corpus_version": base.metrics["corpus_version"],
            **{
                k: base.metrics[k]
                for k in (
                    "irregular_accuracy",
                    "overregularized_rate",
                    "regular_accuracy",
                    "control_en_ppl",
                    "control_es_ppl",
                )
            },
        },
        "rank_sweep": {
            "ranks": [r for r in RANKS if sweep_runs[r]],
            "runs": {str(r): [i.run_id for i in v] for r, v in sweep_runs.items() if v},
            "full": [i.run_id for i in full_runs],
            "summary": summary,
            "elbow": _elbow(acc),
        },
        "full_lr_search": {"best_lr": full_lr, "runs": lr_search},
        "targets": {},
        "forgetting": {},
    }
    for name, t in TARGET_SETS.items():
        v = runs([FinetuneConfig(method="lora", r=8, targets=t, seed=k) for k in s])
        if v:
            out["targets"][name] = _agg(v)
    for method in ("full", "lora", "qlora"):
        lr = full_lr if method == "full" else None
        v = runs([FinetuneConfig(method=method, lr=lr, seed=k) for k in s])
        if v:
            out["forgetting"][method] = _agg(v)
            if method == "qlora":
                nf4 = [i.metrics.nf4_base_metrics for i in v if i.metrics.nf4_base_metrics]
                if nf4:
                    out["forgetting"][method]["nf4_base"] = nf4[0].figures_json()
    grid = {c.label(): runs(_seeded(c, seeds)) for c in frontier_grid()}
    out["frontier"] = frontier_summary(grid)
    out["replay"] = replay_summary({c.label(): runs(_seeded(c, seeds)) for c in replay_grid()})
    if truncation is not None:
        out["truncation"] = truncation
    out["missing"] = sorted(set(missing))
    return out


def _config_entry(infos: list[RunInfo]) -> dict:
    """One grid config: its settings, :func:`_agg` over its seeds, and each seed's
    figures (``per_seed[figure]``, in the order of ``seeds``)."""
    c = infos[0].finetune_config()
    entry = {"method": c.method, "lr": c.lr, "steps": c.steps, "replay": c.replay}
    if c.method != "full":
        entry["r"] = c.r
    entry["label"] = dataclasses.replace(c, seed=0).label().replace(" seed=0", "")
    entry.update(_agg(infos))
    entry["seeds"] = [i.finetune_config().seed for i in infos]
    entry["per_seed"] = {k: [getattr(i.final, k) for i in infos] for k in _FIGURES}
    return entry


def frontier_summary(grid: dict[str, list[RunInfo]]) -> dict:
    """The frontier section of experiments.json from the grid's stored runs (by config).

    ``configs``: one entry per config with runs (:func:`_config_entry`); ``fronts[measure]
    [method]``: the indices into ``configs`` of the method's Pareto front of the means, by
    increasing learning; ``matched[measure]``: LoRA's front against full fine-tuning's at
    matched irregular accuracy (:func:`minituner.analysis.frontier.compare`, a = LoRA, b = full),
    for the means and for each seed's own fronts (``per_seed_advantage``)."""
    configs = [_config_entry(v) for v in grid.values() if v]
    out: dict = {
        "learning": "irregular_accuracy",
        "measures": {
            k: f"{'lower' if low else 'higher'} is better" for k, low in FRONTIER_MEASURES.items()
        },
        "configs": configs,
        "fronts": {},
        "matched": {},
    }
    methods = sorted({c["method"] for c in configs})
    for measure, low in FRONTIER_MEASURES.items():
        out["fronts"][measure] = {}
        for m in methods:
            idx = [i for i, c in enumerate(configs) if c["method"] == m]
            pts = [(configs[i]["irregular_accuracy_mean"], configs[i][f"{measure}_mean"])
                   for i in idx]  # fmt: skip
            out["fronts"][measure][m] = [idx[j] for j in frontier.pareto_front(pts, low)]
        out["matched"][measure] = _matched(configs, measure, low)
    return out


def _matched(configs: list[dict], measure: str, low: bool) -> dict:
    """LoRA against full fine-tuning at matched learning (:func:`frontier.compare`, LoRA
    as ``a``), on the config means and on each seed's own runs."""

    def points(method, seed=None):
        pts = []
        for c in configs:
            if c["method"] != method:
                continue
            if seed is None:
                pts.append((c["irregular_accuracy_mean"], c[f"{measure}_mean"]))
            elif seed in c["seeds"]:
                j = c["seeds"].index(seed)
                pts.append((c["per_seed"]["irregular_accuracy"][j], c["per_seed"][measure][j]))
        return pts

    lora, full = points("lora"), points("full")
    if not lora or not full:
        return {"levels": [], "lora": [], "full": [], "advantage": [], "mean_advantage": None,
                "wins": 0, "per_seed_advantage": {}}  # fmt: skip
    cmp = frontier.compare(lora, full, low)
    seeds = sorted({s for c in configs for s in c["seeds"]})
    per_seed = {}
    for s in seeds:
        a, b = points("lora", s), points("full", s)
        if a and b:
            per_seed[str(s)] = frontier.compare(a, b, low)["mean_advantage"]
    return {
        "levels": cmp["levels"],
        "lora": cmp["a"],
        "full": cmp["b"],
        "advantage": cmp["advantage"],
        "mean_advantage": cmp["mean_advantage"],
        "wins": cmp["wins"],
        "per_seed_advantage": per_seed,
    }


def replay_summary(grid: dict[str, list[RunInfo]]) -> dict:
    """The replay section of experiments.json: ``shares`` and, per method, one
    :func:`_config_entry` per replay share with runs (by increasing share)."""
    out: dict = {"shares": list(REPLAY_SHARES), "lora": [], "full": []}
    for v in grid.values():
        if v:
            e = _config_entry(v)
            out[e["method"]].append(e)
    for m in ("lora", "full"):
        out[m].sort(key=lambda e: e["replay"])
    return out


@torch.no_grad()
def truncation_test(store: RunStore, base: Base, info: RunInfo) -> dict:
    """Accuracy and drift of W + ΔW_k for a full fine-tune, ΔW_k the best rank-k
    approximation of each block Linear's update (other parameters keep their
    fine-tuned values), for k in TRUNCATION_K and the full update."""
    tuned = store.load_model(info, base)
    deltas = analysis.weight_deltas(base.model.state_dict(), tuned.state_dict())
    deltas = {k: v for k, v in deltas.items() if k.startswith("blocks.") and v.dim() == 2}
    res: dict = {"run_id": info.run_id, "k": [], "irregular_accuracy": [], "control_en_drift": []}
    res["control_es_drift"] = []
    base_sd = base.model.state_dict()
    for k in [*TRUNCATION_K, "full"]:
        model = copy.deepcopy(tuned)
        sd = model.state_dict()
        for name, d in deltas.items():
            dk = d if k == "full" else analysis.low_rank_approx(d, int(k))
            sd[name].copy_(base_sd[name] + dk.to(sd[name].dtype))
        m = evaluate(model, base.tok, base.corpus, base_metrics=base.metrics)
        res["k"].append(k)
        res["irregular_accuracy"].append(m["irregular_accuracy"])
        res["control_en_drift"].append(m["control_en_drift"])
        res["control_es_drift"].append(m["control_es_drift"])
    return res


def _stored_truncation(info: RunInfo) -> dict | None:
    """The truncation test already in experiments.json, if it was made from this run
    (the test is deterministic: its run's weights and the base model fix it)."""
    try:
        tr = read_json(experiments_file()).get("truncation")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(tr, dict) and tr.get("run_id") == info.run_id and tr.get("k"):
        return tr
    return None


def _elbow(acc: dict) -> dict | None:
    if not acc:
        return None
    el = analysis.rank_elbow(acc)
    el["elbow"] = el["elbow_r"]
    return el


def _size(n: float) -> str:
    """Bytes as the tables write them: MiB from 1 MiB up, KiB below."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def findings_table(exp: dict) -> str:
    """The markdown findings table of precomputed/README.md."""
    rows = [
        "| run | method | r | targets | irregular acc. | regular acc. | control_en drift "
        "| control_es drift | stable rank (ΔW) | trainable params | state memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pm(a, key, pct=False):
        m, s = a[f"{key}_mean"], a[f"{key}_std"]
        return f"{m:+.1%} ± {s:.1%}" if pct else f"{m:.3f} ± {s:.3f}"

    def row(name, method, r, targets, a):
        rows.append(
            f"| {name} | {method} | {r} | {targets} | {pm(a, 'irregular_accuracy')} "
            f"| {pm(a, 'regular_accuracy')} | {pm(a, 'control_en_drift', True)} "
            f"| {pm(a, 'control_es_drift', True)} | {a['stable_rank_mean_mean']:.2f} "
            f"| {a['trainable_params']:,} | {_size(a['measured_state_bytes'])} |"
        )

    sw = exp["rank_sweep"]["summary"]
    for r in exp["rank_sweep"]["ranks"]:
        row(f"sweep r={r}", "lora", r, "q,v", sw[str(r)])
    if "full" in sw:
        row("full FT", "full", "-", "all", sw["full"])
    for name, a in exp["targets"].items():
        row(f"targets {name}", "lora", 8, name, a)
    if "qlora" in exp["forgetting"]:
        row("QLoRA", "qlora", 8, "q,v", exp["forgetting"]["qlora"])
    return "\n".join(rows)


def _measured_memory(run_id: str, root: Path | None = None) -> dict[str, int]:
    """The measured memory of a stored run, by category (bytes).

    Raises:
        ValueError: a missing or invalid metrics.json (naming it).
    """
    m = read_record((root or runs_dir()) / run_id / MetricsRecord.FILE, MetricsRecord)
    if m.memory is None:
        raise ValueError(f"run {run_id} has no memory figures")
    return m.memory.measured


def claims(exp: dict, root: Path | None = None) -> list[dict]:
    """Each claim of the experiment, whether it held, and the figures that say so."""
    sw = exp["rank_sweep"]["summary"]
    lora, full = sw["8"], sw.get("full")
    out = []
    held = lora["control_en_drift_mean"] <= 0.05 and lora["irregular_accuracy_mean"] >= 0.95
    out.append({
        "claim": "LoRA (r=8 on q,v) fixes the irregular verbs and keeps control perplexity within 5%",
        "held": held,
        "figures": (
            f"irregular accuracy {exp['base']['irregular_accuracy']:.3f} -> "
            f"{lora['irregular_accuracy_mean']:.3f} ± {lora['irregular_accuracy_std']:.3f}; "
            f"control_en drift {lora['control_en_drift_mean']:+.2%}, control_es drift "
            f"{lora['control_es_drift_mean']:+.2%}; but regular-verb cloze accuracy falls from "
            f"{exp['base']['regular_accuracy']:.3f} to {lora['regular_accuracy_mean']:.3f}"
        ),
    })  # fmt: skip
    if full:
        out.append({
            "claim": "full fine-tuning drifts",
            "held": full["control_en_drift_mean"] > 2 * max(lora["control_en_drift_mean"], 0.005),
            "figures": (
                f"at its best lr ({exp['full_lr_search']['best_lr']:g}): control_en drift "
                f"{full['control_en_drift_mean']:+.1%} ± {full['control_en_drift_std']:.1%}, "
                f"control_es {full['control_es_drift_mean']:+.1%}, regular-verb cloze accuracy "
                f"{full['regular_accuracy_mean']:.3f} (LoRA: {lora['control_en_drift_mean']:+.2%}, "
                f"{lora['regular_accuracy_mean']:.3f})"
            ),
        })  # fmt: skip
    tr = exp.get("truncation")
    if tr:
        full_acc = tr["irregular_accuracy"][-1]
        k_ok = next((k for k, a in zip(tr["k"], tr["irregular_accuracy"], strict=True)
                     if a >= full_acc - 0.02), "full")  # fmt: skip
        out.append({
            "claim": "the full fine-tune's ΔW is approximately low-rank",
            "held": k_ok != "full" and int(k_ok) <= 8,
            "figures": (
                f"keeping only the best rank-{k_ok} part of every layer's update gives irregular "
                f"accuracy {tr['irregular_accuracy'][tr['k'].index(k_ok)]:.3f} against "
                f"{full_acc:.3f} for the whole update (up to rank 128); mean stable rank of "
                f"ΔW {full['stable_rank_mean_mean'] if full else float('nan'):.2f}"
            ),
        })  # fmt: skip
    el = exp["rank_sweep"].get("elbow")
    if el:
        out.append({
            "claim": "accuracy saturates at a small rank",
            "held": el["elbow"] <= 8,
            "figures": (
                f"elbow at r = {el['elbow']} (best mean {el['best_mean']:.3f} at r = "
                f"{el['best_r']}; r=1: {el['mean'][0]:.3f}, r=64: {el['mean'][-1]:.3f})"
            ),
        })  # fmt: skip
    q = exp["forgetting"].get("qlora")
    if q:
        lm = _measured_memory(exp["forgetting"]["lora"]["run_ids"][0], root)
        qm = _measured_memory(q["run_ids"][0], root)
        diff = q["irregular_accuracy_mean"] - lora["irregular_accuracy_mean"]
        out.append({
            "claim": "QLoRA (NF4 base) matches LoRA at about a quarter of the base-weight memory",
            "held": abs(diff) <= 0.02,
            "figures": (
                f"irregular accuracy {q['irregular_accuracy_mean']:.3f} vs "
                f"{lora['irregular_accuracy_mean']:.3f} (difference {diff:+.3f}), control_en "
                f"drift {q['control_en_drift_mean']:+.2%}; the quantized Linears take "
                f"{qm['nf4']:,} bytes against {lm['weights'] - qm['weights']:,} in fp32 "
                f"({qm['nf4'] / (lm['weights'] - qm['weights']):.3f}x; "
                f"{2 * qm['nf4'] / (lm['weights'] - qm['weights']):.3f}x of bf16); the NF4 base "
                f"alone, no adapter, scores {q['nf4_base']['irregular_accuracy']:.3f}"
            ),
        })  # fmt: skip
    fc = frontier_claim(exp.get("frontier"))
    if fc:
        out.append(fc)
    rc = replay_claim(exp.get("replay"))
    if rc:
        out.append(rc)
    return out


def replay_claim(rp: dict | None) -> dict | None:
    """The claim "replaying regular-verb pairs brings regular-verb accuracy back without
    losing the irregular verbs": for LoRA and full fine-tuning, the largest replay share
    against none. Held when, for both, regular accuracy rises by at least 0.1 and
    irregular accuracy falls by at most 0.02. None without both ends for both methods."""
    if not rp:
        return None
    ends = {}
    for m in ("lora", "full"):
        es = rp.get(m) or []
        if len(es) < 2 or es[0]["replay"] != 0.0:
            return None
        ends[m] = (es[0], es[-1])
    held = all(
        b["regular_accuracy_mean"] - a["regular_accuracy_mean"] >= 0.1
        and a["irregular_accuracy_mean"] - b["irregular_accuracy_mean"] <= 0.02
        for a, b in ends.values()
    )

    def one(m):
        a, b = ends[m]
        return (
            f"{m}: regular-verb accuracy {_pm(a, 'regular_accuracy')} -> "
            f"{_pm(b, 'regular_accuracy')} at {b['replay']:.0%} replay, irregular "
            f"{_pm(a, 'irregular_accuracy')} -> {_pm(b, 'irregular_accuracy')}, control_en "
            f"drift {a['control_en_drift_mean']:+.1%} -> {b['control_en_drift_mean']:+.1%}"
        )

    n = max(e["n"] for m in ends for e in ends[m])
    return {
        "claim": "replaying regular-verb pairs brings regular-verb accuracy back without losing "
        "the irregular verbs",
        "held": held,
        "figures": f"{one('lora')}; {one('full')} (mean ± std over {n} seeds)",
    }


def _spread(per_seed: dict, scale: float, unit: str) -> str:
    """Per-seed mean advantages as 'mean ± std over n seeds (seed s: v, …)'."""
    vals = [v for v in per_seed.values() if v is not None]
    if not vals:
        return "no seed's fronts overlap"
    m, sd = analysis.mean_std(vals)
    each = ", ".join(f"{s}: {scale * v:+.2f}{unit}" if v is not None else f"{s}: no overlap"
                     for s, v in per_seed.items())  # fmt: skip
    return f"per-seed fronts {scale * m:+.2f}{unit} ± {scale * sd:.2f}{unit} over {len(vals)} seeds ({each})"


def frontier_claim(fr: dict | None) -> dict | None:
    """The claim "at matched learning, LoRA forgets less than full fine-tuning": the best
    control_en drift and the best regular-verb accuracy each method reaches with at least
    a given irregular accuracy (its Pareto front of the config means), at the matched
    levels. Held when LoRA forgets less on both, on average over the levels. None
    without both methods' runs."""
    if not fr or not fr.get("configs"):
        return None
    d, r = fr["matched"].get("control_en_drift"), fr["matched"].get("regular_accuracy")
    methods = {c["method"] for c in fr["configs"]}
    if not d or not r or not {"lora", "full"} <= methods:
        return None
    claim = "at matched learning (irregular accuracy), LoRA forgets less than full fine-tuning"
    if d["mean_advantage"] is None or r["mean_advantage"] is None:
        return {"claim": claim, "held": False,
                "figures": "the two methods' irregular accuracies do not overlap, so they "
                           "cannot be compared at matched learning"}  # fmt: skip
    lv, k = d["levels"], len(d["levels"])
    n = max(c["n"] for c in fr["configs"])

    def at(i):
        return (
            f"at {lv[i]:.3f}: drift {d['lora'][i]:+.2%} (LoRA) vs {d['full'][i]:+.2%} (full), "
            f"regular accuracy {r['lora'][i]:.3f} vs {r['full'][i]:.3f}"
        )

    figures = (
        f"the best each method reaches with at least a given irregular accuracy (Pareto fronts "
        f"of the config means, {n} seeds per config), at {k} levels from {lv[0]:.3f} to "
        f"{lv[-1]:.3f}: LoRA's control_en drift is lower at {d['wins']} of {k}, by "
        f"{100 * d['mean_advantage']:+.2f} points on average (full minus LoRA; "
        f"{_spread(d['per_seed_advantage'], 100, ' pts')}); its regular-verb accuracy is "
        f"higher at {r['wins']} of {k}, by {r['mean_advantage']:+.3f} on average "
        f"({_spread(r['per_seed_advantage'], 1, '')}); {at(0)}; {at(k - 1)}"
    )
    held = d["mean_advantage"] > 0 and r["mean_advantage"] > 0
    return {"claim": claim, "held": held, "figures": figures}


def claims_text(exp: dict, root: Path | None = None) -> str:
    return "\n".join(
        f"- {'held' if c['held'] else 'did NOT hold'}: {c['claim']} — {c['figures']}."
        for c in claims(exp, root)
    )


def write_outputs(exp: dict, path: Path | None = None, readme: Path | None = None):
    """experiments.json and its README.md (default: in the data folder)."""
    write_json(path or experiments_file(), exp)
    b = exp["base"]
    el = exp["rank_sweep"].get("elbow") or {}
    lines = [
        "# precomputed/",
        "",
        "Generated by code, never by hand. `base/` is the pretrained MiniGPT "
        "(`python -m minituner pretrain`); `runs/` holds the cached fine-tuning runs and "
        "`experiments.json` their summary. Regenerate runs, summary and this file with:",
        "",
        "```bash",
        REGENERATE,
        "```",
        "",
        f"Base model `{b['model_id']}`, corpus `{b['corpus_version']}`: irregular accuracy "
        f"{b['irregular_accuracy']:.3f}, over-regularized {b['overregularized_rate']:.3f}, regular "
        f"accuracy {b['regular_accuracy']:.3f}, control perplexity en {b['control_en_ppl']:.4f} / "
        f"es {b['control_es_ppl']:.4f}.",
        "",
        "Figures are mean ± sample standard deviation over seeds "
        f"({exp['rank_sweep']['summary'].get('8', {}).get('n', '?')} per row). Drift is the "
        "relative change of control perplexity against the base model; state memory is the "
        "exact bytes of weights, gradients and optimizer state measured after the first step.",
        "",
        findings_table(exp),
        "",
        "The experiment's claims, as measured:",
        "",
        claims_text(exp),
        "",
    ]
    if el:
        lines.append(f"Rank elbow: r = {el.get('elbow')} ({el.get('definition', '')}).")
        lines.append("")
    ls = exp.get("full_lr_search", {})
    if ls.get("runs"):
        lines.append(
            f"Full fine-tuning's learning rate, searched at the same step budget (seed 0); "
            f"best: {ls['best_lr']:g}."
        )
        lines.append("")
        lines.append("| lr | irregular acc. | regular acc. | control_en drift | control_es drift |")
        lines.append("|---|---|---|---|---|")
        for r in ls["runs"]:
            lines.append(
                f"| {r['lr']:g} | {r['irregular_accuracy']:.3f} | {r['regular_accuracy']:.3f} "
                f"| {r['control_en_drift']:+.1%} | {r['control_es_drift']:+.1%} |"
            )
        lines.append("")
    tr = exp.get("truncation")
    if tr:
        lines.append("Truncation of the full fine-tune's update to its best rank-k part:")
        lines.append("")
        lines.append("| k | " + " | ".join(str(k) for k in tr["k"]) + " |")
        lines.append("|---|" + "---|" * len(tr["k"]))
        lines.append(
            "| irregular acc. | " + " | ".join(f"{v:.3f}" for v in tr["irregular_accuracy"]) + " |"
        )
        lines.append(
            "| control_en drift | " + " | ".join(f"{v:+.1%}" for v in tr["control_en_drift"]) + " |"
        )
        lines.append("")
    lines.extend(frontier_lines(exp.get("frontier")))
    lines.extend(replay_lines(exp.get("replay")))
    lines.extend(subspace_record.readme_lines())  # from subspace.json, when there is one
    if exp.get("missing"):
        lines.append(f"Missing runs (not yet computed): {len(exp['missing'])}.")
        lines.append("")
    atomic_write_text(readme or experiments_readme(), "\n".join(lines))


def _pm(e: dict, key: str, pct: bool = False) -> str:
    m, s = e[f"{key}_mean"], e[f"{key}_std"]
    return f"{m:+.1%} ± {s:.1%}" if pct else f"{m:.3f} ± {s:.3f}"


def frontier_lines(fr: dict | None) -> list[str]:
    """The frontier's table for precomputed/README.md (empty without runs)."""
    if not fr or not fr.get("configs"):
        return []
    on_front = {i for m in fr["fronts"]["control_en_drift"].values() for i in m}
    on_reg = {i for m in fr["fronts"]["regular_accuracy"].values() for i in m}
    lines = [
        "Learning-forgetting frontier (`" + REGENERATE + " --only frontier`): each config's "
        "mean ± std over seeds; *front*: on its method's Pareto front of irregular accuracy "
        "against control_en drift (d) and against regular-verb accuracy (r).",
        "",
        "| config | irregular acc. | regular acc. | control_en drift | control_es drift | front |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(fr["configs"]):
        tag = ",".join(t for t, s in (("d", on_front), ("r", on_reg)) if i in s) or "-"
        lines.append(
            f"| {c['label']} | {_pm(c, 'irregular_accuracy')} | {_pm(c, 'regular_accuracy')} "
            f"| {_pm(c, 'control_en_drift', True)} | {_pm(c, 'control_es_drift', True)} | {tag} |"
        )
    lines.append("")
    return lines


def replay_lines(rp: dict | None) -> list[str]:
    """The replay sweep's table for precomputed/README.md (empty without runs)."""
    if not rp or not (rp.get("lora") or rp.get("full")):
        return []
    lines = [
        "Replay of regular-verb cloze pairs (`" + REGENERATE + " --only replay`): the share of "
        "the training pairs that are regular-verb pairs; mean ± std over seeds.",
        "",
        "| method | replay | irregular acc. | regular acc. | control_en drift | control_es drift |",
        "|---|---|---|---|---|---|",
    ]
    for m in ("lora", "full"):
        for e in rp.get(m, []):
            lines.append(
                f"| {e['label']} | {e['replay']:.0%} | {_pm(e, 'irregular_accuracy')} "
                f"| {_pm(e, 'regular_accuracy')} | {_pm(e, 'control_en_drift', True)} "
                f"| {_pm(e, 'control_es_drift', True)} |"
            )
    lines.append("")
    return lines


def precompute(
    seeds: int = 3,
    device: str = "auto",
    log: Callable[[str], None] = print,
    root: Path | None = None,
    only: tuple[str, ...] | None = None,
    shard: tuple[int, int] | None = None,
) -> dict | None:
    """Train what is missing into ``root`` (default: the shipped runs), then write
    experiments.json and README.md. ``only``: train these experiments alone (the
    summary still covers every stored run). ``shard=(k, n)``: train the k-th of every n
    planned runs and write no summary (n such processes share one device; run once
    without a shard afterwards to write it); returns None then.

    Raises:
        ValueError: an unknown experiment or a bad shard.
    """
    from minituner.finetune.result import load_base

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
