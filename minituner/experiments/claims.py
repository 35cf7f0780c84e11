"""The experiment's claims, each checked against the summary
(:class:`~minituner.experiments.record.ExperimentsRecord`): whether it held and the
figures that say so, in words generated from the numbers. The README, the data folder's
README (minituner.experiments.report) and the Forgetting page quote them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minituner.analysis import spectrum as analysis
from minituner.experiments.record import ExperimentsRecord
from minituner.experiments.record_grids import Frontier, GridConfig, Replay
from minituner.experiments.record_sections import MeanStd
from minituner.paths import runs_dir
from minituner.schema import read_record
from minituner.store.records import MetricsRecord


@dataclass(frozen=True)
class Claim:
    """One claim of the experiment, whether the measurements bear it out, and how."""

    claim: str
    held: bool
    figures: str

    def line(self) -> str:
        return f"- {'held' if self.held else 'did NOT hold'}: {self.claim} — {self.figures}."


def pm(ms: MeanStd, pct: bool = False) -> str:
    """A figure over seeds as the tables write it: "0.976 ± 0.006" or "+0.3% ± 0.0%"."""
    return f"{ms.mean:+.1%} ± {ms.std:.1%}" if pct else f"{ms.mean:.3f} ± {ms.std:.3f}"


def _measured_memory(run_id: str, root: Path | None = None) -> dict[str, int]:
    """The measured memory of a stored run, by category (bytes).

    Raises:
        ValueError: a missing or invalid metrics.json (naming it).
    """
    m = read_record((root or runs_dir()) / run_id / MetricsRecord.FILE, MetricsRecord)
    if m.memory is None:
        raise ValueError(f"run {run_id} has no memory figures")
    return m.memory.measured


def claims(exp: ExperimentsRecord, root: Path | None = None) -> list[Claim]:
    """Each claim of the experiment, whether it held, and the figures that say so."""
    base, sweep = exp.base, exp.rank_sweep
    lora, full = sweep.summary[8], sweep.full
    out = []
    held = lora.control_en_drift.mean <= 0.05 and lora.irregular_accuracy.mean >= 0.95
    out.append(Claim(
        "LoRA (r=8 on q,v) fixes the irregular verbs and keeps control perplexity within 5%",
        held,
        f"irregular accuracy {base.irregular_accuracy:.3f} -> "
        f"{lora.irregular_accuracy.mean:.3f} ± {lora.irregular_accuracy.std:.3f}; "
        f"control_en drift {lora.control_en_drift.mean:+.2%}, control_es drift "
        f"{lora.control_es_drift.mean:+.2%}; but regular-verb cloze accuracy falls from "
        f"{base.regular_accuracy:.3f} to {lora.regular_accuracy.mean:.3f}",
    ))  # fmt: skip
    if full:
        out.append(Claim(
            "full fine-tuning drifts",
            full.control_en_drift.mean > 2 * max(lora.control_en_drift.mean, 0.005),
            f"at its best lr ({exp.full_lr_search.best_lr:g}): control_en drift "
            f"{full.control_en_drift.mean:+.1%} ± {full.control_en_drift.std:.1%}, "
            f"control_es {full.control_es_drift.mean:+.1%}, regular-verb cloze accuracy "
            f"{full.regular_accuracy.mean:.3f} (LoRA: {lora.control_en_drift.mean:+.2%}, "
            f"{lora.regular_accuracy.mean:.3f})",
        ))  # fmt: skip
    tr = exp.truncation
    if tr:
        full_acc = tr.irregular_accuracy[-1]
        k_ok = next((k for k, a in zip(tr.k, tr.irregular_accuracy, strict=True)
                     if a >= full_acc - 0.02), "full")  # fmt: skip
        out.append(Claim(
            "the full fine-tune's ΔW is approximately low-rank",
            k_ok != "full" and int(k_ok) <= 8,
            f"keeping only the best rank-{k_ok} part of every layer's update gives irregular "
            f"accuracy {tr.irregular_accuracy[tr.k.index(k_ok)]:.3f} against "
            f"{full_acc:.3f} for the whole update (up to rank 128); mean stable rank of "
            f"ΔW {full.stable_rank_mean.mean if full else float('nan'):.2f}",
        ))  # fmt: skip
    el = sweep.elbow
    if el:
        out.append(Claim(
            "accuracy saturates at a small rank",
            el.elbow_r <= 8,
            f"elbow at r = {el.elbow_r} (best mean {el.best_mean:.3f} at r = "
            f"{el.best_r}; r=1: {el.mean[0]:.3f}, r=64: {el.mean[-1]:.3f})",
        ))  # fmt: skip
    q = exp.forgetting.get("qlora")
    if q:
        lm = _measured_memory(exp.forgetting["lora"].run_ids[0], root)
        qm = _measured_memory(q.run_ids[0], root)
        diff = q.irregular_accuracy.mean - lora.irregular_accuracy.mean
        out.append(Claim(
            "QLoRA (NF4 base) matches LoRA at about a quarter of the base-weight memory",
            abs(diff) <= 0.02,
            f"irregular accuracy {q.irregular_accuracy.mean:.3f} vs "
            f"{lora.irregular_accuracy.mean:.3f} (difference {diff:+.3f}), control_en "
            f"drift {q.control_en_drift.mean:+.2%}; the quantized Linears take "
            f"{qm['nf4']:,} bytes against {lm['weights'] - qm['weights']:,} in fp32 "
            f"({qm['nf4'] / (lm['weights'] - qm['weights']):.3f}x; "
            f"{2 * qm['nf4'] / (lm['weights'] - qm['weights']):.3f}x of bf16); the NF4 base "
            f"alone, no adapter, scores {q.nf4_base.irregular_accuracy:.3f}",
        ))  # fmt: skip
    fc = frontier_claim(exp.frontier)
    if fc:
        out.append(fc)
    rc = replay_claim(exp.replay)
    if rc:
        out.append(rc)
    return out


def replay_claim(rp: Replay | None) -> Claim | None:
    """The claim "replaying regular-verb pairs brings regular-verb accuracy back without
    losing the irregular verbs": for LoRA and full fine-tuning, the largest replay share
    against none. Held when, for both, regular accuracy rises by at least 0.1 and
    irregular accuracy falls by at most 0.02. None without both ends for both methods."""
    if not rp:
        return None
    ends: dict[str, tuple[GridConfig, GridConfig]] = {}
    for m, es in (("lora", rp.lora), ("full", rp.full)):
        if len(es) < 2 or es[0].replay != 0.0:
            return None
        ends[m] = (es[0], es[-1])
    held = all(
        b.stats.regular_accuracy.mean - a.stats.regular_accuracy.mean >= 0.1
        and a.stats.irregular_accuracy.mean - b.stats.irregular_accuracy.mean <= 0.02
        for a, b in ends.values()
    )

    def one(m):
        a, b = ends[m]
        return (
            f"{m}: regular-verb accuracy {pm(a.stats.regular_accuracy)} -> "
            f"{pm(b.stats.regular_accuracy)} at {b.replay:.0%} replay, irregular "
            f"{pm(a.stats.irregular_accuracy)} -> {pm(b.stats.irregular_accuracy)}, control_en "
            f"drift {a.stats.control_en_drift.mean:+.1%} -> {b.stats.control_en_drift.mean:+.1%}"
        )

    n = max(e.stats.n for m in ends for e in ends[m])
    return Claim(
        "replaying regular-verb pairs brings regular-verb accuracy back without losing "
        "the irregular verbs",
        held,
        f"{one('lora')}; {one('full')} (mean ± std over {n} seeds)",
    )


def _spread(per_seed: dict, scale: float, unit: str) -> str:
    """Per-seed mean advantages as 'mean ± std over n seeds (seed s: v, …)'."""
    vals = [v for v in per_seed.values() if v is not None]
    if not vals:
        return "no seed's fronts overlap"
    m, sd = analysis.mean_std(vals)
    each = ", ".join(f"{s}: {scale * v:+.2f}{unit}" if v is not None else f"{s}: no overlap"
                     for s, v in per_seed.items())  # fmt: skip
    return f"per-seed fronts {scale * m:+.2f}{unit} ± {scale * sd:.2f}{unit} over {len(vals)} seeds ({each})"


def frontier_claim(fr: Frontier | None) -> Claim | None:
    """The claim "at matched learning, LoRA forgets less than full fine-tuning": the best
    control_en drift and the best regular-verb accuracy each method reaches with at least
    a given irregular accuracy (its Pareto front of the config means), at the matched
    levels. Held when LoRA forgets less on both, on average over the levels. None
    without both methods' runs."""
    if not fr or not fr.configs:
        return None
    d, r = fr.matched.get("control_en_drift"), fr.matched.get("regular_accuracy")
    methods = {c.method for c in fr.configs}
    if not d or not r or not {"lora", "full"} <= methods:
        return None
    claim = "at matched learning (irregular accuracy), LoRA forgets less than full fine-tuning"
    if d.mean_advantage is None or r.mean_advantage is None:
        return Claim(claim, False, "the two methods' irregular accuracies do not overlap, so "
                                   "they cannot be compared at matched learning")  # fmt: skip
    lv, k = d.levels, len(d.levels)
    n = max(c.stats.n for c in fr.configs)

    def at(i):
        return (
            f"at {lv[i]:.3f}: drift {d.lora[i]:+.2%} (LoRA) vs {d.full[i]:+.2%} (full), "
            f"regular accuracy {r.lora[i]:.3f} vs {r.full[i]:.3f}"
        )

    figures = (
        f"the best each method reaches with at least a given irregular accuracy (Pareto fronts "
        f"of the config means, {n} seeds per config), at {k} levels from {lv[0]:.3f} to "
        f"{lv[-1]:.3f}: LoRA's control_en drift is lower at {d.wins} of {k}, by "
        f"{100 * d.mean_advantage:+.2f} points on average (full minus LoRA; "
        f"{_spread(d.per_seed_advantage, 100, ' pts')}); its regular-verb accuracy is "
        f"higher at {r.wins} of {k}, by {r.mean_advantage:+.3f} on average "
        f"({_spread(r.per_seed_advantage, 1, '')}); {at(0)}; {at(k - 1)}"
    )
    return Claim(claim, d.mean_advantage > 0 and r.mean_advantage > 0, figures)


def claims_text(exp: ExperimentsRecord, root: Path | None = None) -> str:
    return "\n".join(c.line() for c in claims(exp, root))
