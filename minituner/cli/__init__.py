"""``python -m minituner …`` — the command line: the parser, the command table and the
error policy.

Every error a user can cause (bad flag values, missing or corrupt files, unknown run
ids) prints one line starting with ``error:`` and exits with status 2; no traceback.
The data (base model, shipped runs, experiments) is found as :mod:`minituner.paths`
says: ``--data DIR`` before the command, else ``$MINITUNER_DATA``, else the checkout's
precomputed/.

:data:`COMMANDS` is the one list of commands: name, help line, the function that adds
its flags and the function that runs it (per topic: :mod:`minituner.cli.train`,
:mod:`minituner.cli.runs`, :mod:`minituner.cli.precompute`; the flag types are
:mod:`minituner.cli.args`). Nothing here imports torch, so a Ctrl-C while it loads
still lands in :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minituner.cli import export, precompute, runs, train
from minituner.cli.args import CLIError
from minituner.paths import using_data_dir


@dataclass(frozen=True)
class Command:
    """One command: its name and help line, what adds its flags, what runs it."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], None]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: tuple[Command, ...] = (
    Command(
        "pretrain",
        "pretrain MiniGPT on the verb corpus (writes base/ of the data folder)",
        train.cmd_pretrain,
        train.pretrain_arguments,
    ),
    Command(
        "finetune",
        "fine-tune the base model (full | lora | qlora) and store the run",
        train.cmd_finetune,
        train.finetune_arguments,
    ),
    Command("runs", "list the stored runs (the data folder's and the user cache)", runs.cmd_runs),
    Command(
        "complete",
        "base vs fine-tuned answer to a cloze prompt",
        runs.cmd_complete,
        runs.complete_arguments,
    ),
    Command(
        "export",
        "write a stored run for transformers + PEFT (base/ + adapter/, or one merged model)",
        export.cmd_export,
        export.export_arguments,
    ),
    Command(
        "precompute",
        "train the experiments' runs into precomputed/ (resumable) and write the summary",
        precompute.cmd_precompute,
        precompute.precompute_arguments,
    ),
    Command(
        "subspace",
        "subspace similarity of stored updates (LoRA r=8 vs r=64, LoRA vs full) "
        "into subspace.json of the data folder",
        precompute.cmd_subspace,
        precompute.subspace_arguments,
    ),
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``error:`` line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


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
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        if command.arguments is not None:
            command.arguments(p)
        p.set_defaults(func=command.run)
    return parser


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
        from minituner.minigpt.trainutil import torch_threads_from_env  # torch, after parsing

        torch_threads_from_env()  # a bad $MINITUNER_TORCH_THREADS is one error line too
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
