"""A FedAvg round of 100 light clients with SecAgg+ over one Mosquitto, seconds per stage.

Run: python -m benchmarks.bench_fedavg_scale [--clients 100] [--dim 10000] [--rounds 2]

Light clients (`run_parties.py fedavg --synthetic-dim`): no data, no training, a public
synthetic update each; each has its own identity, keys, transcript and MQTT connection,
25 to an OS process. Every message is a signed, end-to-end encrypted envelope through a
local Mosquitto (anonymous on 127.0.0.1; the embedded amqtt broker does not take 100
connections at once here). The aggregate is checked against the plain mean.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--dim", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if not Path(MOSQUITTO).exists():
        console.print(f"Mosquitto not installed ({MOSQUITTO}): `make bench` installs it")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
        broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, str(ROOT / "run_parties.py"), "--runs-dir", tmp, "--broker",
                 f"mqtt://127.0.0.1:{port}", "fedavg", "--clients", str(args.clients), "--rounds",
                 str(args.rounds), "--synthetic-dim", str(args.dim), "--clients-per-process", "25",
                 "--no-baseline"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
            wall = time.perf_counter() - t0
        finally:
            broker.terminate()
            broker.wait()
        if out.returncode != 0:
            console.print(out.stdout[-3000:], out.stderr[-2000:])
            return 1
        session = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "results.json").read_text())
    server = session["parties"]["server"]["result"]["rounds"]
    clients = [r["result"] for n, r in session["parties"].items() if n != "server"]
    table = Table(title=f"SecAgg+ round, {args.clients} light clients (25 per process), d = {args.dim:,}, "
                        f"one Mosquitto; mean over {args.rounds} rounds")
    for col in ("party", "stage", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    stages = list(clients[0]["rounds"][0]["stages"])
    for stage in stages:
        vals = [r["stages"][stage] for c in clients for r in c["rounds"]]
        table.add_row("client (mean)", stage.replace("_", " "), f"{sum(vals) / len(vals):.3f}")
    for stage in server[0]["stages"]:
        vals = [r["stages"][stage] for r in server]
        table.add_row("server", stage.replace("_", " "), f"{sum(vals) / len(vals):.3f}")
    table.add_row("server", "whole round", f"{sum(r['seconds'] for r in server) / len(server):.3f}")
    console.print(table)
    sent = sum(session["parties"][n]["transport"]["sent_messages"] for n in session["parties"])
    console.print(f"{sent:,} messages in {args.rounds} rounds; max error of the aggregate against the "
                  f"plain mean {max(r['max_error'] for r in server):.2e} (quantization step "
                  f"{server[0]['quantization_step']:.2e}); whole run {wall:.0f} s with start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
