"""The experiments behind the explorer's charts, and ``precompute``.

* rank sweep: LoRA r in {1, 2, 4, 8, 16, 32, 64} on q,v and full fine-tuning, over seeds;
* target modules at r=8: q,v / q,k,v,o / mlp / all;
* forgetting: full, LoRA and QLoRA with their control perplexity over the steps;
* truncation: W + ΔW_k (best rank-k part of a full fine-tune's update) for k = 1…32, full.

Each run goes through the run store, so ``precompute`` is resumable: a run already
stored is skipped. ``summarize`` reads the stored runs (it trains nothing) and produces
``precomputed/experiments.json`` and the findings table of ``precomputed/README.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from . import analysis
from .config import FinetuneConfig
from .evaluate import evaluate
from .io import atomic_write_text, write_json
from .paths import experiments_file, experiments_readme, runs_dir
from .records import MetricsRecord, read_record
from .runs import RunInfo, RunStore
from .train import Base, finetune

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
    return {"rank_sweep": sweep + full, "targets": targets, "forgetting": qlora}


def run_all(
    store: RunStore,
    base: Base,
    seeds: int = 3,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> list[RunInfo]:
    """Train every planned run that is not in the store yet (resumable)."""
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
    for cfgs in plan(seeds, full_lr).values():
        for c in cfgs:
            todo.setdefault(c.label(), c)
    for i, cfg in enumerate(todo.values(), 1):
        info = _train_or_get(store, base, cfg, device, log, f"[{i}/{len(todo)}]")
        if info:
            out.append(info)
    return out


def _train_or_get(store, base, cfg, device, log, tag) -> RunInfo | None:
    found = store.lookup(cfg, base)
    if found is not None:
        log(f"{tag} stored   {found.label()}")
        return found
    res = finetune(cfg, base, device=device)
    if not res.ok():
        log(f"{tag} {res.status}: {cfg.label()}: {res.message}")
        return None
    info = store.save(res)
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
    if truncation is not None:
        out["truncation"] = truncation
    out["missing"] = sorted(set(missing))
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
    return out


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
    if exp.get("missing"):
        lines.append(f"Missing runs (not yet computed): {len(exp['missing'])}.")
        lines.append("")
    atomic_write_text(readme or experiments_readme(), "\n".join(lines))


def precompute(
    seeds: int = 3,
    device: str = "auto",
    log: Callable[[str], None] = print,
    root: Path | None = None,
) -> dict:
    """Train what is missing into ``root`` (default: the shipped runs), then write
    experiments.json and README.md."""
    from .train import load_base

    base = load_base()
    root = root or runs_dir()
    store = RunStore([root], save_root=root)
    run_all(store, base, seeds, device, log)
    full0 = store.lookup(FinetuneConfig(method="full", lr=best_full_lr(store, base), seed=0), base)
    trunc = truncation_test(store, base, full0) if full0 else None
    exp = summarize(store, base, seeds, trunc)
    write_outputs(exp)
    return exp
