"""``python -m minituner …`` — the command line.

Every error a user can cause (bad flag values, missing or corrupt files, unknown run
ids) prints one line starting with ``error:`` and exits with status 2; no traceback.
The data (base model, shipped runs, experiments) is found as :mod:`minituner.paths`
says: ``--data DIR`` before the command, else ``$MINITUNER_DATA``, else the checkout's
precomputed/.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from minituner.paths import base_dir, using_data_dir  # no torch at import: Ctrl-C lands in main()


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


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
    from minituner.minigpt.model import PRESETS

    p = sub.add_parser(
        "pretrain", help="pretrain MiniGPT on the verb corpus (writes base/ of the data folder)"
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
        default=None,
        help="output directory (default: base/ of the data folder)",
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
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds something (the shipped base model included)",
    )
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args) -> None:
    import dataclasses

    from minituner.minigpt.corpus import CorpusConfig
    from minituner.minigpt.model import PRESETS
    from minituner.minigpt.pretrain import PretrainConfig, check_out_dir, pretrain, write_base
    from minituner.minigpt.trainutil import ProgressBar

    if args.preset not in PRESETS:
        raise CLIError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    out = args.out if args.out is not None else base_dir()  # no data folder: fail before training
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
        from minituner.minigpt.trainutil import resolve_device

        resolve_device(cfg.device)
        check_out_dir(out, args.force, shipped=args.out is None)  # before any training
    except ValueError as e:
        raise CLIError(str(e)) from None
    bar = ProgressBar(cfg.steps, "pretrain")
    model, tok, info = pretrain(cfg, lambda ev: bar.update(ev["step"], f"loss {ev['loss']:.3f}"))
    bar.update(cfg.steps, f"loss {info['final_loss']:.3f}", force=True)
    bar.close()
    print(
        f"trained {model.num_params():,} parameters in {info['train_time_s']:.1f}s on {info['device']}; evaluating…"
    )
    m = write_base(out, model, tok, cfg, info, force=args.force)
    _print_table(
        [
            ("irregular_accuracy", m["irregular_accuracy"]),
            ("overregularized_rate", m["overregularized_rate"]),
            ("regular_accuracy", m["regular_accuracy"]),
            ("control_en_ppl", m["control_en_ppl"]),
            ("control_es_ppl", m["control_es_ppl"]),
        ]
    )
    print(f"wrote {out}")


def _print_table(rows: list[tuple[str, object]]) -> None:
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{w}}  {v}")


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minituner", description="LoRA and QLoRA from scratch on MiniGPT.")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="data folder holding base/ and runs/ (default: $MINITUNER_DATA, else the "
        "checkout's precomputed/)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pretrain(sub)
    for add in _EXTRA_COMMANDS:
        add(sub)
    return parser


_EXTRA_COMMANDS: list = []


DEBUG_ENV = "MINITUNER_DEBUG"  # set to 1: an unexpected error shows its traceback


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 2 for an error, 130 for Ctrl-C).

    Every failure is one ``error:`` line on stderr: a Ctrl-C at any point (start-up
    included) as well as user errors and failing files.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        lead = "\n" if sys.stderr.isatty() else ""  # end a progress bar's line first
        print(f"{lead}error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _torch_threads()
        with using_data_dir(args.data):
            args.func(args)
    except (CLIError, ValueError, OSError) as e:  # library errors carry user-facing messages
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"error: unexpected {type(e).__name__}: {_one_line(e)} "
            f"(set {DEBUG_ENV}=1 to see the traceback)",
            file=sys.stderr,
        )
        return 2
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _torch_threads() -> None:
    """Honour $MINITUNER_TORCH_THREADS (a whole number, 1 to 1024) for every command.

    Raises:
        CLIError: any other value.
    """
    from minituner.minigpt.trainutil import torch_threads_from_env

    try:
        torch_threads_from_env()
    except ValueError as e:
        raise CLIError(str(e)) from None


# ---------------------------------------------------------------- finetune, runs, complete


def _targets(s: str) -> tuple[str, ...]:
    from minituner.finetune.config import FinetuneConfig

    t = tuple(x.strip() for x in s.split(",") if x.strip())
    if not t:
        raise argparse.ArgumentTypeError("give at least one target, e.g. q,v")
    try:
        FinetuneConfig(targets=t)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return t


def _replay_share(s: str) -> float:
    v = _share(s)
    if v >= 1.0:
        raise argparse.ArgumentTypeError(f"must be below 1 (1 = nothing but replay), got {s}")
    return v


def _teach(s: str) -> str:
    from minituner.minigpt.teach import TeachVerb

    if not s.strip():  # the default: no verb to teach
        return ""
    try:
        return str(TeachVerb.parse(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_finetune(sub) -> None:
    from minituner.finetune.config import DEFAULT_LR, FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune", help="fine-tune the base model (full | lora | qlora) and store the run"
    )
    p.add_argument(
        "--method", choices=("full", "lora", "qlora"), default="lora", help="default: lora"
    )
    p.add_argument(
        "--rank", "-r", type=_positive_int, default=d.r, help=f"LoRA rank r (default: {d.r})"
    )
    p.add_argument(
        "--alpha",
        type=_positive_float,
        default=d.alpha,
        help=f"LoRA alpha; scaling = alpha/r (default: {d.alpha:g})",
    )
    p.add_argument(
        "--targets",
        type=_targets,
        default=d.targets,
        help="comma list of q,k,v,o,fc_in,fc_out or attn, mlp, all (default: q,v)",
    )
    p.add_argument(
        "--dropout", type=float, default=0.0, help="dropout on the LoRA branch (default: 0)"
    )
    p.add_argument(
        "--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r"
    )
    p.add_argument(
        "--steps", type=_positive_int, default=d.steps, help=f"optimizer steps (default: {d.steps})"
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"peak learning rate (default: {DEFAULT_LR})",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d.batch_size,
        help=f"cloze pairs per batch (default: {d.batch_size})",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--replay",
        type=_replay_share,
        default=0.0,
        help="share of the training pairs that are replayed regular-verb pairs, 0 <= s < 1 "
        "(default: 0)",
    )
    p.add_argument(
        "--teach",
        type=_teach,
        default="",
        help='teach a verb of your own, "lemma:past" (e.g. swim:swam): trains on its cloze '
        "pairs (and as many irregular ones), reports its held-out accuracy",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument(
        "--base", type=Path, default=None, help="base model directory (default: base/ of the data)"
    )
    p.add_argument("--force", action="store_true", help="train even if the run is already stored")
    p.add_argument("--no-save", action="store_true", help="do not store the run")
    p.set_defaults(func=_cmd_finetune)


def _final_rows(metrics) -> list[tuple[str, object]]:
    """The final figures of a completed run (a MetricsRecord, or train's metrics dict)."""
    from minituner.store.runs import as_metrics_record

    m = as_metrics_record(metrics)
    figures = m.final.figures_json() if m.final is not None else {}
    rows: list[tuple[str, object]] = [(k, v) for k, v in figures.items() if isinstance(v, float)]
    taught = figures.get("taught_accuracy", {})
    rows += [(f"taught_accuracy ({verb})", v) for verb, v in taught.items()]
    rows += [
        ("trainable_params", f"{m.trainable_params:,}"),
        ("total_params", f"{m.total_params:,}"),
        ("wall_time_s", f"{m.wall_time_s:.1f} ({m.device})"),
    ]
    return rows


def _cmd_finetune(args) -> None:
    from minituner.finetune.config import FinetuneConfig, check_rank
    from minituner.finetune.distributed import from_env
    from minituner.finetune.events import Evaluation, Event, Started, Step
    from minituner.finetune.loop import finetune, load_base
    from minituner.minigpt.trainutil import ProgressBar, resolve_device
    from minituner.store.runs import RunStore

    cfg = FinetuneConfig(
        method=args.method, r=args.rank, alpha=args.alpha, targets=args.targets,
        dropout=args.dropout, rslora=args.rslora, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, replay=args.replay, teach=args.teach,
    )  # fmt: skip
    resolve_device(args.device)
    base = load_base(args.base)
    check_rank(cfg, base.model.config)  # a rank the model cannot take: one line, no training
    if cfg.teach:  # a character the model cannot read: one line, no training
        from minituner.minigpt.teach import TeachVerb, check_teach

        check_teach(TeachVerb.parse(cfg.teach), base.tok)
    store = RunStore()
    if not args.no_save:  # a cache that cannot take the run: say so before training
        _check_writable(store.save_root)
    dist_info = from_env()
    if dist_info.enabled:  # under torchrun: every rank trains, rank 0 reports and stores
        res = finetune(cfg, base, device=args.device)
        if dist_info.is_main:
            print(f"data-parallel over {dist_info.world} processes")
            _report_and_store(res, store, args.no_save)
        import torch.distributed

        torch.distributed.destroy_process_group()
        return
    found = None if args.force else store.lookup(cfg, base)
    if found is not None:
        print(f"already stored: run {found.run_id} ({found.path}); use --force to train again")
        _print_table(_final_rows(found.metrics))
        return
    bar = ProgressBar(cfg.steps, cfg.method)
    state = {"acc": float("nan")}

    def on_event(e: Event) -> None:
        match e:
            case Started():
                print(
                    f"{e.label} on {e.device}: {e.trainable_params:,} trainable of "
                    f"{e.total_params:,} parameters"
                )
            case Evaluation():  # a teach run: the taught verb's held-out accuracy
                state["acc"] = next(iter(e.taught_accuracy.values()), e.irregular_accuracy)
            case Step():
                bar.update(e.step, f"loss {e.loss:.4f} acc {state['acc']:.2f}")

    try:
        res = finetune(cfg, base, device=args.device, callback=on_event)
    finally:
        bar.close()
    _report_and_store(res, store, args.no_save)


def _check_writable(root: Path) -> None:
    """Raises CLIError unless runs can be saved under ``root`` (made if missing)."""
    where = f"the run cache {root} ($MINITUNER_CACHE, default ~/.cache/minituner/runs)"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "it is a file" if root.is_file() else (e.strerror or str(e))
        raise CLIError(f"cannot store runs in {where}: {why}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise CLIError(f"cannot store runs in {where}: it is not writable")


def _report_and_store(res, store, no_save: bool) -> None:
    if not res.ok():
        raise CLIError(f"run {res.status}: {res.message}; nothing was stored")
    _print_table(_final_rows(res.metrics))
    if not no_save:
        info = store.save(res)
        print(f"stored run {info.run_id} in {info.path}")


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the stored runs (the data folder's and the user cache)")
    p.set_defaults(func=_cmd_runs)


def _cmd_runs(args) -> None:
    import warnings

    from minituner.store.runs import RunStore

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = RunStore().list(metrics_only=True)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if not infos:
        print("no runs stored yet: `python -m minituner finetune` trains one")
        return
    print(f"{'run id':<12}  {'where':<7}  {'config':<48}  {'irr.acc':>7}  {'en drift':>8}")
    for i in sorted(infos, key=lambda i: i.label()):
        where = "shipped" if i.shipped else "cache"
        f, label = i.final, i.finetune_config().label()
        if not i.has_weights:  # a frontier/replay grid run: its figures, no model to load
            label += " (figures only)"
        print(
            f"{i.run_id:<12}  {where:<7}  {label:<48}  {f.irregular_accuracy:7.3f}  "
            f"{f.control_en_drift:+8.2%}"
        )


def _add_complete(sub) -> None:
    p = sub.add_parser("complete", help="base vs fine-tuned answer to a cloze prompt")
    p.add_argument("prompt", help='a cloze prompt, e.g. "He __ to school yesterday."')
    p.add_argument("--run", required=True, help="run id (see `python -m minituner runs`)")
    p.add_argument(
        "--candidates",
        default=None,
        help="comma list of answers to score (default: guessed from the prompt, e.g. went,goed)",
    )
    p.add_argument(
        "--base", type=Path, default=None, help="base model directory (default: base/ of the data)"
    )
    p.set_defaults(func=_cmd_complete)


def _cmd_complete(args) -> None:
    from minituner.finetune.loop import load_base
    from minituner.minigpt.corpus import guess_candidates
    from minituner.minigpt.evaluate import candidate_logprobs, check_prompt, complete
    from minituner.store.runs import RunStore, check_run_id

    check_run_id(args.run)
    base = load_base(args.base)
    if args.candidates:
        cands = [c.strip() for c in args.candidates.split(",") if c.strip()]
    else:
        cands = guess_candidates(args.prompt)
    # empty, no blank, unknown characters, too long: one line before any output
    check_prompt(base.tok, args.prompt, base.model.config.block_size, cands)
    store = RunStore()
    info = store.get(args.run)
    tuned = store.load_model(info, base)
    print(f"prompt: {args.prompt}")
    print(f"run {info.label()}")
    for name, model in (("base", base.model), ("fine-tuned", tuned)):
        ans = complete(model, base.tok, args.prompt)
        line = f"  {name:<10}  -> {ans!r}"
        if cands:
            probs = candidate_logprobs(model, base.tok, args.prompt, cands)["probs"]
            line += "   " + "  ".join(f"P({c})={p:.3f}" for c, p in probs.items())
        print(line)


def _add_precompute(sub) -> None:
    p = sub.add_parser(
        "precompute",
        help="train the experiments' runs into precomputed/ (resumable) and write the summary",
    )
    p.add_argument(
        "--seeds", type=_positive_int, default=3, help="seeds per configuration (default: 3)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument(
        "--only",
        type=_experiment_names,
        default=None,
        help="train only these experiments, comma-separated: rank_sweep, targets, forgetting, "
        "frontier, replay (default: all; the summary always covers every stored run)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="K/N",
        help="train only the K-th of every N planned runs (0 <= K < N) and write no summary, "
        "so N processes can share a device; run again without --shard to write the summary",
    )
    p.set_defaults(func=_cmd_precompute)


def _experiment_names(s: str) -> tuple[str, ...]:
    from minituner.experiments.run import EXPERIMENTS

    names = tuple(n.strip() for n in s.split(",") if n.strip())
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown experiment {', '.join(map(repr, bad)) or '(none given)'}; choose from "
            + ", ".join(EXPERIMENTS)
        )
    return names


def _shard(s: str) -> tuple[int, int]:
    k, _, n = s.partition("/")
    try:
        k_, n_ = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {s!r}") from None
    if not (n_ >= 1 and 0 <= k_ < n_):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {s!r}")
    return k_, n_


def _cmd_precompute(args) -> None:
    from minituner.experiments.run import precompute
    from minituner.minigpt.trainutil import resolve_device
    from minituner.paths import experiments_readme

    resolve_device(args.device)
    exp = precompute(
        seeds=args.seeds,
        device=args.device,
        log=lambda s: print(s, flush=True),
        only=args.only,
        shard=args.shard,
    )
    if exp is None:
        print(f"shard {args.shard[0]}/{args.shard[1]} trained; no summary written")
    else:
        print(f"wrote {experiments_readme()}; missing runs: {len(exp['missing'])}")


_EXTRA_COMMANDS += [_add_finetune, _add_runs, _add_complete, _add_precompute]


# ---------------------------------------------------------------- subspace


def _add_subspace(sub) -> None:
    p = sub.add_parser(
        "subspace",
        help="subspace similarity of stored updates (LoRA r=8 vs r=64, LoRA vs full) "
        "into subspace.json of the data folder",
    )
    p.add_argument("--max-i", type=_positive_int, default=8, help="top-i of A (default: 8)")
    p.add_argument("--max-j", type=_positive_int, default=64, help="top-j of B (default: 64)")
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default: <data>/subspace.json)"
    )
    p.set_defaults(func=_cmd_subspace)


def _cmd_subspace(args) -> None:
    from minituner.analysis.subspace_record import conclusion, summary_rows, write_subspace
    from minituner.experiments.subspace import compute_from_store
    from minituner.finetune.loop import load_base
    from minituner.io import read_json
    from minituner.paths import experiments_file, runs_dir
    from minituner.store.runs import RunStore

    base = load_base()
    store = RunStore([runs_dir()], save_root=runs_dir())
    record = compute_from_store(
        store, base, read_json(experiments_file()), args.max_i, args.max_j, log=print
    )
    path = write_subspace(record, args.out)
    print(
        f"{'pair':<34}  {'layers':<6}  {'i':>2}  {'j':>2}  {'phi(1,1)':>8}  {'phi(i,i)':>8}  "
        f"{'phi(i,j)':>8}  {'random(1,1)':>11}  {'random(i,j)':>11}"
    )
    for r in summary_rows(record):
        print(
            f"{r['pair']:<34}  {r['layers']:<6}  {r['i']:>2}  {r['j']:>2}  {r['phi_11']:8.3f}  "
            f"{r['phi_ii']:8.3f}  {r['phi_ij']:8.3f}  {r['random_11']:11.4f}  {r['random_ij']:11.4f}"
        )
    print(conclusion(record) or "")
    print(f"wrote {path}")
    if args.out is None:
        from minituner.analysis.subspace_record import update_readme
        from minituner.paths import experiments_readme

        update_readme(experiments_readme())
        print(f"updated {experiments_readme()}")


_EXTRA_COMMANDS += [_add_subspace]
