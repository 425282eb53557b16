"""Result tables and plots for finished sessions (files belong to parties/)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def capc_table(sessions: list[dict]) -> Table:
    table = Table(title="CaPC: one row per querying party")
    for col in ("QP", "mode", "data", "APs", "acc before", "acc after", "queries", "answered",
                "refused", "abstained", "labels correct", "epsilon", "delta"):
        table.add_column(col, justify="right")
    for session in sessions:
        for name, rec in session["parties"].items():
            r = rec.get("result") or {}
            if r.get("role") != "qp":
                continue
            answered = r["answered"]
            table.add_row(name, r["mode"], f"{r['dataset']}/{r['split']}", str(r["answering_parties"]),
                          f"{r['accuracy_before']:.3f}", f"{r['accuracy_after']:.3f}", str(r["queries"]),
                          str(answered), str(r["refused"]), str(r["abstained"]),
                          f"{r['labelled_correctly']}/{answered}", f"{r['epsilon']:.3g}", f"{r['delta']:g}")
    return table


def capc_plot(sessions: list[dict], path: Path) -> Path | None:
    """Accuracy and epsilon against the number of queries, one line per QP."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(name, rec["result"]) for s in sessions for name, rec in s["parties"].items()
              if (rec.get("result") or {}).get("role") == "qp" and rec["result"].get("curve")]
    if not curves:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in curves:
        xs = [0] + [p["queries"] for p in r["curve"]]
        ax1.plot(xs, [r["accuracy_before"]] + [p["accuracy"] for p in r["curve"]], marker="o", label=name)
        ax2.plot(xs, [0.0] + [p["epsilon"] for p in r["curve"]], marker="o", label=name)
    ax1.set(xlabel="queries", ylabel="QP test accuracy", title="accuracy after retraining")
    ax2.set(xlabel="queries", ylabel="epsilon (data-independent)", title="privacy spent")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def capc_story(session: dict) -> list[str]:
    """One sentence per querying party: what it gained, and what it paid."""
    lines = []
    for name, rec in session["parties"].items():
        r = rec.get("result") or {}
        if r.get("role") != "qp":
            continue
        gain = r["accuracy_after"] - r["accuracy_before"]
        lines.append(
            f"{name} started with {r.get('own_points', '?')} labelled points of its own (test "
            f"accuracy {r['accuracy_before']:.3f}); it bought {r['answered']} labels from "
            f"{r['answering_parties']} organisations' models without seeing them or showing its "
            f"queries, and retrained to {r['accuracy_after']:.3f} ({gain:+.3f}). The price is "
            f"epsilon {r['epsilon']:.3g} at delta {r['delta']:g}, counted data-independently: with "
            f"{r['answering_parties']} voters PATE's guarantee is weak (many teachers make it "
            "strong; RESULTS.md), while the confidentiality of data and models does not depend "
            "on it.")
        if r.get("refused"):
            lines.append(f"{r['refused']} of {r['queries']} queries were refused: the privacy "
                         "guardian's budget was spent (default epsilon 10; raise it deliberately "
                         "with --budget, or add noise with --sigma-gnmax).")
    return lines


def capc_report(run_dir: Path, session: dict) -> None:
    console.print(capc_table([session]))
    for line in capc_story(session):
        console.print(line)
    png = capc_plot([session], run_dir / "capc.png")
    if png:
        console.print(f"plot: {png}")
