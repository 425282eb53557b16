"""confidant split-data: write a built-in data set as one file per party, to try the
own-data path (``run_parties.py PROTOCOL --data-dir DIR``, ``confidant party --data FILE``)
before using real files. Writes DIR/<party>.csv|.npz|.parquet and DIR/study.json."""

from __future__ import annotations

import argparse

DESCRIPTION = __doc__


def configure(parser: argparse.ArgumentParser) -> None:
    from learning.datasets import SPLITS, TABLES

    parser.add_argument("--dataset", default="digits", choices=TABLES)
    parser.add_argument("--parties", required=True,
                        help="the parties' names, comma-separated (e.g. client01,client02,...), "
                             "or a number N with --prefix")
    parser.add_argument("--prefix", default="client",
                        help="with --parties N: names PREFIX01..PREFIXN (two digits, as "
                             "run_parties.py names FedAvg clients)")
    parser.add_argument("--split", default="iid", choices=SPLITS,
                        help="iid, or noniid: Dirichlet label skew")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet skew of --split noniid")
    parser.add_argument("--format", default="csv", choices=["csv", "npz", "parquet"])
    parser.add_argument("--queries", type=int, default=0,
                        help="hold out this many rows as the querying party's unlabelled queries "
                             "(CaPC): written as QUERIER-queries.FORMAT, without labels")
    parser.add_argument("--querier", help="with --queries: the querying party (default: the first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="directory to write")


def run(args: argparse.Namespace) -> int:
    from learning.data_files import DataFileError, split_to_files
    from learning.datasets import DatasetError

    if args.parties.isdigit():
        names = [f"{args.prefix}{i:02d}" for i in range(1, int(args.parties) + 1)]
    else:
        names = [n.strip() for n in args.parties.split(",") if n.strip()]
    if len(names) < 1 or len(set(names)) != len(names):
        print("confidant split-data: --parties needs distinct names (or a number)")
        return 2
    try:
        files = split_to_files(args.dataset, names, args.out, how=args.split, alpha=args.alpha,
                               seed=args.seed, fmt=args.format, queries=args.queries,
                               querier=args.querier or names[0])
    except (DataFileError, DatasetError) as e:
        print(f"confidant split-data: {e}")
        return 2
    for name, path in files.items():
        print(f"{name}: {path}")
    print(f"study: {args.out}/study.json")
    return 0
