"""Hash-Comb encode/decode throughput: our vectorized encoder beside the reference library.

Run: python -m benchmarks.bench_hashcomb [--n 1000000] [--ref-n 20000] [--levels 8]
     python -m benchmarks.bench_hashcomb --fl-only       # just the federated round timing

The last table times rounds of the ``hcfl`` protocol (5 owners, in one process
over the in-memory Channel) beside plain float32 FedAvg on the same split.

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
from privacy.hashcomb_codec import HashComb, aggregate_histograms

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
    ap.add_argument("--fl-rounds", type=int, default=10, help="rounds in the FL timing")
    ap.add_argument("--fl-only", action="store_true", help="only the FL round timing")
    args = ap.parse_args(argv)
    console = Console()
    if args.fl_only:
        fl_round_time(console, args.owners, args.fl_rounds, args.levels)
        return 0
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
    fl_round_time(console, args.owners, args.fl_rounds, args.levels)
    return 0


def fl_round_time(console: Console, owners: int = 5, rounds: int = 10, levels: int = 8,
                  big: int = 1_000_000) -> None:
    """Per-round time of the hcfl protocol with ``owners`` owners (digits, MLP, in memory),
    beside plain FedAvg, plus what the Hash-Comb steps of a round cost for a ``big`` model."""
    import asyncio

    import protocols
    from mpc.channel import InMemoryNetwork
    from protocols import RoleContext
    from protocols.hashcomb_fl import decode_mean, node_labels

    parties = [(f"owner{i}", "owner") for i in range(1, owners + 1)] + [("aggregator", "aggregator")]
    roles = dict(parties)

    def run(protocol: str, params: dict, states: dict) -> tuple[dict, float]:
        net = InMemoryNetwork(list(roles))

        async def go():
            return await asyncio.gather(*(protocols.role_function(protocol, r)(
                RoleContext(net.channel(n), roles, params, states.get(n, {})))
                for n, r in parties))
        t0 = time.perf_counter()
        res = asyncio.run(go())
        return dict(zip(roles, res, strict=True)), time.perf_counter() - t0

    setup, _ = run("hcsetup", {"levels": levels}, {})
    states = {n: r.private for n, r in setup.items()}
    run("hcfl", {"rounds": 1}, states)  # warm-up: imports, data loading, first torch calls
    table = Table(title=f"hcfl: one round, {owners} owners, digits (MLP 64-32-10, 2,410 "
                        f"parameters), L = {levels}, one process, in-memory Channel")
    for col in ("mode", "s/round (wall, all parties)", "of which local training",
                "bytes sent/owner", "bytes returned/owner", "final accuracy"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for enc in ("hashcomb", "float"):
        res, wall = run("hcfl", {"rounds": rounds, "encoding": enc}, states)
        rs = [r for n, _ in parties if roles[n] == "owner" for r in res[n].public["rounds"]]
        train = sum(r["train_seconds"] for r in rs) / rounds
        first = res["owner1"].public["rounds"][0]
        table.add_row("Hash-Comb tokens" if enc == "hashcomb" else "plain FedAvg (float32)",
                      f"{wall / rounds * 1e3:,.1f} ms", f"{train * 1e3:,.1f} ms",
                      f"{first['bytes_sent']:,}", f"{first['bytes_received']:,}",
                      f"{res['owner1'].public['final_accuracy']:.3f}")
    console.print(table)

    # the per-round Hash-Comb work for a 1M-parameter model (no training)
    from privacy.hashcomb_codec import HashCombParams
    from privacy.hashcomb_tokens import TokenCounts, TokenPermutation, pack_upload, unpack_upload
    hp = HashCombParams(levels, -0.35, 0.35, 0.01)
    key = secrets.token_bytes(32)
    rng = np.random.default_rng(secrets.randbits(64))
    common = rng.normal(0, 0.05, big)   # owners' updates agree up to their own noise
    ups = [common + rng.normal(0, 0.005, big) for _ in range(owners)]
    t_quant = _best(lambda: node_labels(hp, ups[0], "stochastic", rng))
    perm = TokenPermutation(key, big, levels)
    labels = [node_labels(hp, u, "stochastic", rng) for u in ups]
    t_perm = _best(lambda: perm.forward(labels[0]))
    uploads = [pack_upload(perm.forward(lab), levels) for lab in labels]
    t_agg = _best(lambda: TokenCounts.of(np.stack([unpack_upload(u, levels, big) for u in uploads]),
                                         levels).to_wire())
    reply = TokenCounts.of(np.stack([unpack_upload(u, levels, big) for u in uploads]), levels).to_wire()

    def decode():
        agg = TokenCounts.from_wire(reply, dim=big, owners=owners, bits=levels)
        coords = agg.coordinates()
        return decode_mean(hp, perm.inverse(agg.tokens, coords), agg.counts, coords, big, owners)
    t_dec = _best(decode)
    t4 = Table(title=f"Hash-Comb work of one round for a {big:,}-parameter model, {owners} owners "
                     "(synthetic updates: common part + own noise)")
    t4.add_column("step")
    t4.add_column("time", justify="right")
    for name, t in (("owner: stochastic rounding to leaves", t_quant),
                    ("owner: keyed per-coordinate permutation", t_perm),
                    ("aggregator: count and code", t_agg),
                    ("owner: decode counts, invert, mean", t_dec)):
        t4.add_row(name, f"{t * 1e3:,.0f} ms")
    t4.add_row("bytes: owner upload / aggregate / float32",
               f"{len(uploads[0]):,} / {len(wire.encode(reply)):,} / {4 * big:,}")
    console.print(t4)


if __name__ == "__main__":
    raise SystemExit(main())
