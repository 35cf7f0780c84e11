"""Give stored runs the id of their normalised configuration (issue 13).

A run id is ``runs.run_id()``: the SHA-256 of the fine-tuning config dict, the base
model id and the corpus version. Since FinetuneConfig normalises its targets (``all`` is
stored as q,k,v,o,fc_in,fc_out, ``mlp`` as fc_in,fc_out), a run stored with ``["all"]``
or ``["mlp"]`` has a new id. For each such run this script

1. replaces the old id by the new one in the data folder's experiments.json and
   README.md (and in the repository's README.md, for the checkout's precomputed/);
2. rewrites the run's config.json (``run_id`` and ``finetune.targets``) and the run id
   recorded in adapter_config.json;
3. renames the run directory to the new id.

In that order, so a run interrupted at any point is finished by the next one; a
second run finds nothing to do. ``--check`` only lists what would change (exit 1 if
anything would). ``--cache`` also migrates the user cache (there is nothing to
rewrite beside its runs).

    python scripts/migrate_run_ids.py [--data DIR] [--cache] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minituner.finetune.config import FinetuneConfig  # noqa: E402
from minituner.io import atomic_write_text, write_json  # noqa: E402
from minituner.paths import data_dir, using_data_dir  # noqa: E402
from minituner.store.runs import RUN_ID_RE, default_cache_dir, run_id  # noqa: E402

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Move:
    path: Path  # the run directory as it is now
    old: str
    new: str
    targets: list[str] | None  # normalised targets to write (None: full fine-tuning)


def planned_moves(root: Path) -> list[Move]:
    """The runs under ``root`` whose directory name is not the id of their normalised
    config. Directories that are no runs, or whose config cannot be read, are left alone.

    Raises:
        ValueError: two runs that would get the same id.
    """
    moves: list[Move] = []
    if not root.is_dir():
        return moves
    for path in sorted(root.iterdir()):
        if not (RUN_ID_RE.fullmatch(path.name) and (path / "config.json").is_file()):
            continue
        try:
            cfg_json = json.loads((path / "config.json").read_text(encoding="utf-8"))
            cfg = FinetuneConfig.from_dict(cfg_json["finetune"])
            new = run_id(cfg, cfg_json["base_model_id"], cfg_json["corpus_version"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if new != path.name:
            if (root / new).exists():
                raise ValueError(f"{path} would become {root / new}, which already exists")
            targets = list(cfg.targets) if "targets" in cfg_json["finetune"] else None
            moves.append(Move(path, path.name, new, targets))
    return moves


def replace_ids(file: Path, moves: list[Move]) -> bool:
    """Replace every old id (as a whole word) by its new id in a text file; True if the
    file changed."""
    if not file.is_file() or not moves:
        return False
    text = file.read_text(encoding="utf-8")
    table = {m.old: m.new for m in moves}
    new_text = re.sub(r"\b[0-9a-f]{12}\b", lambda m: table.get(m[0], m[0]), text)
    if new_text == text:
        return False
    atomic_write_text(file, new_text)
    return True


def rewrite_run(move: Move) -> None:
    """config.json and adapter_config.json of the run: the new id, normalised targets."""
    file = move.path / "config.json"
    cfg = json.loads(file.read_text(encoding="utf-8"))
    cfg["run_id"] = move.new
    if move.targets is not None:
        cfg["finetune"]["targets"] = move.targets
    write_json(file, cfg)
    adapter = move.path / ADAPTER_CONFIG
    if adapter.is_file():
        meta = json.loads(adapter.read_text(encoding="utf-8"))
        if isinstance(meta.get("config"), dict) and meta["config"].get("run_id") == move.old:
            meta["config"]["run_id"] = move.new
            atomic_write_text(adapter, json.dumps(meta, indent=2, allow_nan=False) + "\n")


def migrate(root: Path, text_files: list[Path], check: bool = False) -> list[Move]:
    """Migrate the runs under ``root`` (see the module docstring); returns the moves."""
    moves = planned_moves(root)
    for m in moves:
        print(f"{'would move' if check else 'moving'} {m.path} -> {m.new}")
    if check or not moves:
        return moves
    for f in text_files:
        if replace_ids(f, moves):
            print(f"rewrote the run ids in {f}")
    for m in moves:
        rewrite_run(m)
        m.path.rename(root / m.new)
    return moves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: as minituner)")
    ap.add_argument("--cache", action="store_true", help="migrate the user cache's runs too")
    ap.add_argument("--check", action="store_true", help="only list what would change")
    args = ap.parse_args(argv)
    try:
        with using_data_dir(args.data):
            data = data_dir()
        texts = [data / "experiments.json", data / "README.md"]
        if data == (ROOT / "precomputed").resolve():  # the repository's README shows them
            texts.append(ROOT / "README.md")
        moves = migrate(data / "runs", texts, args.check)
        if args.cache:
            moves += migrate(default_cache_dir(), [], args.check)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not moves:
        print("every run already has the id of its normalised config")
    return 1 if args.check and moves else 0


if __name__ == "__main__":
    sys.exit(main())
