"""``minituner export RUN DIR --format peft|merged``: a stored run for transformers + PEFT.

``peft`` (the default) writes DIR/base (MiniGPT in transformers' layout) and DIR/adapter
(PEFT's adapter layout); ``merged`` writes one model with the update folded in (the only
choice for a full fine-tune). :mod:`minituner.hf.export` does the work; this module needs
the ``hf`` extra (transformers, PEFT) only when the command runs, and says so plainly
when it is missing.
"""

from __future__ import annotations

from pathlib import Path

from minituner.cli.args import CLIError

FORMATS = ("peft", "merged")


def export_arguments(p) -> None:
    p.add_argument("run", help="run id (see `minituner runs`)")
    p.add_argument("dir", type=Path, help="a new (or empty) folder to write into")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="peft",
        help="peft: base/ + adapter/ for PeftModel.from_pretrained (default); "
        "merged: one transformers model with the update folded in",
    )
    p.add_argument(
        "--base", type=Path, default=None, help="base model directory (default: base/ of the data)"
    )


def cmd_export(args) -> None:
    try:
        from minituner.hf.export import export_run
    except ImportError as e:
        if (e.name or "").partition(".")[0] != "transformers":
            raise
        raise CLIError(
            "export needs transformers (the hf extra): pip install 'minituner[hf]'"
        ) from None
    from minituner.finetune.result import load_base
    from minituner.store.runs import RunStore, check_run_id

    check_run_id(args.run)
    base = load_base(args.base)
    store = RunStore()
    info = store.get(args.run)
    written = export_run(info, base, args.dir, format=args.format, store=store)
    print(f"exported run {info.run_id} ({info.finetune_config().label()}) as {args.format}:")
    for name, path in written.items():
        print(f"  {name:<8} {path}")
    if args.format == "peft":
        print(
            "load it with: import minituner.hf; "
            f"model = AutoModelForCausalLM.from_pretrained('{written['base']}'); "
            f"model = PeftModel.from_pretrained(model, '{written['adapter']}')"
        )
