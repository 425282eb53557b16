"""Hash-Comb results (RESULTS.md, BENCHMARKS.md; issue 17): bytes per round against float32
FedAvg, and accuracy against epsilon beside DP-FedAvg with Gaussian noise.

    python -m benchmarks.hashcomb_results [--quick] [--json FILE]

1. Bandwidth: 5 owners, Hash-Comb (L = 8, compact tokens) and float32 FedAvg on the same
   seed: the digits MLP (2,410 parameters, 20 rounds) and an MNIST MLP of 1,009,660
   parameters (hidden 1,270, 3 rounds). Bytes are whole wire messages (header included).
2. Privacy: 5 owners, 10 rounds, logistic regression; each owner's whole run is
   (epsilon, 1e-5)-DP for its whole update (any two updates within [lo, hi] per
   coordinate): Hash-Comb with the Randomized Quantization Mechanism (margin planned by
   privacy.rqm.plan) beside local DP-FedAvg (the same clipping, Gaussian noise at the
   same epsilon), on digits, breast_cancer and MNIST; 3 runs each (1 with --quick).

Runs the protocols' role code in one process (protocols.runner: the same code as between
processes, where `python run_parties.py hashcomb-fl` runs it).
Writes results/hashcomb_bandwidth.md, results/hashcomb_dp.md and results/hashcomb_dp.png.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import warnings
from pathlib import Path
from statistics import mean, stdev

from privacy import rqm
from protocols.runner import run_session

from .results_io import one_torch_thread, write_json

OUT = Path(__file__).resolve().parents[1] / "results"
OWNERS = 5
ROLES = {**{f"owner{i}": "owner" for i in range(1, OWNERS + 1)}, "aggregator": "aggregator"}
RANGE = (-0.35, 0.35)
BANDWIDTH = [("digits MLP", {"dataset": "digits", "model": "mlp", "hidden": 32, "rounds": 20}),
             ("MNIST MLP, 1M parameters", {"dataset": "mnist", "model": "mlp", "hidden": 1270,
                                           "rounds": 3, "lr": 0.1})]
DP = {"model": "logreg", "rounds": 10, "lr": 0.5}
DP_DATASETS = {"digits": 650, "breast_cancer": 62, "mnist": 7850}   # logreg coordinates
EPSILONS = (10.0, 100.0, 1000.0, 1e4, 1e5)


def _check(res: dict) -> dict:
    bad = {n: r for n, r in res.items() if isinstance(r, BaseException)}
    if bad:
        raise RuntimeError(f"run failed: {bad}")
    return res


def setup(delta: float) -> dict[str, dict]:
    params = {"levels": 8, "lo": RANGE[0], "hi": RANGE[1], "delta": delta}
    res = _check(asyncio.run(run_session("hcsetup", ROLES, params)))
    return {n: r.private for n, r in res.items()}


def train(states: dict, params: dict) -> dict:
    res = _check(asyncio.run(run_session("hcfl", ROLES, params, states=states)))
    owner = res["owner1"].public
    return {"curve": [r["accuracy"] for r in owner["rounds"]], "final": owner["final_accuracy"],
            "up": mean(r["bytes_sent"] for r in owner["rounds"]),
            "down": mean(r["bytes_received"] for r in owner["rounds"]),
            "dim": owner["dimension"], "epsilon": owner["epsilon"],
            "distinct": mean(r["distinct_per_coordinate"] or 0 for r in res["aggregator"].public["rounds"])}


def bandwidth(progress) -> list[dict]:
    states, rows = setup(0.01), []
    for name, p in BANDWIDTH:
        hc = train(states, {**p, "encoding": "hashcomb"})
        fl = train(states, {**p, "encoding": "float"})
        rows.append({"model": name, "hashcomb": hc, "float": fl})
        progress(f"{name}: {hc['dim']:,} parameters; Hash-Comb up {hc['up'] / fl['up']:.3f}x, down "
                 f"{hc['down'] / fl['down']:.3f}x float32 FedAvg; accuracy {hc['final']:.4f} vs "
                 f"{fl['final']:.4f}")
    return rows


def privacy(seeds: int, progress) -> list[dict]:
    rows = []
    for dataset, dim in DP_DATASETS.items():
        plain = train(setup(0.01), {**DP, "dataset": dataset, "encoding": "float"})["final"]
        for eps in EPSILONS:
            margin, q, std = rqm.plan(8, *RANGE, eps, dim, DP["rounds"], 1e-5)
            states = setup(margin)
            row = {"dataset": dataset, "epsilon": eps, "no_dp": plain, "margin": margin, "q": q,
                   "rqm_std": std}
            for enc in ("hashcomb", "float"):
                runs = [train(states, {**DP, "dataset": dataset, "encoding": enc, "rdp_epsilon": eps,
                                       "epsilon_budget": eps, "seed": s}) for s in range(seeds)]
                row[enc] = [r["final"] for r in runs]
                row[f"{enc}_epsilon"] = max(r["epsilon"] for r in runs)
                row[f"{enc}_up"] = runs[0]["up"]
            rows.append(row)
            progress(f"{dataset} epsilon {eps:g}: Hash-Comb + RQM {mean(row['hashcomb']):.3f}, "
                     f"DP-FedAvg {mean(row['float']):.3f} (no DP {plain:.3f}; margin {margin:.3g}, "
                     f"q {q:.3g})")
    return rows


def _ms(xs: list[float]) -> str:
    return f"{mean(xs):.3f}" + (f" ± {stdev(xs):.3f}" if len(xs) > 1 else "")


def write(bw: list[dict], private: list[dict], seconds: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    lines = [f"{OWNERS} owners, L = 8 over [{RANGE[0]}, {RANGE[1]}] (+- 0.01), same seed for both; "
             "bytes per owner and round, whole wire messages; float32 FedAvg sends 4 bytes a "
             "parameter each way.", "",
             "| model | parameters | rounds | Hash-Comb up | Hash-Comb down | FedAvg up = down | up x float32 "
             "| down x float32 | distinct tokens per coordinate | final accuracy Hash-Comb / FedAvg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in bw:
        hc, fl = r["hashcomb"], r["float"]
        lines.append(f"| {r['model']} | {hc['dim']:,} | {len(hc['curve'])} | {hc['up']:,.0f} | "
                     f"{hc['down']:,.0f} | {fl['up']:,.0f} | {hc['up'] / fl['up']:.3f} | "
                     f"{hc['down'] / fl['down']:.3f} | {hc['distinct']:.2f} | "
                     f"{hc['final']:.4f} / {fl['final']:.4f} |")
    (OUT / "hashcomb_bandwidth.md").write_text("\n".join(lines) + "\n")

    lines = [f"{OWNERS} owners, {DP['rounds']} rounds, logistic regression, lr {DP['lr']}, IID. Each "
             "owner's whole run is (epsilon, 1e-5)-DP for its whole update: every coordinate clipped "
             f"to [{RANGE[0]}, {RANGE[1]}], neighbours are any two such updates. Hash-Comb + RQM: the "
             "planner's margin and keep probability q (L = 8). DP-FedAvg: local Gaussian noise, same "
             "clipping, L2 sensitivity 0.7 sqrt(d). Final test accuracy, mean ± sd over runs.", "",
             "| data | epsilon | no DP | Hash-Comb + RQM | DP-FedAvg (Gaussian) | RQM margin / q | "
             "epsilon spent (RQM / Gaussian) |", "|---|---:|---:|---:|---:|---|---|"]
    lines += [f"| {r['dataset']} | {r['epsilon']:g} | {r['no_dp']:.3f} | {_ms(r['hashcomb'])} | "
              f"{_ms(r['float'])} | {r['margin']:.3g} / {r['q']:.3g} | "
              f"{r['hashcomb_epsilon']:.4g} / {r['float_epsilon']:.4g} |" for r in private]
    (OUT / "hashcomb_dp.md").write_text("\n".join(lines) + f"\n\n({seconds:.0f} s for both tables)\n")
    datasets = list(dict.fromkeys(r["dataset"] for r in private))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.3 * len(datasets), 3.3), sharey=True)
    for ax, dataset in zip(axes, datasets, strict=True):
        rs = [r for r in private if r["dataset"] == dataset]
        eps = [r["epsilon"] for r in rs]
        for enc, style, label in (("hashcomb", "o--", "Hash-Comb + RQM"),
                                  ("float", "s-", "DP-FedAvg (Gaussian)")):
            ax.errorbar(eps, [mean(r[enc]) for r in rs],
                        yerr=[stdev(r[enc]) if len(r[enc]) > 1 else 0 for r in rs], fmt=style,
                        capsize=3, label=label)
        ax.axhline(rs[0]["no_dp"], color="grey", ls=":", label="no DP")
        ax.set(title=dataset, xlabel="epsilon (whole run)", xscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final test accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "hashcomb_dp.png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per private setting")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    # every owner saves its model (torch.export) at the end of every run; its notice is noise here
    warnings.filterwarnings("ignore", message="No complete tensor found")
    from rich.console import Console
    console = Console(highlight=False)
    t0 = time.time()
    with one_torch_thread():
        bw = bandwidth(console.print)
        private = privacy(1 if args.quick else 3, console.print)
    seconds = time.time() - t0
    write(bw, private, seconds)
    for name in ("hashcomb_bandwidth.md", "hashcomb_dp.md"):
        console.print((OUT / name).read_text())
    write_json({"bandwidth": bw, "dp": private}, args.json)
    console.print(f"wrote {OUT}/hashcomb_*.md and hashcomb_dp.png ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
