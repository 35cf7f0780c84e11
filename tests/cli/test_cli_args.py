"""The command line's argument types (minituner.cli.args): each bad value is one
``error:`` line naming the flag, exit status 2, and nothing on disk is touched; the
values the types accept, as the commands receive them."""

from __future__ import annotations

import argparse

import pytest
from cli_checks import assert_user_error, run_main, snapshot
from cli_util import run_minituner

from minituner.cli import args

# Each kind of failure once through a real `python -m minituner` process (a flag refused
# by argparse, a CLIError, a ValueError from the library) ...
SUBPROCESS_CASES = [
    (["--preset", "huge"], ["huge", "tiny", "default"]),
    (["--steps", "0"], ["--steps"]),
    (["--batch-size", "-2"], ["--batch-size"]),
    (["--device", "tpu9"], ["tpu9"]),
]
# ... and the other bad values in-process through cli.main (the same code, ~100x faster).
IN_PROCESS_CASES = [
    (["--steps", "-3"], ["--steps"]),
    (["--steps", "ten"], ["--steps"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--lr", "0"], ["--lr"]),
    (["--lr", "nan"], ["--lr"]),
    (["--irregular-past-share", "1.5"], ["--irregular-past-share"]),
    (["--overregularize-share", "-0.5"], ["--overregularize-share"]),
    (["--preset", ""], ["preset"]),
]


def flag_ids(cases):
    return [" ".join(flags) for flags, _ in cases]


@pytest.mark.parametrize(("flags", "needles"), SUBPROCESS_CASES, ids=flag_ids(SUBPROCESS_CASES))
def test_pretrain_bad_flags(base_copy, flags, needles):
    before = snapshot(base_copy.parent)
    r = run_minituner("pretrain", "--out", str(base_copy), "--steps", "1", *flags)
    assert_user_error(r, *needles)
    assert snapshot(base_copy.parent) == before
    assert r.stdout == ""


@pytest.mark.parametrize(("flags", "needles"), IN_PROCESS_CASES, ids=flag_ids(IN_PROCESS_CASES))
def test_pretrain_bad_flags_in_process(base_copy, capsys, flags, needles):
    before = snapshot(base_copy.parent)
    r = run_main(capsys, "pretrain", "--out", str(base_copy), "--steps", "1", *flags)
    assert_user_error(r, *needles)
    assert snapshot(base_copy.parent) == before
    assert r.stdout == ""


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (args.positive_int, "3", 3),
        (args.positive_float, "2e-3", 2e-3),
        (args.lora_alpha, "16", 16.0),
        (args.lora_alpha, "1e4", 1e4),  # alpha/r is bounded with the rank, by FinetuneConfig
        (args.batch_size, "1024", 1024),
        (args.share, "0", 0.0),
        (args.share, "1", 1.0),
        (args.replay_share, "0.25", 0.25),
        (args.targets, "v, q", ("v", "q")),
        (args.teach, "Swim / swam", "swim:swam"),
        (args.teach, "  ", ""),
        (args.experiment_names, "replay,targets", ("replay", "targets")),
        (args.shard, "1/4", (1, 4)),
    ],
)
def test_good_values(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "needle"),
    [
        (args.positive_int, "1.5", "whole number"),
        (args.positive_float, "inf", "positive"),
        (args.lora_alpha, "1e309", "finite"),  # issue 23, item 9
        (args.lora_alpha, "nan", "positive"),
        (args.lora_alpha, "0", "positive"),
        (args.lora_alpha, "x", "expected a number"),
        (args.batch_size, "100000000", "from 1 to 1024"),  # issue 23, item 9
        (args.batch_size, "0", "at least 1"),
        (args.share, "x", "[0, 1]"),
        (args.replay_share, "1", "below 1"),
        (args.targets, ",", "at least one target"),
        (args.targets, "q,zz", "'zz'"),
        (args.teach, "swim", "swim:swam"),
        (args.experiment_names, "nope", "'nope'"),
        (args.experiment_names, ",", "(none given)"),
        (args.shard, "4/4", "0 <= K < N"),
        (args.shard, "a/b", "K/N"),
    ],
)
def test_bad_values_are_argument_type_errors(parse, text, needle):
    with pytest.raises(argparse.ArgumentTypeError, match=None) as e:
        parse(text)
    assert needle in str(e.value) and "\n" not in str(e.value)
