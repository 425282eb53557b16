"""Gradient-based data valuation with and without DP: detect flipped and atypical
digits by their scores, retrain on the samples each score keeps, release noisy
client-level values; tables and a PNG (RESULTS.md, docs/precode_valuation.md).

    python -m benchmarks.valuation_results [--quick] [--seed S] [--plot PNG] [--json FILE]

Model initialisation and the corruption are seeded so runs repeat; DP-SGD's
sampling and noise always come from the OS random source.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import torch

from learning.valuation import (
    LOSS_BOUND,
    SCORES,
    Corrupted,
    TrainConfig,
    corrupt_digits,
    precision_at_k,
    release_client_value,
    train,
    valuation_mlp,
)

from .results_io import run_and_report


@dataclass(frozen=True)
class ValuationSettings:
    epochs: int = 15
    keep_fraction: float = 0.9
    owners: int = 5
    release_epsilon: float = 1.0
    repeats: int = 1          # retrainings per selected subset (mean reported)


QUICK = ValuationSettings()
FULL = ValuationSettings(epochs=30, repeats=3)
REGIMES: tuple[tuple[str, float | None], ...] = (("no DP", None), ("eps=8", 8.0),
                                                 ("eps=1", 1.0))


def evaluate(settings: ValuationSettings, seed: int = 0, plot_path: str | None = None
             ) -> dict:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    data = corrupt_digits(seed=seed)
    s = data.split
    n = len(s.y_train)
    keep = round(settings.keep_fraction * n)
    out: dict = {"detect": [], "select": [], "clients": [], "n": n, "keep": keep}
    cols = (TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())
    with Progress(*cols) as bar:
        for regime, eps in REGIMES:
            cfg = TrainConfig(epochs=settings.epochs, epsilon=eps)
            torch.manual_seed(seed)
            model = valuation_mlp(s.input_shape, s.num_classes)
            task = bar.add_task(f"score   {regime}", total=cfg.epochs)
            res = train(model, s.x_train, s.y_train, cfg, s.x_test, s.y_test,
                        progress=lambda k, t=task: bar.advance(t, k))
            for name, sc in res.scores.items():
                out["detect"].append({
                    "regime": regime, "score": name, "epsilon": res.epsilon,
                    "test_acc": res.test_accuracy,
                    "p@k flipped": precision_at_k(sc, data.flipped, int(data.flipped.sum())),
                    "p@k atypical": precision_at_k(sc, data.atypical, int(data.atypical.sum())),
                    "p@k either": precision_at_k(sc, data.flipped | data.atypical,
                                                 int((data.flipped | data.atypical).sum()))})
            # selection: keep the samples each score ranks as most typical (lowest)
            rng = np.random.default_rng(seed)
            subsets = {name: np.argsort(sc, kind="stable")[:keep]
                       for name, sc in res.scores.items()}
            subsets["random"] = rng.permutation(n)[:keep]
            subsets["all data"] = np.arange(n)
            subsets["clean only (oracle)"] = np.flatnonzero(~(data.flipped | data.atypical))
            for name, idx in subsets.items():
                task = bar.add_task(f"select  {regime} {name}",
                                    total=cfg.epochs * settings.repeats)
                accs, spent = [], None
                for r in range(settings.repeats):  # DP runs vary: average a few
                    torch.manual_seed(seed + r)
                    m = valuation_mlp(s.input_shape, s.num_classes)
                    sel = train(m, s.x_train[idx], s.y_train[idx], cfg, s.x_test, s.y_test,
                                score=False, progress=lambda k, t=task: bar.advance(t, k))
                    accs.append(sel.test_accuracy)
                    spent = sel.epsilon
                out["select"].append({"regime": regime, "subset": name, "size": len(idx),
                                      "bad kept": int((data.flipped | data.atypical)[idx].sum()),
                                      "test_acc": float(np.mean(accs)),
                                      "acc_std": float(np.std(accs)), "repeats": len(accs),
                                      "epsilon": spent})
            out["clients"] += _client_table(res.scores["loss"], data, settings, regime, seed)
    if plot_path:
        save_plot(out, plot_path)
    return out


def _client_table(loss: np.ndarray, data: Corrupted, settings: ValuationSettings, regime: str,
                  seed: int) -> list[dict]:
    """Owners hold equal shares of clean data; the flipped samples go to them
    in proportion 0 : 1 : 2 : ... so the owners differ in data quality."""
    rng = np.random.default_rng(seed)
    bad = np.flatnonzero(data.flipped)
    good = rng.permutation(np.flatnonzero(~data.flipped))
    weights = np.arange(settings.owners, dtype=float)
    cuts = np.concatenate([[0], np.cumsum(np.round(weights / weights.sum() * len(bad)))])
    cuts[-1] = len(bad)
    rows = []
    for o, clean in enumerate(np.array_split(good, settings.owners)):
        mine = np.concatenate([clean, bad[int(cuts[o]):int(cuts[o + 1])]])
        # public cut-off: ln(10), the loss of a uniform guess over the 10 classes
        rel = release_client_value(loss[mine], cutoff=math.log(10), bound=LOSS_BOUND,
                                   epsilon=settings.release_epsilon)
        rows.append({"regime": regime, "owner": o, "samples": len(mine),
                     "flipped": int(data.flipped[mine].sum()),
                     "true mean": float(np.clip(loss[mine], -LOSS_BOUND, LOSS_BOUND).mean()),
                     "noisy mean": rel.mean_score,
                     "true above": int((loss[mine] > math.log(10)).sum()),
                     "noisy above": rel.count_above, "epsilon": rel.epsilon,
                     "sigma": rel.sigma})
    return rows


def save_plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r, _ in REGIMES]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    width = 0.25
    for ax, col in zip(axes[:2], ("p@k flipped", "p@k atypical"), strict=True):
        for j, name in enumerate(SCORES):
            vals = [next(d[col] for d in out["detect"] if d["regime"] == r and d["score"] == name)
                    for r in regimes]
            ax.bar(np.arange(len(regimes)) + (j - 1) * width, vals, width, label=name)
        ax.axhline(0.05, color="grey", ls=":", lw=1, label="random")
        ax.set_xticks(range(len(regimes)), regimes)
        ax.set_ylim(0, 1)
        ax.set_title(f"precision@k: {col.split()[1]} samples")
    names = [*SCORES, "random", "all data", "clean only (oracle)"]
    w = 0.8 / len(names)
    for j, name in enumerate(names):
        rows = [next(d for d in out["select"] if d["regime"] == r and d["subset"] == name)
                for r in regimes]
        axes[2].bar(np.arange(len(regimes)) + (j - (len(names) - 1) / 2) * w,
                    [d["test_acc"] for d in rows], w, yerr=[d["acc_std"] for d in rows],
                    label=name, capsize=1.5)
    axes[2].set_xticks(range(len(regimes)), regimes)
    lo = min(d["test_acc"] for d in out["select"])
    axes[2].set_ylim(max(0.0, lo - 0.05), 1)
    axes[2].set_title(f"test accuracy, train on kept {out['keep']}/{out['n']}")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def print_tables(out: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 120))  # files/pipes: no 80-column cut
    t = Table(title=f"{title}: finding corrupted samples (precision@k, k = #positives)")
    for c in ("regime", "epsilon", "test acc", "score", "p@k flipped", "p@k atypical",
              "p@k either"):
        t.add_column(c)
    for d in out["detect"]:
        eps = "-" if d["epsilon"] is None else f"{d['epsilon']:.2f}"
        t.add_row(d["regime"], eps, f"{d['test_acc']:.3f}", d["score"],
                  f"{d['p@k flipped']:.2f}", f"{d['p@k atypical']:.2f}",
                  f"{d['p@k either']:.2f}")
    con.print(t)
    t = Table(title=f"selection: keep {out['keep']} of {out['n']} (lowest score), retrain")
    for c in ("regime", "subset", "size", "bad kept", "test acc (mean ± std)", "runs",
              "epsilon"):
        t.add_column(c)
    for d in out["select"]:
        eps = "-" if d["epsilon"] is None else f"{d['epsilon']:.2f}"
        t.add_row(d["regime"], d["subset"], str(d["size"]), str(d["bad kept"]),
                  f"{d['test_acc']:.3f} ± {d['acc_std']:.3f}", str(d["repeats"]), eps)
    con.print(t)
    t = Table(title="client-level value: per-owner noisy release of the loss score")
    for c in ("regime", "owner", "samples", "flipped", "true mean", "noisy mean",
              "true above ln10", "noisy above", "release eps", "sigma"):
        t.add_column(c)
    for d in out["clients"]:
        t.add_row(d["regime"], str(d["owner"]), str(d["samples"]), str(d["flipped"]),
                  f"{d['true mean']:.3f}", f"{d['noisy mean']:.3f}", str(d["true above"]),
                  f"{d['noisy above']:.1f}", f"{d['epsilon']:.2f}", f"{d['sigma']:.1f}")
    con.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.valuation_results",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick settings (default: full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="results/valuation_scores.png")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    return run_and_report(
        lambda: evaluate(QUICK if args.quick else FULL, seed=args.seed, plot_path=args.plot),
        lambda out, secs: print_tables(out, f"{mode} settings, seed {args.seed}, {secs:.0f} s"),
        args.json)

if __name__ == "__main__":
    raise SystemExit(main())
