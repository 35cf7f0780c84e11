"""The training commands: ``pretrain`` (the base model) and ``finetune`` (a stored run).

Each command is a pair: ``*_arguments(parser)`` adds its flags, ``cmd_*(args)`` runs it
(both listed in :data:`minituner.cli.COMMANDS`). Defaults and choices are read from
their owners (PRESETS, FinetuneConfig, METHODS, DEFAULT_LR). Every check a user can fail
(device, rank, taught verb, output folder, run cache) runs before any training. Heavy
modules are imported inside the functions, so the command line starts without torch.
"""

from __future__ import annotations

from pathlib import Path

from minituner.cli.args import (
    CLIError,
    batch_size,
    lora_alpha,
    positive_float,
    positive_int,
    replay_share,
    share,
    targets,
    teach,
)
from minituner.paths import base_dir

# ---------------------------------------------------------------- pretrain


def pretrain_arguments(p) -> None:
    from minituner.minigpt.model import PRESETS

    p.add_argument(
        "--preset", default="default", help=f"model size: {', '.join(PRESETS)} (default: default)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=4000, help="optimizer steps (default: 4000)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=128, help="lines per batch (default: 128)"
    )
    p.add_argument(
        "--lr", type=positive_float, default=2e-3, help="peak learning rate (default: 2e-3)"
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
        type=share,
        default=None,
        help="corpus knob: share of irregular-verb sentences in the past tense",
    )
    p.add_argument(
        "--overregularize-share",
        type=share,
        default=None,
        help="corpus knob: share of those past forms written over-regularized",
    )
    p.add_argument("--corpus-seed", type=int, default=None, help="corpus generation seed")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds something (the shipped base model included)",
    )


def cmd_pretrain(args) -> None:
    import dataclasses

    from minituner.minigpt.corpus import CorpusConfig
    from minituner.minigpt.model import PRESETS
    from minituner.minigpt.pretrain import PretrainConfig, check_out_dir, pretrain, write_base
    from minituner.minigpt.trainutil import ProgressBar
    from minituner.store.records import ModelFigures

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
    figures = ModelFigures(**{f.name: m[f.name] for f in dataclasses.fields(ModelFigures)})
    print_table(figure_rows(figures))
    print(f"wrote {out}")


# ---------------------------------------------------------------- the final table


def print_table(rows: list[tuple[str, object]]) -> None:
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{w}}  {v}")


def figure_rows(figures) -> list[tuple[str, object]]:
    """The single-number figures of a record (ModelFigures or Figures), under their JSON
    names, in field order; a teach run's taught accuracy by verb after them."""
    rows: list[tuple[str, object]] = [
        (k, v) for k, v in figures.figures_json().items() if isinstance(v, float)
    ]
    taught = getattr(figures, "taught_accuracy", {})
    return rows + [(f"taught_accuracy ({verb})", v) for verb, v in taught.items()]


def final_rows(metrics) -> list[tuple[str, object]]:
    """The final figures of a completed run (a MetricsRecord, or train's metrics dict)."""
    from minituner.store.runs import as_metrics_record

    m = as_metrics_record(metrics)
    rows = figure_rows(m.final) if m.final is not None else []
    return rows + [
        ("trainable_params", f"{m.trainable_params:,}"),
        ("total_params", f"{m.total_params:,}"),
        ("wall_time_s", f"{m.wall_time_s:.1f} ({m.device})"),
    ]


# ---------------------------------------------------------------- finetune


def finetune_arguments(p) -> None:
    from minituner.finetune.config import (
        DEFAULT_DROPOUT,
        DEFAULT_LR,
        MAX_BATCH_SIZE,
        FinetuneConfig,
    )
    from minituner.lora.targets import MAX_SCALING
    from minituner.methods import METHODS

    d = FinetuneConfig()
    p.add_argument("--method", choices=METHODS, default=d.method, help=f"default: {d.method}")
    p.add_argument(
        "--rank", "-r", type=positive_int, default=d.r, help=f"LoRA rank r (default: {d.r})"
    )
    p.add_argument(
        "--alpha",
        type=lora_alpha,
        default=d.alpha,
        help=f"LoRA alpha; scaling = alpha/r, at most {MAX_SCALING:g} (default: {d.alpha:g})",
    )
    p.add_argument(
        "--targets",
        type=targets,
        default=d.targets,
        help="comma list of q,k,v,o,fc_in,fc_out or attn, mlp, all (default: q,v)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=DEFAULT_DROPOUT,
        help=f"dropout on the LoRA branch (default: {DEFAULT_DROPOUT:g})",
    )
    p.add_argument(
        "--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r"
    )
    p.add_argument(
        "--steps", type=positive_int, default=d.steps, help=f"optimizer steps (default: {d.steps})"
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"peak learning rate (default: {DEFAULT_LR})",
    )
    p.add_argument(
        "--batch-size",
        type=batch_size,
        default=d.batch_size,
        help=f"cloze pairs per batch, 1 to {MAX_BATCH_SIZE} (default: {d.batch_size})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    p.add_argument(
        "--replay",
        type=replay_share,
        default=d.replay,
        help="share of the training pairs that are replayed regular-verb pairs, 0 <= s < 1 "
        f"(default: {d.replay:g})",
    )
    p.add_argument(
        "--teach",
        type=teach,
        default=d.teach,
        help='teach a verb of your own, "lemma:past" (e.g. swim:swam): trains on its cloze '
        "pairs (and as many irregular ones), reports its held-out accuracy",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument(
        "--base", type=Path, default=None, help="base model directory (default: base/ of the data)"
    )
    p.add_argument("--force", action="store_true", help="train even if the run is already stored")
    p.add_argument("--no-save", action="store_true", help="do not store the run")


def cmd_finetune(args) -> None:
    from minituner.finetune.config import FinetuneConfig, check_before_training
    from minituner.finetune.distributed import from_env
    from minituner.finetune.events import Evaluation, Event, Started, Step
    from minituner.finetune.loop import finetune
    from minituner.finetune.result import load_base
    from minituner.minigpt.trainutil import ProgressBar, resolve_device
    from minituner.store.runs import RunStore, check_writable

    cfg = FinetuneConfig(
        method=args.method, r=args.rank, alpha=args.alpha, targets=args.targets,
        dropout=args.dropout, rslora=args.rslora, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, replay=args.replay, teach=args.teach,
    )  # fmt: skip
    resolve_device(args.device)
    base = load_base(args.base)
    check_before_training(cfg, base)  # rank, batch memory, taught verb: one line, no training
    store = RunStore()
    if not args.no_save:  # a cache that cannot take the run: say so before training
        check_writable(store.save_root)
    dist_info = from_env()
    if dist_info.enabled:  # under torchrun: every rank trains, rank 0 reports and stores
        res = finetune(cfg, base, device=args.device)
        if dist_info.is_main:
            print(f"data-parallel over {dist_info.world} processes")
            report_and_store(res, store, args.no_save)
        import torch.distributed

        torch.distributed.destroy_process_group()
        return
    found = None if args.force else store.lookup(cfg, base)
    if found is not None:
        print(f"already stored: run {found.run_id} ({found.path}); use --force to train again")
        print_table(final_rows(found.metrics))
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
    report_and_store(res, store, args.no_save)


def report_and_store(res, store, no_save: bool) -> None:
    if not res.ok():
        raise CLIError(f"run {res.status}: {res.message}; nothing was stored")
    print_table(final_rows(res.metrics))
    if not no_save:
        info = store.save(res)
        print(f"stored run {info.run_id} in {info.path}")
