"""Secret-sharing core and the CrypTen 2PC argmax (in-process, in-memory Channel).

Run: python -m benchmarks.bench_mpc

The 2PC rows count what one party sends: messages to its peer, dealer round
trips, and payload bytes (peer and dealer traffic), as the in-memory Channel
runs the real wire codec.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from mpc import additive, encoding, shamir
from mpc.channel import InMemoryNetwork
from mpc.twopc import TwoParty, serve_dealer, share_of, tensor_from_shares


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _argmax(share):
    return share_of(tensor_from_shares(share).argmax(dim=-1, one_hot=True))


async def _argmax_2pc(batch: int, classes: int = 10) -> dict:
    net = InMemoryNetwork(["alice", "bob", "dealer"])
    logits = np.random.default_rng(0).normal(size=(batch, classes))
    s0, s1 = additive.share(encoding.encode(logits), 2)

    async def party(name, peer, share):
        async with TwoParty(net.channel(name), peer, "dealer") as tp:
            out = await tp.run(_argmax, share)
            return out, tp.stats

    t = time.perf_counter()
    (r0, stats), (r1, _), _ = await asyncio.gather(
        party("alice", "bob", s0), party("bob", "alice", s1),
        serve_dealer(net.channel("dealer"), ("alice", "bob")))
    seconds = time.perf_counter() - t
    onehot = encoding.decode(additive.reconstruct([r0, r1]))
    assert (onehot.argmax(-1) == logits.argmax(-1)).all()
    return {"seconds": seconds, "messages": stats["messages"], "tuples": stats["dealer_requests"],
            "dealer": stats["dealer_round_trips"], "bytes": net.channel("alice").sent_bytes}


def main() -> None:
    console = Console(width=140)
    table = Table(title="mpc/: sharing throughput and the 2PC argmax")
    for col in ("operation", "size", "time", "throughput", "notes"):
        table.add_column(col)

    x = np.random.default_rng(0).normal(size=1_000_000)
    ring = encoding.encode(x)
    t_enc = _best(lambda: encoding.encode(x))
    table.add_row("fixed-point encode", "1M floats", f"{t_enc * 1e3:.1f} ms", f"{1e6 / t_enc / 1e6:.0f} M/s", "")
    for n in (2, 5):
        t_share = _best(lambda n=n: additive.share(ring, n))
        parts = additive.share(ring, n)
        t_rec = _best(lambda parts=parts: additive.reconstruct(parts))
        table.add_row(f"additive share (n={n})", "1M elements", f"{t_share * 1e3:.1f} ms",
                      f"{1e6 / t_share / 1e6:.1f} M/s", "OS randomness")
        table.add_row(f"additive reconstruct (n={n})", "1M elements", f"{t_rec * 1e3:.1f} ms",
                      f"{1e6 / t_rec / 1e6:.0f} M/s", "")

    secrets_ = [i * 7919 + 1 for i in range(1000)]
    t = time.perf_counter()
    shared = [shamir.share(s, 10, 6) for s in secrets_]
    t_split = time.perf_counter() - t
    t = time.perf_counter()
    for sh in shared:
        shamir.reconstruct(sh[2:8])
    t_comb = time.perf_counter() - t
    table.add_row("Shamir share (n=10, t=6)", "1,000 secrets", f"{t_split * 1e3:.0f} ms",
                  f"{1000 / t_split:,.0f} secrets/s", "pycryptodome, GF(2^128)")
    table.add_row("Shamir reconstruct (6 shares)", "1,000 secrets", f"{t_comb * 1e3:.0f} ms",
                  f"{1000 / t_comb:,.0f} secrets/s", "")

    for batch in (1, 1000):
        first = asyncio.run(_argmax_2pc(batch))  # first call: tuples one round trip each
        r = asyncio.run(_argmax_2pc(batch))       # later calls: the dealer batches them
        table.add_row("2PC argmax one-hot", f"{batch}x10", f"{r['seconds'] * 1e3:.0f} ms",
                      f"{batch / r['seconds']:,.0f} rows/s",
                      f"{r['messages']} msgs to peer, {r['tuples']} tuples in {r['dealer']} dealer "
                      f"round trip(s) (first call {first['dealer']}, {first['seconds'] * 1e3:.0f} ms), "
                      f"{r['bytes'] / 1e3:,.1f} kB sent by one party")
    console.print(table)


if __name__ == "__main__":
    main()
