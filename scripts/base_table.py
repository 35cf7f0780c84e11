"""Print the shipped base model's figures (precomputed/base/metrics.json, read as a
typed BaseMetrics record) as a markdown table for the README:  python scripts/base_table.py"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minituner.minigpt.verbs import IRREGULAR_VERBS, REGULAR_VERBS  # noqa: E402
from minituner.schema import read_record  # noqa: E402
from minituner.store.base_record import BaseMetrics  # noqa: E402

BASE = ROOT / "precomputed" / "base"


def table(m: BaseMetrics) -> str:
    p = m.pretrain
    c = p.corpus
    n_irr = len(IRREGULAR_VERBS) * c.finetune_test_per_verb
    n_reg = len(REGULAR_VERBS) * c.regular_cloze_test_per_verb
    rows = [
        ("parameters", f"{m.num_params:,}"),
        ("pretraining", f"preset `{p.preset}`, {p.steps} steps x {p.batch_size} lines, "
                        f"seed {p.seed}, {m.train_time_s:.0f} s on {m.device}"),
        ("corpus version", f"`{m.corpus_version}`"),
        (f"irregular past, cloze accuracy ({n_irr} held-out prompts)", f"{m.irregular_accuracy:.1%}"),
        ("irregular prompts answered over-regularized (\"goed\", \"they was\")", f"{m.overregularized_rate:.1%}"),
        (f"regular past, cloze accuracy ({n_reg} held-out prompts)", f"{m.regular_accuracy:.1%}"),
        ("control_en perplexity (per character)", f"{m.control_en_ppl:.4f}"),
        ("control_es perplexity (per character)", f"{m.control_es_ppl:.4f}"),
    ]  # fmt: skip
    per_verb = m.irregular_accuracy_per_verb
    rows.append(
        ("irregular accuracy per verb", ", ".join(f"{v} {a:.0%}" for v, a in per_verb.items()))
    )
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else BASE / "metrics.json"
    print(table(read_record(path, BaseMetrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
