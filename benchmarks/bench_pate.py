"""PATE accounting cost per query, as the privacy guardian pays it.

Run: python -m benchmarks.bench_pate
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parties.ledger import BudgetLedger
from privacy.pate import NoiseSource, PateAccountant, confident_gnmax_noise, gnmax_noise

VOTES = [180, 40, 10, 5, 5, 4, 3, 2, 1, 0]


def _per_call(fn: Callable[[], object], repeat: int) -> float:
    """Median over 5 runs of the mean time per call, in microseconds."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        runs.append((time.perf_counter() - t) / repeat * 1e6)
    return sorted(runs)[2]


def main() -> None:
    acc = PateAccountant()
    secure = NoiseSource.secure()

    def guardian_step() -> None:  # what-if check, then charge
        acc.epsilon_after_confident_gnmax(200.0, 40.0, 1e-6)
        acc.add_confident_gnmax(None, 300, 200.0, 40.0, answered=True)

    rows = [
        ("add_gnmax, data-independent", _per_call(lambda: acc.add_gnmax(None, 40.0), 2000),
         "well under 1000 us"),
        ("add_confident_gnmax, data-independent",
         _per_call(lambda: acc.add_confident_gnmax(None, 300, 200.0, 40.0, answered=True), 2000),
         "well under 1000 us"),
        ("epsilon() (improved conversion)", _per_call(lambda: acc.epsilon(1e-6), 2000),
         "well under 1000 us"),
        ("guardian step: worst-case what-if + charge", _per_call(guardian_step, 2000),
         "well under 1000 us"),
        ("add_confident_gnmax, DATA-DEPENDENT (10 classes)",
         _per_call(lambda: acc.add_confident_gnmax(VOTES, 300, 200.0, 40.0,
                                                   data_dependent=True), 300), "(simulation)"),
        ("gnmax_noise(10), reused secure source", _per_call(lambda: gnmax_noise(10, 40.0, secure),
                                                            2000), "-"),
        ("confident_gnmax_noise(10), fresh OS-seeded source",
         _per_call(lambda: confident_gnmax_noise(10, 200.0, 40.0), 2000), "-"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ledger = BudgetLedger.create(Path(tmp) / "ledger.jsonl", epsilon_budget=1e9, delta=1e-6)

        def ledger_step() -> None:
            d = ledger.request_confident_gnmax(200.0, 40.0)
            ledger.settle(d.seq, answered=False)

        rows.append(("ledger request + settle (2 fsynced entries)", _per_call(ledger_step, 20),
                     "durability-bound (fsync)"))
        ledger.close()

    one = PateAccountant()
    one.add_gnmax(None, 40.0)
    table = Table(title="PATE accounting cost per query (this machine)")
    table.add_column("operation")
    table.add_column("ours (us/query)", justify="right")
    table.add_column("aim / anchor", justify="right")
    for name, us, aim in rows:
        table.add_row(name, f"{us:.1f}", aim)
    table.add_row("check: 1 GNMax answer, sigma=40, delta=1e-6 (classic)",
                  f"eps={one.epsilon(1e-6, 'classic'):.4f}", "eps=0.186")
    table.add_row("check: 1 GNMax answer, sigma=40, delta=1e-6 (improved)",
                  f"eps={one.epsilon(1e-6, 'improved'):.4f}", "eps=0.142")
    Console().print(table)


if __name__ == "__main__":
    main()
