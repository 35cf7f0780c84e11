"""What the user types: the command line's argument types and its one-line user error.

Each function here is an argparse ``type=``: it turns one flag's text into a value or
raises ``argparse.ArgumentTypeError`` with a message the parser prints as one ``error:``
line. The rules behind the values (targets, the taught verb, the experiments) belong to
their owners and are asked, not copied. :class:`CLIError` is what a command raises for
any other mistake of the user's; :func:`minituner.cli.main` prints it as one line.
"""

from __future__ import annotations

import argparse


class CLIError(Exception):
    """An error to show the user as one line."""


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def lora_alpha(s: str) -> float:
    """LoRA alpha: positive and finite (:func:`minituner.lora.targets.check_alpha`); the
    bound on alpha/r needs the rank, so FinetuneConfig checks it with ``--rank``."""
    from minituner.lora.targets import check_alpha

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    try:
        check_alpha(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return v


def batch_size(s: str) -> int:
    """A fine-tuning batch size within :func:`minituner.finetune.config.check_batch_size`."""
    from minituner.finetune.config import check_batch_size

    v = positive_int(s)
    try:
        check_batch_size(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return v


def share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def replay_share(s: str) -> float:
    v = share(s)
    if v >= 1.0:
        raise argparse.ArgumentTypeError(f"must be below 1 (1 = nothing but replay), got {s}")
    return v


def targets(s: str) -> tuple[str, ...]:
    """A comma list of LoRA targets, as FinetuneConfig accepts them."""
    from minituner.finetune.config import FinetuneConfig

    t = tuple(x.strip() for x in s.split(",") if x.strip())
    if not t:
        raise argparse.ArgumentTypeError("give at least one target, e.g. q,v")
    try:
        FinetuneConfig(targets=t)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return t


def teach(s: str) -> str:
    """A verb to teach, ``lemma:past``, normalised (empty: none)."""
    from minituner.minigpt.teach import TeachVerb

    if not s.strip():  # the default: no verb to teach
        return ""
    try:
        return str(TeachVerb.parse(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def experiment_names(s: str) -> tuple[str, ...]:
    """A comma list of the experiments precompute knows."""
    from minituner.experiments.plan import EXPERIMENTS

    names = tuple(n.strip() for n in s.split(",") if n.strip())
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown experiment {', '.join(map(repr, bad)) or '(none given)'}; choose from "
            + ", ".join(EXPERIMENTS)
        )
    return names


def shard(s: str) -> tuple[int, int]:
    """``K/N``: the K-th of every N planned runs, 0 <= K < N."""
    k, _, n = s.partition("/")
    try:
        k_, n_ = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {s!r}") from None
    if not (n_ >= 1 and 0 <= k_ < n_):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {s!r}")
    return k_, n_
