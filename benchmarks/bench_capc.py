"""CaPC end to end between processes over the embedded broker: latency and throughput.

Run: python -m benchmarks.bench_capc [--curve]   (about 12 minutes on 2 cores; the curve ~15)

Each row is a real `run_parties.py capc` run (crypto mode, digits MLP with
square activations, or K logistic-regression teachers per AP; one row on MNIST, whose
pool of queries is large enough for a batch of 1,800). Latency is the
querying party's wall time for labelling, split into inference (encrypt, every AP's
HE evaluation, transport, decrypt: until the last AP's share is decrypted), the argmax
2PCs with the APs after that (all at once; each starts when its AP's answer is in, so
the early ones overlap inference), and the PG step with the final 2PC. Single queries run 5 one after another in one session
(single-query packing): the first one and the median of the other four are reported
(setup, i.e. keys, the public context and the local 2PC rehearsal, is not labelling).
``--curve`` adds labelling time against the number of APs (1, 2, 4, 8, 16; one batch of
64 queries).
Model training and retraining are excluded. The anchor is the CaPC reference
implementation's ~3.0 s per query per answering party for step 1a alone
(MNIST CryptoNets, its machine).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RUNS = [  # (label, data parties, queries, batch size, teachers per AP, data set)
    ("1 AP, single query", 2, 5, 1, 1, "digits"),
    ("4 APs, single query", 5, 5, 1, 1, "digits"),
    ("4 APs, batch of 256", 5, 256, 256, 1, "digits"),
    ("4 APs, batch of 640 (digits' whole query pool)", 5, 640, 640, 1, "digits"),
    ("4 APs (MNIST logreg), batch of 1,800", 5, 1800, 1800, 1, "mnist"),
    ("4 APs x 50 teachers, batch of 256", 5, 256, 256, 50, "digits"),
]
CURVE = [(f"{n} AP{'s' if n > 1 else ''}, batch of 64", n + 1, 64, 64, 1, "digits")
         for n in (1, 2, 4, 8, 16)]


def run(parties: int, queries: int, batch: int, teachers: int, dataset: str,
        runs_dir: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "run_parties.py"), "--runs-dir", str(runs_dir),
           "--timeout", "1800", "capc", "--dataset", dataset,
           "--parties", str(parties), "--queries", str(queries), "--batch-size", str(batch),
           "--epochs", "10", "--budget", "1e6"]
    if teachers > 1 or dataset == "mnist":
        cmd += ["--teachers-per-party", str(teachers), "--teacher-arch", "logreg"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    return json.loads((run_dir / "results.json").read_text())


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curve", action="store_true", help="also time 1, 2, 4, 8 and 16 APs")
    args = ap.parse_args()
    console = Console(width=160)
    table = Table(title="CaPC labelling between processes (embedded broker, crypto mode)")
    for col in ("setting", "queries", "labelling s", "per query", "inference", "argmax 2PCs",
                "PG + final 2PC", "AP HE eval", "bytes/query/AP (AP->all)", "anchor"):
        table.add_column(col, justify="right")
    curve: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, parties, queries, batch, teachers, dataset in RUNS + (CURVE if args.curve else []):
            console.print(f"running: {label} ...")
            res = run(parties, queries, batch, teachers, dataset, Path(tmp))
            recs = res["parties"]
            qp = recs["party1"]["result"]
            t = qp["timing_seconds"]
            total = t["inference"] + t["argmax_2pc"] + t["pg_and_final_2pc"]
            aps = [r for r in recs.values() if (r.get("result") or {}).get("role") == "ap"]
            he_eval = max(r["result"]["timing_seconds"]["he_evaluate"] for r in aps)
            ap_bytes = sum(r["transport"]["sent_bytes"] for r in aps) / len(aps) / queries
            if batch == 1:
                per = [c["labelling_seconds"] for c in qp["curve"]]
                latency = f"{per[0]:.2f} s first, {statistics.median(per[1:]):.2f} s after"
            else:
                latency = f"{total / queries * 1e3:.0f} ms ({queries / total:.0f} labels/s)"
            table.add_row(label, str(queries), f"{total:.2f}", latency,
                          f"{t['inference']:.2f}", f"{t['argmax_2pc']:.2f}",
                          f"{t['pg_and_final_2pc']:.2f}", f"{he_eval:.2f}",
                          f"{ap_bytes / 1e3:,.1f} kB", "~3.0 s/query/AP (step 1a)")
            if (label, parties, queries, batch, teachers, dataset) in CURVE:
                curve.append((parties - 1, total, t["argmax_2pc"]))
    console.print(table)
    if curve:
        plot_curve(curve, ROOT / "benchmarks" / "capc_ap_curve.png")


def plot_curve(curve: list[tuple[int, float, float]], path: Path) -> None:
    """Labelling time and its argmax-2PC part against the number of APs, beside lines
    that grow linearly from the 1-AP point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n, total, argmax = zip(*curve, strict=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for ys, name, color in ((total, "labelling, end to end", "C0"),
                            (argmax, "argmax 2PCs after the last answer", "C1")):
        ax.plot(n, ys, marker="o", color=color, label=name)
        ax.plot(n, [ys[0] * k / n[0] for k in n], ls="--", color=color, alpha=0.5,
                label=f"{name.split(',')[0].split(' (')[0]}: linear in APs")
    ax.set(xlabel="answering parties (all processes on one 2-core machine)",
           ylabel="seconds for a batch of 64 queries", xscale="log", yscale="log")
    ax.set_xticks(n, [str(k) for k in n])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")

if __name__ == "__main__":
    main()
