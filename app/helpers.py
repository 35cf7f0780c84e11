"""Pure helpers for the pages: the Train page's URL parameters, run tables and labels.

No Streamlit here, so these are tested directly (tests/test_app.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from app.format import breakdown_table, format_bytes, md_code
from minituner.experiments.record_sections import MeanStd
from minituner.finetune.config import DEFAULT_LR, FinetuneConfig, check_rank, max_rank
from minituner.methods import METHODS
from minituner.store.base_record import BaseMetrics
from minituner.store.runs import RunInfo

TARGETS = ("q", "k", "v", "o", "fc_in", "fc_out")
METHOD_NAMES = {"full": "Full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
MAX_STEPS = 2000
MAX_R = 256  # the most the Train page offers; a smaller model caps it (rank_limit)
# The Train page's number ranges: a URL value outside them is reported and the default
# is used instead (never clamped silently).
RANGES = {"r": (1, MAX_R), "steps": (1, MAX_STEPS), "seed": (0, 2**31 - 1),
          "alpha": (0.5, 1024.0), "lr": (1e-6, 1.0)}  # fmt: skip


def base_model_config():
    """The GPTConfig of the data folder's base model, or None when it cannot be read
    (the page that needs the model reports that)."""
    from minituner.io import read_json
    from minituner.minigpt.model import GPTConfig
    from minituner.paths import base_dir

    try:  # read_json: a regular file of bounded size and depth, or ValueError
        return GPTConfig.from_dict(read_json(base_dir() / "config.json")["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rank_limit(model_config=None) -> int:
    """The largest rank r the Train page offers: what every targetable layer of the model
    takes (minituner.finetune.config.max_rank), at most MAX_R. ``model_config``: the base model's
    GPTConfig (default: read from the data folder)."""
    model_config = model_config if model_config is not None else base_model_config()
    if model_config is None:
        return MAX_R
    return min(MAX_R, max_rank(model_config))


def default_choices() -> dict:
    d = FinetuneConfig()
    return {
        "method": d.method,
        "r": d.r,
        "alpha": float(d.alpha),
        "targets": list(d.targets),
        "lr": float(DEFAULT_LR[d.method]),
        "steps": d.steps,
        "seed": d.seed,
    }


def _first(v):
    return v[-1] if isinstance(v, (list, tuple)) else v


def parse_train_params(
    qp: Mapping[str, object], max_r: int | None = None
) -> tuple[dict, list[str]]:
    """The Train page's choices from URL query parameters.

    Returns ``(choices, problems)``: only the keys present and valid are in ``choices``;
    each unusable value (not a number, or outside the page's range: RANGES, and for r
    ``max_r``, default :func:`rank_limit`) gives a message in ``problems`` (the page
    shows them and uses the default instead), never an exception. The messages are
    Markdown: each value from the URL is quoted as code (app.format.md_code), so a
    shared link cannot put a link, an image or styled text on the page.
    """
    out: dict = {}
    problems: list[str] = []
    ranges = {**RANGES, "r": (1, max_r if max_r is not None else rank_limit())}

    def bad(key, value, why):
        problems.append(
            f"URL parameter {md_code(f'{key}={value!r}')} ignored (the default is used): {why}"
        )

    if "method" in qp:
        v = str(_first(qp["method"])).strip().lower()
        if v in METHODS:
            out["method"] = v
        else:
            bad("method", v, f"choose one of {', '.join(METHODS)}")
    for key in ("r", "steps", "seed"):
        lo, hi = ranges[key]
        if key in qp:
            v = _first(qp[key])
            try:
                n = int(str(v))
            except ValueError:
                bad(key, v, "not a whole number")
                continue
            if lo <= n <= hi:
                out[key] = n
            else:
                bad(key, v, f"must be between {lo} and {hi}")
    for key in ("alpha", "lr"):
        if key in qp:
            v = _first(qp[key])
            try:
                x = float(str(v))
            except ValueError:
                bad(key, v, "not a number")
                continue
            lo, hi = ranges[key]
            if math.isfinite(x) and lo <= x <= hi:
                out[key] = x
            else:
                bad(key, v, f"must be between {lo:g} and {hi:g}")
    if "targets" in qp:
        v = qp["targets"]
        items = v if isinstance(v, (list, tuple)) else [v]
        names = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
        unknown = [t for t in names if t not in TARGETS]
        if unknown:
            listed = md_code(", ".join(unknown))
            bad("targets", ",".join(names), f"unknown {listed}; choose from {', '.join(TARGETS)}")
        elif names:
            out["targets"] = [t for t in TARGETS if t in names]
        else:
            bad("targets", "", "empty")
    return out, problems


def choices_to_params(choices: Mapping) -> dict[str, str]:
    """The URL query parameters for the Train page's choices (what a shared link holds)."""
    p = {
        "method": str(choices["method"]),
        "lr": f"{float(choices['lr']):g}",
        "steps": str(int(choices["steps"])),
        "seed": str(int(choices["seed"])),
    }
    if choices["method"] != "full":
        p["r"] = str(int(choices["r"]))
        p["alpha"] = f"{float(choices['alpha']):g}"
        p["targets"] = ",".join(choices["targets"])
    return p


def config_from_choices(choices: Mapping, model_config=None) -> FinetuneConfig:
    """FinetuneConfig for the choices, checked against the base model too (a rank its
    layers cannot take; ``model_config`` default: the data folder's base model).

    Raises:
        ValueError: (readable) for bad settings.
    """
    kw = dict(
        method=choices["method"],
        lr=float(choices["lr"]),
        steps=int(choices["steps"]),
        seed=int(choices["seed"]),
    )
    if choices["method"] != "full":
        kw.update(
            r=int(choices["r"]), alpha=float(choices["alpha"]), targets=tuple(choices["targets"])
        )
    cfg = FinetuneConfig(**kw)
    model_config = model_config if model_config is not None else base_model_config()
    if model_config is not None:
        check_rank(cfg, model_config)
    return cfg


# ---------------------------------------------------------------------- runs
def run_label(info: RunInfo) -> str:
    """A short label for menus and legends, starting with the method."""
    f = info.finetune_config()
    core = "full" if f.method == "full" else f"{f.method} r={f.r} {','.join(f.targets)}"
    taught = f" · teach {f.teach}" if f.teach else ""  # a lesson of the Teach page
    return f"{core}{taught} · {f.steps} steps · lr {f.lr:g} · seed {f.seed} · {info.run_id[:6]}"


def short_label(info: RunInfo) -> str:
    """The run in a few words for a metric or a narrow legend: method, r, seed and the
    id's first characters ("lora r=8 · seed 0 · 0e9eca")."""
    f = info.finetune_config()
    core = "full" if f.method == "full" else f"{f.method} r={f.r}"
    taught = f" · teach {f.teach.split(':')[0]}" if f.teach else ""
    return f"{core}{taught} · seed {f.seed} · {info.run_id[:6]}"


def pct(x) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def mean_std(ms: MeanStd, signed: bool = False) -> str:
    """ "12.3% ± 0.4" from a figure's mean and std over seeds."""
    m, sd = 100 * ms.mean, 100 * ms.std
    return f"{m:+.2f}% ± {sd:.2f}" if signed else f"{m:.1f}% ± {sd:.1f}"


def points(x, base=None) -> str:
    """A change of a rate in percentage points ("-25.0 pts"); "–" without a base."""
    return "–" if x is None or base is None else f"{100 * (float(x) - float(base)):+.1f} pts"


def final_figures_rows(
    runs: Iterable[RunInfo], base_metrics: BaseMetrics | None = None
) -> list[dict]:
    """One row of final figures per run (and the base model first, when given).

    Regular-verb accuracy and its change against the base model sit next to irregular
    accuracy and the drift (issue 24: the cost of the fine-tune is shown where its gain
    is); the change is "–" without the base model's figures."""
    rows = []
    b = base_metrics
    if b is not None:
        rows.append(
            {
                "run": "base model (no fine-tuning)",
                "method": "base",
                "irregular acc.": pct(b.irregular_accuracy),
                "regular acc.": pct(b.regular_accuracy),
                "regular acc. change": points(b.regular_accuracy, b.regular_accuracy),
                "EN drift": "0.0%",
                "ES drift": "0.0%",
                "over-regularized": pct(b.overregularized_rate),
                "control EN ppl": f"{b.control_en_ppl:.4f}",
                "control ES ppl": f"{b.control_es_ppl:.4f}",
                "trainable params": "–",
                "final loss": "–",
                "time (s)": "–",
                "device": b.device,
            }
        )
    for r in runs:
        m, f = r.metrics, r.final
        rows.append(
            {
                "run": run_label(r),
                "method": r.method,
                "irregular acc.": pct(f.irregular_accuracy),
                "regular acc.": pct(f.regular_accuracy),
                "regular acc. change": points(
                    f.regular_accuracy, b.regular_accuracy if b is not None else None
                ),
                "EN drift": f"{100 * f.control_en_drift:+.2f}%",
                "ES drift": f"{100 * f.control_es_drift:+.2f}%",
                "over-regularized": pct(f.overregularized_rate),
                "control EN ppl": f"{f.control_en_ppl:.4f}",
                "control ES ppl": f"{f.control_es_ppl:.4f}",
                "trainable params": f"{m.trainable_params:,}",
                "final loss": f"{m.curves.loss[-1]:.4f}",
                "time (s)": f"{m.wall_time_s:.1f}",
                "device": m.device,
            }
        )
    return rows


def distance_to_defaults(info: RunInfo) -> tuple:
    """How far a run's settings are from FinetuneConfig's defaults for its method (a
    sort key: 0s first), so menus open on the run a newcomer would train."""
    f = info.finetune_config().to_dict()
    want = FinetuneConfig(method=f["method"]).to_dict()
    keys = ("targets", "r", "alpha", "steps", "seed", "lr")
    return tuple(int(k in want and f.get(k) != want[k]) for k in keys)


def one_per_method(runs: Iterable[RunInfo], preferred: Iterable[str] = ()) -> list[RunInfo]:
    """A run of each method: the first of ``preferred`` (run ids) of that method, else the
    one closest to the defaults."""
    runs = list(runs)
    by_id = {r.run_id: r for r in runs}
    chosen: dict[str, RunInfo] = {}
    for rid in preferred:
        r = by_id.get(rid)
        if r is not None and r.method not in chosen:
            chosen[r.method] = r
    for r in sorted(runs, key=distance_to_defaults):
        chosen.setdefault(r.method, r)
    return [chosen[m] for m in METHODS if m in chosen]


def memory_rows(runs: Iterable[RunInfo]) -> list[dict]:
    """breakdown_table rows for each run's predicted and measured memory, the source
    renamed "<method> predicted" / "<method> measured"."""
    rows = []
    for r in runs:
        mem = r.metrics.memory
        if mem is None:
            continue
        for row in breakdown_table(mem.predicted, mem.measured):
            rows.append({**row, "source": f"{r.method} {row['source']}"})
    return rows


def bytes_table(rows: Iterable[Mapping]) -> list[dict]:
    """Wide table (one row per source, one column per category) from breakdown rows."""
    rows = list(rows)
    table: dict[str, dict] = {}
    for row in rows:
        t = table.setdefault(row["source"], {"": row["source"]})
        t[row["category"]] = format_bytes(row["bytes"])
    for src, t in table.items():
        t["total"] = format_bytes(sum(r["bytes"] for r in rows if r["source"] == src))
    return list(table.values())


def matched_answer(matched: Mapping) -> str | None:
    """The Forgetting page's first sentence (Markdown, every number from the record):
    does LoRA forget less than full fine-tuning at matched learning? ``matched``: the
    experiments record's frontier.matched (``control_en_drift`` and ``regular_accuracy``
    entries: the best each method reaches with at least each level of irregular
    accuracy). Held, as in minituner.experiments.claims.frontier_claim, when LoRA is
    ahead on both on average. The numbers are written as the table beside it writes
    them (accuracies "76.0%", drift "+0.17%", differences in percentage points). None
    without both entries."""
    d, r = matched.get("control_en_drift"), matched.get("regular_accuracy")
    if d is None or r is None:
        return None
    if d.mean_advantage is None or r.mean_advantage is None or not d.levels:
        return (
            "**At matched learning, LoRA and full fine-tuning cannot be compared:** the "
            "irregular-verb accuracies their runs reach do not overlap."
        )
    held = d.mean_advantage > 0 and r.mean_advantage > 0
    k = len(d.levels)

    def part(m, what, lower_word, higher_word, digits):  # what: "LoRA's drift", ...
        ahead = m.mean_advantage > 0  # LoRA forgets less on this measure
        word = lower_word if ahead else higher_word
        n = sum(1 for a in m.advantage if (a > 0 if ahead else a < 0))
        return (
            f"{what} is {word} by {abs(100 * m.mean_advantage):.{digits}f} percentage "
            f"points on average ({word} at {n} of {k})"
        )

    verdict = "Yes" if held else "No"
    claim = "forgets less" if held else "does not forget less"
    return (
        f"**{verdict}: at matched learning, LoRA {claim} than full fine-tuning** — over "
        f"{k} levels of irregular-verb accuracy from {pct(d.levels[0])} to "
        f"{pct(d.levels[-1])}, {part(d, 'LoRA’s control English drift', 'lower', 'higher', 2)}"
        f" and {part(r, 'its regular-verb accuracy', 'higher', 'lower', 1)}."
    )
