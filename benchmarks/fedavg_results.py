"""FedAvg results (RESULTS.md): SecAgg+ beside plain FedAvg on digits and breast_cancer,
IID and non-IID; and distributed DP (Skellam noise from the clients, under SecAgg+)
beside central DP (Gaussian noise from a trusted server) at epsilon 1, 4 and 8.

    python -m benchmarks.fedavg_results [--quick] [--json FILE]

Runs the protocol's role code in one process (protocols.runner: the same code as between
processes, where `python run_parties.py fedavg` runs it; tests/test_fedavg_processes.py).
Writes results/fedavg_secagg.md/.png and results/fedavg_dp.md/.png.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from statistics import mean, stdev

from protocols.runner import run_session

from .results_io import one_torch_thread, write_json

OUT = Path(__file__).resolve().parents[1] / "results"
CLIENTS = 10
SECAGG = {"rounds": 20, "model": "mlp", "hidden": 32, "lr": 0.1}
DP = {"rounds": 10, "model": "logreg", "lr": 0.5, "l2_clip": 1.0, "epsilon_budget": 1e9}
DATASETS = ("digits", "breast_cancer")


def run(params: dict) -> dict:
    roles = {**{f"c{i:02d}": "client" for i in range(1, CLIENTS + 1)}, "server": "server"}
    res = asyncio.run(run_session("fedavg", roles, params))
    bad = {n: r for n, r in res.items() if isinstance(r, BaseException)}
    if bad:
        raise RuntimeError(f"fedavg run failed: {bad}")
    c = res["c01"].public
    return {"curve": [r["accuracy"] for r in c["rounds"]], "final": c["final_accuracy"],
            "dp": res["server"].public.get("dp")}


def secagg_vs_plain(progress) -> list[dict]:
    rows = []
    for dataset in DATASETS:
        for split in ("iid", "noniid"):
            p = {**SECAGG, "dataset": dataset, "split": split}
            sec, plain = run({**p, "secagg": True}), run({**p, "secagg": False})
            gap = max(abs(a - b) for a, b in zip(sec["curve"], plain["curve"], strict=True))
            rows.append({"dataset": dataset, "split": split, "secagg": sec, "plain": plain, "gap": gap})
            progress(f"{dataset} {split}: SecAgg+ {sec['final']:.4f}, plain {plain['final']:.4f}, "
                     f"largest per-round gap {gap:.4f}")
    return rows


def dp(quick: bool, progress) -> list[dict]:
    rows, seeds = [], (1 if quick else 3)
    for dataset in DATASETS:
        none = run({**DP, "dataset": dataset, "secagg": True})["final"]
        for eps in (1.0, 4.0, 8.0):
            row = {"dataset": dataset, "epsilon": eps, "no_dp": none}
            for name, secure in (("distributed", True), ("central", False)):
                finals = [run({**DP, "dataset": dataset, "secagg": secure, "dp_epsilon": eps})
                          for _ in range(seeds)]
                row[name] = [f["final"] for f in finals]
                row[f"{name}_epsilon"] = max(f["dp"]["epsilon"] for f in finals)
            rows.append(row)
            progress(f"DP {dataset} epsilon {eps:g}: distributed {mean(row['distributed']):.3f}, "
                     f"central {mean(row['central']):.3f} (no DP {none:.3f})")
    return rows


def _ms(xs: list[float]) -> str:
    return f"{mean(xs):.3f}" + (f" ± {stdev(xs):.3f}" if len(xs) > 1 else "")


def write(sec: list[dict], private: list[dict], seconds: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    OUT.mkdir(exist_ok=True)
    lines = [f"{CLIENTS} clients, {SECAGG['rounds']} rounds, MLP (hidden {SECAGG['hidden']}), lr "
             f"{SECAGG['lr']}, 1 local epoch, same seed; SecAgg+ quantizes each coordinate to 16 bits "
             "over +-0.5 and weights by sample counts. Test accuracy on the common held-out 25 %.", "",
             "| data | split | SecAgg+ final | plain FedAvg final | largest per-round gap |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['secagg']['final']:.4f} | {r['plain']['final']:.4f} | "
              f"{r['gap']:.4f} |" for r in sec]
    (OUT / "fedavg_secagg.md").write_text("\n".join(lines) + f"\n\n({seconds:.0f} s for both tables)\n")
    fig, axes = plt.subplots(1, len(sec), figsize=(3.2 * len(sec), 3.2), sharey=True)
    for ax, r in zip(axes, sec, strict=True):
        xs = range(1, len(r["plain"]["curve"]) + 1)
        ax.plot(xs, r["plain"]["curve"], lw=4, alpha=0.45, label="plain FedAvg")
        ax.plot(xs, r["secagg"]["curve"], ls="--", marker="o", ms=2, label="SecAgg+")
        ax.set(title=f"{r['dataset']} {r['split']}", xlabel="round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "fedavg_secagg.png", dpi=110)
    plt.close(fig)

    lines = [f"{CLIENTS} clients, {DP['rounds']} rounds, logistic regression, lr {DP['lr']}; each "
             f"client's update clipped to L2 norm {DP['l2_clip']:g}; (epsilon, 1e-5)-DP for one client's "
             "whole update (added or removed) over the whole run. Distributed: every client adds Skellam "
             "noise before SecAgg+, sized for 10 % dropouts (mu / 9 each). Central: a trusted server adds "
             "Gaussian noise to the plain sum. Final test accuracy, mean ± sd over runs (fresh noise).", "",
             "| data | epsilon | no DP | distributed (Skellam + SecAgg+) | central (Gaussian) | "
             "epsilon spent (distributed / central) |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['dataset']} | {r['epsilon']:g} | {r['no_dp']:.3f} | {_ms(r['distributed'])} | "
              f"{_ms(r['central'])} | {r['distributed_epsilon']:.3f} / {r['central_epsilon']:.3f} |"
              for r in private]
    (OUT / "fedavg_dp.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(DATASETS), figsize=(6.4, 3.2), sharey=True)
    for ax, dataset in zip(axes, DATASETS, strict=True):
        rs = [r for r in private if r["dataset"] == dataset]
        eps = [r["epsilon"] for r in rs]
        for name, style in (("distributed", "o--"), ("central", "s-")):
            ax.errorbar(eps, [mean(r[name]) for r in rs],
                        yerr=[stdev(r[name]) if len(r[name]) > 1 else 0 for r in rs], fmt=style,
                        capsize=3, label=name)
        ax.axhline(rs[0]["no_dp"], color="grey", ls=":", label="no DP")
        ax.set(title=dataset, xlabel="epsilon", xscale="log")
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final test accuracy")
    axes[-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "fedavg_dp.png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one DP run per setting")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    from rich.console import Console
    console = Console(highlight=False)
    t0 = time.time()
    with one_torch_thread():
        sec = secagg_vs_plain(console.print)
        private = dp(args.quick, console.print)
    seconds = time.time() - t0
    write(sec, private, seconds)
    for name in ("fedavg_secagg.md", "fedavg_dp.md"):
        console.print((OUT / name).read_text())
    write_json({"secagg": sec, "dp": private}, args.json)
    console.print(f"wrote {OUT}/fedavg_*.md and .png ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
