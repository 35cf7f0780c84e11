"""The commands that fill the data folder from stored runs: ``precompute`` (the
experiments' runs and their summary) and ``subspace`` (subspace similarity of the
stored updates).

Each command is a pair: ``*_arguments(parser)`` adds its flags, ``cmd_*(args)`` runs it
(both listed in :data:`minituner.cli.COMMANDS`). The work itself is
minituner.experiments' and minituner.analysis'; these print what it did.
"""

from __future__ import annotations

from pathlib import Path

from minituner.cli.args import experiment_names, positive_int, shard


def precompute_arguments(p) -> None:
    p.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds per configuration (default: 3)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument(
        "--only",
        type=experiment_names,
        default=None,
        help="train only these experiments, comma-separated: rank_sweep, targets, forgetting, "
        "frontier, replay (default: all; the summary always covers every stored run)",
    )
    p.add_argument(
        "--shard",
        type=shard,
        default=None,
        metavar="K/N",
        help="train only the K-th of every N planned runs (0 <= K < N) and write no summary, "
        "so N processes can share a device; run again without --shard to write the summary",
    )


def cmd_precompute(args) -> None:
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
        print(f"wrote {experiments_readme()}; missing runs: {len(exp.missing or ())}")


def subspace_arguments(p) -> None:
    p.add_argument("--max-i", type=positive_int, default=8, help="top-i of A (default: 8)")
    p.add_argument("--max-j", type=positive_int, default=64, help="top-j of B (default: 64)")
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default: <data>/subspace.json)"
    )


def cmd_subspace(args) -> None:
    from minituner.analysis.subspace_record import conclusion, summary_rows, write_subspace
    from minituner.experiments.record import read_experiments
    from minituner.experiments.subspace import compute_from_store
    from minituner.finetune.result import load_base
    from minituner.paths import experiments_file, runs_dir
    from minituner.store.runs import RunStore

    base = load_base()
    store = RunStore([runs_dir()], save_root=runs_dir())
    record = compute_from_store(
        store, base, read_experiments(experiments_file()), args.max_i, args.max_j, log=print
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
        from minituner.experiments.subspace import update_readme
        from minituner.paths import experiments_readme

        update_readme(experiments_readme())
        print(f"updated {experiments_readme()}")
