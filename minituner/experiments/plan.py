"""The experiments' plan: every run they need, as FinetuneConfigs, by experiment.

* rank sweep: LoRA r in RANKS on q,v and full fine-tuning, over seeds;
* target modules at r=8: TARGET_SETS;
* forgetting: full, LoRA and QLoRA;
* frontier (:func:`frontier_grid`): full fine-tuning over learning rates x step budgets,
  LoRA (q,v) over ranks x learning rates, QLoRA at its defaults;
* replay (:func:`replay_grid`): a share of regular-verb cloze pairs mixed into the
  training data, for LoRA and full fine-tuning at their defaults;
* full fine-tuning's own learning-rate search (:func:`lr_search_plan`), which comes
  first: the sweep's full runs use its best rate (:func:`best_full_lr`).

minituner.experiments.run trains the plan, minituner.experiments.summary reads it back.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from minituner.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from minituner.finetune.result import Base
    from minituner.store.runs import RunStore

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
        "frontier": [c for g in frontier_grid() for c in seeded(g, seeds)],
        "replay": [c for g in replay_grid() for c in seeded(g, seeds)],
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


def seeded(cfg: FinetuneConfig, seeds: int) -> list[FinetuneConfig]:
    """``cfg`` with each seed 0 … seeds-1."""
    return [dataclasses.replace(cfg, seed=k) for k in range(seeds)]


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
