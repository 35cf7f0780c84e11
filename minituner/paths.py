"""Where the library finds its data: one folder laid out like the checkout's precomputed/.

The data folder holds ``base/`` (the pretrained MiniGPT), ``runs/`` (the shipped runs),
``experiments.json`` (+ ``README.md``) and ``scaling/`` (the GPU measurements). It is,
in order:

1. the folder the command line was given (``python -m minituner --data DIR ...``);
2. ``$MINITUNER_DATA``;
3. the checkout's ``precomputed/``, when the package runs from a checkout
   (``minituner/../precomputed`` exists).

An installed package (``pip install .``) has no such folder next to it, so without 1 or 2
:func:`data_dir` raises a ``ValueError`` that says what to set. It is resolved on every
call, never at import, so changing the environment takes effect at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "MINITUNER_DATA"
CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "precomputed"

_chosen: Path | None = None  # set by the command line's --data, for the length of a command


@contextmanager
def using_data_dir(path: str | os.PathLike | None) -> Iterator[None]:
    """Use ``path`` as the data folder inside the ``with`` block (None: change nothing)."""
    global _chosen
    before = _chosen
    if path is not None:
        _chosen = Path(path)
    try:
        yield
    finally:
        _chosen = before


def data_dir() -> Path:
    """The data folder, absolute (see the module docstring for the order).

    Raises:
        ValueError: the folder given by --data or MINITUNER_DATA is not a directory, or
            neither is set and the package does not run from a checkout.
    """
    if _chosen is not None:
        return _existing(_chosen, "--data")
    env = os.environ.get(ENV_VAR)
    if env:
        return _existing(Path(env), ENV_VAR)
    if CHECKOUT_DATA.is_dir():
        return CHECKOUT_DATA
    raise ValueError(
        "no minituner data folder: set MINITUNER_DATA or pass --data to a folder holding "
        "base/ and runs/ (a checkout's precomputed/)"
    )


def _existing(path: Path, source: str) -> Path:
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"{source} names {path}, which is not a directory")
    return path


def base_dir() -> Path:
    """The shipped base model: ``<data>/base``."""
    return data_dir() / "base"


def runs_dir() -> Path:
    """The shipped runs: ``<data>/runs``."""
    return data_dir() / "runs"


def experiments_file() -> Path:
    """The experiments' summary: ``<data>/experiments.json``."""
    return data_dir() / "experiments.json"


def experiments_readme() -> Path:
    """The findings written beside the summary: ``<data>/README.md``."""
    return data_dir() / "README.md"


def scaling_dir() -> Path:
    """The GPU measurements: ``<data>/scaling``."""
    return data_dir() / "scaling"


def is_shipped(run_path: str | os.PathLike) -> bool:
    """Whether a run directory is one of the shipped runs (False when there is no data)."""
    try:
        return Path(run_path).parent == runs_dir()
    except ValueError:
        return False
