"""`confidant privacy`: the PATE privacy cost of a CaPC configuration.

Prints epsilon after ``--queries`` queries, data-independent (what a
deployment may claim), and, when a vote profile is given, the data-dependent
expected cost for that profile (a simulation figure: computed from votes that
no one sees in CaPC).  ``--plot PATH`` writes epsilon against the number of
queries as a PNG.

Vote profiles (data-dependent figures only):
  --votes-profile unanimous   every teacher votes the same class
  --votes-profile split       teachers split evenly between two classes
  --votes-profile FILE.npy    a histogram (classes,) used for every query, or
                              one row per query (queries, classes)
  --concentration P           a fraction P of the teachers votes the top class,
                              the rest spread evenly over the other classes

Parameter guidance (--suggest --target-epsilon E): for --teachers and --queries planned,
Confident-GNMax settings with the answer cap (run_parties.py capc --max-answers) that
keeps the data-independent epsilon within E.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from privacy.pate import (
    DEFAULT_ORDERS,
    PateAccountant,
    PateError,
    epsilon_curve,
    epsilon_from_rdp,
    gnmax_logq,
    gnmax_rdp_data_independent,
    gnmax_rdp_from_logq,
    threshold_log_pr_answered,
    threshold_rdp_data_independent,
)


class PrivacyCliError(ValueError):
    """Bad command-line input for `confidant privacy`."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("--teachers", type=int, default=250, help="number of teachers (250)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (10)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Confident-GNMax threshold T; omit (with --sigma1) for plain GNMax")
    parser.add_argument("--sigma1", type=float, default=None, help="threshold noise sigma_1")
    parser.add_argument("--sigma2", type=float, default=None, help="GNMax noise sigma_2")
    parser.add_argument("--delta", type=float, default=1e-6, help="target delta (1e-6)")
    parser.add_argument("--queries", type=int, default=1000, help="number of queries (1000)")
    parser.add_argument("--answered-fraction", type=float, default=1.0,
                        help="data-independent realized cost if this fraction of queries "
                             "answered (public in CaPC); 1.0 = worst case")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--votes-profile", default=None,
                         help="unanimous | split | FILE.npy (data-dependent figures)")
    profile.add_argument("--concentration", type=float, default=None,
                         help="fraction of teachers voting the top class (data-dependent)")
    parser.add_argument("--plot", type=Path, default=None, help="write epsilon vs queries PNG")
    parser.add_argument("--suggest", action="store_true",
                        help="suggest (threshold, sigma1, sigma2, answer cap) for --teachers, "
                             "--queries and --target-epsilon")
    parser.add_argument("--target-epsilon", type=float, default=None,
                        help="with --suggest: the data-independent epsilon to stay within")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (PrivacyCliError, PateError) as exc:
        print(f"confidant privacy: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.suggest:
        return _suggest(args)
    if args.sigma2 is None:
        raise PrivacyCliError("--sigma2 is required (or --suggest --target-epsilon E)")
    confident = _check(args)
    orders = DEFAULT_ORDERS
    n = args.queries
    step2 = gnmax_rdp_data_independent(args.sigma2, orders)
    step1 = threshold_rdp_data_independent(args.sigma1, orders) if confident else 0.0 * step2
    ks = np.arange(1, n + 1, dtype=np.float64)[:, None]
    worst = ks * (step1 + step2)
    curves: dict[str, NDArray[np.float64]] = {"data-independent, worst case": worst}
    rows = [("data-independent, worst case (all answered)", worst[-1])]
    if confident and args.answered_fraction < 1.0:
        realized = ks * (step1 + args.answered_fraction * step2)
        curves[f"data-independent, {args.answered_fraction:.0%} answered"] = realized
        rows.append((f"data-independent, {args.answered_fraction:.0%} answered", realized[-1]))

    votes = _profile(args)
    pr_answered = None
    if votes is not None:
        per_query, pr = _data_dependent_costs(votes, args, confident)
        dep = np.cumsum(per_query, axis=0)
        curves["DATA-DEPENDENT expected (simulation)"] = dep
        rows.append(("DATA-DEPENDENT expected (simulation only)", dep[-1]))
        pr_answered = float(pr.mean()) if confident else None

    _print_table(args, confident, rows, pr_answered)
    if args.plot is not None:
        _plot(args, curves)
        print(f"plot written to {args.plot}")
    return 0


def _check(args: argparse.Namespace) -> bool:
    if (args.threshold is None) != (args.sigma1 is None):
        raise PrivacyCliError("--threshold and --sigma1 go together (Confident-GNMax); "
                              "give both, or neither for plain GNMax")
    if args.queries < 1:
        raise PrivacyCliError(f"--queries must be >= 1, got {args.queries}")
    if args.teachers < 1 or args.classes < 2:
        raise PrivacyCliError("--teachers must be >= 1 and --classes >= 2")
    if not 0.0 <= args.answered_fraction <= 1.0:
        raise PrivacyCliError("--answered-fraction must be in [0, 1]")
    if not 0.0 < args.delta < 1.0:
        raise PrivacyCliError(f"--delta must be in (0, 1), got {args.delta}")
    return args.threshold is not None


def _profile(args: argparse.Namespace) -> NDArray[np.float64] | None:
    """The vote histograms, shape (queries, classes), or None."""
    t, m, n = args.teachers, args.classes, args.queries
    if args.concentration is not None:
        c = args.concentration
        if not 0.0 <= c <= 1.0:
            raise PrivacyCliError(f"--concentration must be in [0, 1], got {c}")
        top = round(c * t)
        v = np.full(m, (t - top) / (m - 1))
        v[0] = top
        return np.tile(v, (n, 1))
    if args.votes_profile is None:
        return None
    if args.votes_profile == "unanimous":
        v = np.zeros(m)
        v[0] = t
        return np.tile(v, (n, 1))
    if args.votes_profile == "split":
        v = np.zeros(m)
        v[0], v[1] = math.ceil(t / 2), math.floor(t / 2)
        return np.tile(v, (n, 1))
    path = Path(args.votes_profile)
    if path.suffix != ".npy" or not path.is_file():
        raise PrivacyCliError(f"--votes-profile must be unanimous, split or an existing "
                              f".npy file; got {args.votes_profile!r}")
    try:
        v = np.load(path, allow_pickle=False).astype(np.float64)
    except (ValueError, OSError) as exc:
        raise PrivacyCliError(f"cannot read {path} as a numpy array: {exc}") from None
    if v.ndim == 1:
        return np.tile(v, (n, 1))
    if v.ndim != 2 or v.shape[0] < n:
        raise PrivacyCliError(f"{path} has shape {v.shape}; expected (classes,) or "
                              f"(>= {n} queries, classes)")
    return v[:n]


def _data_dependent_costs(votes: NDArray[np.float64], args: argparse.Namespace,
                          confident: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-query expected data-dependent RDP rows and Pr[answered] per query."""
    cache: dict[bytes, tuple[NDArray[np.float64], float]] = {}
    rows, prs = [], []
    for v in votes:  # identical histograms (the usual case) are computed once
        key = v.tobytes()
        if key not in cache:
            g = gnmax_rdp_from_logq(gnmax_logq(v, args.sigma2), args.sigma2, DEFAULT_ORDERS)
            if confident:
                log_pr = threshold_log_pr_answered(v, args.threshold, args.sigma1)
                cache[key] = (PateAccountant(DEFAULT_ORDERS).expected_confident_gnmax(
                    v, args.threshold, args.sigma1, args.sigma2), math.exp(log_pr))
            else:
                cache[key] = (g, 1.0)
        rows.append(cache[key][0])
        prs.append(cache[key][1])
    return np.array(rows), np.array(prs)


def _print_table(args: argparse.Namespace, confident: bool,
                 rows: list[tuple[str, NDArray[np.float64]]], pr_answered: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    mech = (f"Confident-GNMax (T={args.threshold:g}, sigma1={args.sigma1:g}, "
            f"sigma2={args.sigma2:g})" if confident else f"GNMax (sigma={args.sigma2:g})")
    table = Table(title=f"PATE privacy cost: {mech}, {args.teachers} teachers, "
                        f"{args.classes} classes, {args.queries} queries, delta={args.delta:g}")
    table.add_column("accounting", no_wrap=True)
    table.add_column("eps classic", justify="right")
    table.add_column("eps improved", justify="right")
    table.add_column("best order", justify="right")
    for label, rdp in rows:
        classic, _ = epsilon_from_rdp(DEFAULT_ORDERS, rdp, args.delta, "classic")
        improved, order = epsilon_from_rdp(DEFAULT_ORDERS, rdp, args.delta, "improved")
        table.add_row(label, f"{classic:.4f}", f"{improved:.4f}", f"{order:.4g}")
    console = Console()
    console.print(table)
    if pr_answered is not None:
        console.print(f"vote profile: Pr[answered] = {pr_answered:.4f} per query "
                      f"(expected {pr_answered * args.queries:.1f} answers)", markup=False)
    if len(rows) > 1 and rows[-1][0].startswith("DATA-DEPENDENT"):
        console.print("DATA-DEPENDENT figures come from the vote histogram, which no one "
                      "sees in CaPC; they are not a releasable guarantee (no smooth-"
                      "sensitivity analysis). Deployments claim the data-independent row.",
                      markup=False)


def _plot(args: argparse.Namespace, curves: dict[str, NDArray[np.float64]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, args.queries + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, rdp) in enumerate(curves.items()):
        colour = f"C{i}"
        ax.plot(ks, epsilon_curve(DEFAULT_ORDERS, rdp, args.delta, "improved"),
                color=colour, label=f"{label} (improved)")
        ax.plot(ks, epsilon_curve(DEFAULT_ORDERS, rdp, args.delta, "classic"),
                color=colour, linestyle="--", label=f"{label} (classic)")
    ax.set_xlabel("number of queries")
    ax.set_ylabel(f"epsilon at delta = {args.delta:g}")
    ax.set_title("PATE privacy cost vs queries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    plt.close(fig)


# The plaintext study behind these rules (PAPERS.md section 9): weak teachers need a
# threshold of 0.3-0.45 x teachers (PATE 2018's 0.6-0.8 x is too strict for them), and
# noise of about 0.1 x teachers (GNMax) and 0.2 x teachers (threshold) kept labels right.
SUGGESTED = [(0.45, 0.2, 0.1), (0.3, 0.2, 0.1), (0.45, 0.25, 0.15), (0.3, 0.15, 0.075),
             (0.45, 0.3, 0.2)]


def answer_cap(queries: int, sigma1: float, sigma2: float, target: float, delta: float) -> int:
    """The most answers (GNMax steps) that ``queries`` threshold checks leave room for
    within ``target`` (data-independent, improved conversion); 0 when none."""
    thr = queries * threshold_rdp_data_independent(sigma1, DEFAULT_ORDERS)
    step = gnmax_rdp_data_independent(sigma2, DEFAULT_ORDERS)

    def eps(c: int) -> float:
        return epsilon_from_rdp(DEFAULT_ORDERS, thr + c * step, delta)[0]
    if eps(0) > target:
        return 0
    lo, hi = 0, queries
    if eps(hi) <= target:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if eps(mid) <= target else (lo, mid)
    return lo


def _suggest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.target_epsilon is None or args.target_epsilon <= 0:
        raise PrivacyCliError("--suggest needs --target-epsilon E > 0")
    if args.queries < 1 or args.teachers < 1 or not 0.0 < args.delta < 1.0:
        raise PrivacyCliError("--queries and --teachers must be >= 1 and --delta in (0, 1)")
    t, n = args.teachers, args.queries
    table = Table(title=f"Confident-GNMax for {t} teachers, {n} queries, epsilon <= "
                        f"{args.target_epsilon:g} at delta {args.delta:g} (data-independent)")
    for col in ("threshold", "sigma1", "sigma2", "--max-answers", "answers / queries", "epsilon at cap"):
        table.add_column(col, justify="right")
    best = None
    for f_t, f_1, f_2 in SUGGESTED:
        s1, s2 = round(f_1 * t, 2), round(f_2 * t, 2)
        cap = answer_cap(n, s1, s2, args.target_epsilon, args.delta)
        rdp = (n * threshold_rdp_data_independent(s1, DEFAULT_ORDERS)
               + cap * gnmax_rdp_data_independent(s2, DEFAULT_ORDERS))
        eps = epsilon_from_rdp(DEFAULT_ORDERS, rdp, args.delta)[0]
        table.add_row(f"{f_t * t:g}", f"{s1:g}", f"{s2:g}", str(cap) if cap else "none fit",
                      f"{cap / n:.0%}", f"{eps:.3f}" if cap else "-")
        if best is None and cap >= 0.1 * n:
            best = (f_t * t, s1, s2, cap)
    console = Console()
    console.print(table)
    if best is None:
        console.print(f"No setting here answers even 10 % of {n} queries within epsilon "
                      f"{args.target_epsilon:g}: ask fewer queries, train more teachers (more "
                      "noise then keeps labels right) or accept a larger epsilon.", markup=False)
        return 0
    console.print(f"suggested: run_parties.py capc --threshold {best[0]:g} --sigma-threshold "
                  f"{best[1]:g} --sigma-gnmax {best[2]:g} --max-answers {best[3]} --queries {n}",
                  markup=False)
    console.print("Noise about 0.1 x teachers and a threshold of 0.3-0.45 x teachers kept weak "
                  "teachers' labels right in our study (PAPERS.md section 9); check on your data "
                  "in plaintext mode first.", markup=False)
    return 0
