"""Hash-Comb encode/decode throughput: our vectorized encoder beside the reference library.

Run: python -m benchmarks.bench_hashcomb [--n 1000000] [--ref-n 20000] [--levels 8]

The reference (``hashcomb`` 1.0.0) walks the tree per value in Python, so it is
timed on the first ``--ref-n`` of the same values and reported in values/s.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mpc import wire
from protocols.hashcomb import HashComb, aggregate_histograms

AIM_SPEEDUP = 1000.0


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="values for our encoder")
    ap.add_argument("--ref-n", type=int, default=20_000, help="values for the reference library")
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--owners", type=int, default=5, help="owners in the aggregation benchmark")
    args = ap.parse_args(argv)
    console = Console()
    L, lo, hi, delta = args.levels, -0.35, 0.35, 0.01
    # values drawn once; the reference sees a prefix of the very same array
    x = np.random.default_rng(0).uniform(lo, hi, args.n)
    xr = x[: args.ref_n]

    import hashcomb  # the reference library (test dependency)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = str(Path(tmp) / "configuration.pkl")  # it writes a pickle per construction
        t0 = time.perf_counter()
        ref_enc = hashcomb.Encoder(L, hi, lo, configPath=cfg, delta=delta, salt="s")
        ref_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_tokens = ref_enc.encodeArray(xr)
        ref_encode = time.perf_counter() - t0
        ref_dec = hashcomb.Decoder(cfg)
        t0 = time.perf_counter()
        ref_values = ref_dec.decodeArray(ref_tokens)
        ref_decode = time.perf_counter() - t0

    t0 = time.perf_counter()
    hc = HashComb(L, lo, hi, delta, key=secrets.token_bytes(32), p=0.3)
    keyed_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    compat = HashComb.compatible(L, lo, hi, delta, "s")
    compat_build = time.perf_counter() - t0
    # sanity: compatible mode reproduces the reference on the shared values
    assert compat.encode(xr).tolist() == [int(s) for s in ref_tokens]
    assert np.array_equal(compat.decode(ref_tokens, level=L), ref_values)

    tokens = hc.encode(x)
    ctokens = compat.encode(x)
    rtokens = hc.encode_randomized(x)
    rows = [
        ("encode leaf (keyed)", _best(lambda: hc.encode(x)), ref_encode),
        ("decode leaf (keyed)", _best(lambda: hc.decode(tokens)), ref_decode),
        ("encode leaf (compatible)", _best(lambda: compat.encode(x)), ref_encode),
        ("decode leaf (compatible)", _best(lambda: compat.decode(ctokens, level=L)), ref_decode),
        ("encode randomized level (OS rng)", _best(lambda: hc.encode_randomized(x)), None),
        ("decode randomized level", _best(lambda: hc.decode(rtokens)), None),
        (f"encode full path ({L} tokens/value)", _best(lambda: hc.encode_path(x)), None),
    ]
    table = Table(title=f"Hash-Comb throughput, L = {L}, {args.n:,} values "
                        f"(reference on {args.ref_n:,} of them)")
    for col in ("operation", "ours (values/s)", "reference (values/s)", "speed-up", "aim"):
        table.add_column(col, justify="right" if col != "operation" else "left")
    for name, ours_s, ref_s in rows:
        ours_rate = args.n / ours_s
        ref_rate = None if ref_s is None else args.ref_n / ref_s
        table.add_row(name, f"{ours_rate:,.0f}",
                      "-" if ref_rate is None else f"{ref_rate:,.0f}",
                      "-" if ref_rate is None else f"{ours_rate / ref_rate:,.0f}x",
                      "-" if ref_rate is None else f">= {AIM_SPEEDUP:,.0f}x")
    console.print(table)

    # aggregation: K owners' 1M-coordinate updates, summed without the key, decoded by an owner
    rng = np.random.default_rng(1)
    ups = [rng.normal(0, 0.1, args.n).astype(np.float32) for _ in range(args.owners)]
    t0 = time.perf_counter()
    hists = [hc.encode_update(u, clip=True) for u in ups]
    t_enc = time.perf_counter() - t0
    owner_bytes = len(wire.encode(hists[0].to_wire()))
    agg = aggregate_histograms(hists)
    t_agg = _best(lambda: aggregate_histograms(hists))
    agg_bytes = len(wire.encode(agg.to_wire()))
    t_dec = _best(lambda: hc.decode_update(agg))
    t2 = Table(title=f"Aggregation of {args.owners} owners x {args.n:,} coordinates (L = {L})")
    t2.add_column("step")
    t2.add_column("time", justify="right")
    t2.add_column("bytes on the wire", justify="right")
    t2.add_column("float32 update", justify="right")
    t2.add_row("owners encode (each)", f"{t_enc / args.owners * 1e3:,.0f} ms",
               f"{owner_bytes:,}", f"{4 * args.n:,}")
    t2.add_row("aggregator sums histograms", f"{t_agg * 1e3:,.0f} ms", f"{agg_bytes:,}",
               f"{4 * args.n:,}")
    t2.add_row("owner decodes aggregate", f"{t_dec * 1e3:,.0f} ms", "-", "-")
    console.print(t2)

    t3 = Table(title="Token table construction")
    t3.add_column("encoder")
    t3.add_column("time", justify="right")
    t3.add_row(f"reference hashcomb.Encoder (L = {L}, leaf table + pickle)", f"{ref_build * 1e3:,.1f} ms")
    t3.add_row(f"HashComb keyed (L = {L}, all {2 ** (L + 1) - 2} nodes)", f"{keyed_build * 1e3:,.1f} ms")
    t3.add_row(f"HashComb.compatible (L = {L}, all nodes)", f"{compat_build * 1e3:,.1f} ms")
    console.print(t3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
