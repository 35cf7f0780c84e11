"""The commands that read stored runs: ``runs`` (the list) and ``complete`` (base vs
fine-tuned answer to a cloze prompt).

Each command is a pair: ``*_arguments(parser)`` adds its flags, ``cmd_*(args)`` runs it
(both listed in :data:`minituner.cli.COMMANDS`). A run that cannot be read is a warning
line, never a crash; a prompt the model cannot answer is refused before any output.
"""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_runs(args) -> None:
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


def complete_arguments(p) -> None:
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


def cmd_complete(args) -> None:
    from minituner.finetune.result import load_base
    from minituner.minigpt.candidates import candidates_for
    from minituner.minigpt.evaluate import candidate_logprobs, check_prompt, complete
    from minituner.store.runs import RunStore, check_run_id

    check_run_id(args.run)
    base = load_base(args.base)
    if args.candidates:
        cands = [c.strip() for c in args.candidates.split(",") if c.strip()]
    else:
        guess = candidates_for(args.prompt)  # what the app's Completions page offers
        cands = guess.candidates if guess else []
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
