"""``python -m minituner …`` — the command line.

Every error a user can cause (bad flag values, missing or corrupt files, unknown run
ids) prints one line starting with ``error:`` and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import DEFAULT_BASE_DIR
from .model import PRESETS


class CLIError(Exception):
    """An error to show the user as one line."""


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


# ---------------------------------------------------------------- pretrain


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pretrain MiniGPT on the verb corpus (writes precomputed/base/)"
    )
    p.add_argument(
        "--preset", default="default", help=f"model size: {', '.join(PRESETS)} (default: default)"
    )
    p.add_argument(
        "--steps", type=_positive_int, default=4000, help="optimizer steps (default: 4000)"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=128, help="lines per batch (default: 128)"
    )
    p.add_argument(
        "--lr", type=_positive_float, default=2e-3, help="peak learning rate (default: 2e-3)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--device", default="auto", help="auto (cuda if present), cuda or cpu (default: auto)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_BASE_DIR,
        help=f"output directory (default: {DEFAULT_BASE_DIR})",
    )
    p.add_argument(
        "--irregular-past-share",
        type=_share,
        default=None,
        help="corpus knob: share of irregular-verb sentences in the past tense",
    )
    p.add_argument(
        "--overregularize-share",
        type=_share,
        default=None,
        help="corpus knob: share of those past forms written over-regularized",
    )
    p.add_argument("--corpus-seed", type=int, default=None, help="corpus generation seed")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args) -> None:
    import dataclasses

    from .corpus import CorpusConfig
    from .pretrain import PretrainConfig, pretrain, write_base
    from .trainutil import ProgressBar

    if args.preset not in PRESETS:
        raise CLIError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    knobs = {
        k: v
        for k, v in {
            "irregular_past_share": args.irregular_past_share,
            "overregularize_share": args.overregularize_share,
            "seed": args.corpus_seed,
        }.items()
        if v is not None
    }
    try:
        cfg = PretrainConfig(
            preset=args.preset,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            corpus=dataclasses.replace(CorpusConfig(), **knobs),
        )
        from .trainutil import resolve_device

        resolve_device(cfg.device)
    except ValueError as e:
        raise CLIError(str(e)) from None
    bar = ProgressBar(cfg.steps, "pretrain")
    model, tok, info = pretrain(cfg, lambda ev: bar.update(ev["step"], f"loss {ev['loss']:.3f}"))
    bar.update(cfg.steps, f"loss {info['final_loss']:.3f}", force=True)
    bar.close()
    print(
        f"trained {model.num_params():,} parameters in {info['train_time_s']:.1f}s on {info['device']}; evaluating…"
    )
    m = write_base(args.out, model, tok, cfg, info)
    _print_table(
        [
            ("irregular_accuracy", m["irregular_accuracy"]),
            ("overregularized_rate", m["overregularized_rate"]),
            ("regular_accuracy", m["regular_accuracy"]),
            ("control_en_ppl", m["control_en_ppl"]),
            ("control_es_ppl", m["control_es_ppl"]),
        ]
    )
    print(f"wrote {args.out}")


def _print_table(rows: list[tuple[str, object]]) -> None:
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{w}}  {v}")


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minituner", description="LoRA and QLoRA from scratch on MiniGPT."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pretrain(sub)
    for add in _EXTRA_COMMANDS:
        add(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # library errors carry user-facing messages
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    return 0
