"""Benchmark he/: CryptoNets-shaped model on 28x28 and the digits MLP.

    python -m benchmarks.bench_he [--batch N]

Per answering party: single-query latency (encrypt not included; evaluation on
the public context; first query and later ones, which reuse the cached encoded
diagonals), batched throughput with a full batch of N/2 queries, bytes
per query in each direction, key generation time and public context size.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import he


def cryptonets() -> nn.Module:
    # conv 5 filters 5x5 stride 2 (padding 1 -> 5x13x13 = 845), square, dense 100, square, dense 10
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 5, 5, stride=2, padding=1), he.Square(), nn.Flatten(),
                         nn.Linear(845, 100), he.Square(), nn.Linear(100, 10)).eval()


def digits_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), he.Square(), nn.Linear(32, 10)).eval()


def measure(name: str, model: nn.Module, shape: tuple[int, ...], batch: int | None) -> dict:
    plan = he.compile(model, shape)
    t = time.perf_counter()
    keys = he.keygen(plan)
    keygen_s = time.perf_counter() - t
    pub = keys.public()
    ctx_single = len(pub.serialize())
    ctx_batch = len(keys.public(galois=False).serialize())

    # First query: includes encoding the plan's diagonals (cached per plan and CKKS
    # preset); later queries, from any querying party with that preset, reuse them.
    single = []
    for _ in range(3):
        x1 = torch.rand(1, *shape)
        q1 = he.encrypt(keys, x1).serialize()
        enc1 = he.EncryptedBatch.load(pub, q1)
        t = time.perf_counter()
        out1, r1 = plan.evaluate(enc1)
        single.append(time.perf_counter() - t)
    single_s, single_cold = min(single[1:]), single[0]
    a1 = out1.serialize()
    with torch.no_grad():
        err1 = float((he.reveal(keys, out1, r1) - model(x1).double()).abs().max())

    nb = batch or keys.params.slots
    xb = torch.rand(nb, *shape)
    qb = he.encrypt(keys, xb, packing="batch").serialize()
    encb = he.EncryptedBatch.load(pub, qb)
    t = time.perf_counter()
    outb, rb = plan.evaluate(encb)
    batch_s = time.perf_counter() - t
    ab = outb.serialize()
    # What the mask (uniform polynomial + re-randomization + exact share decoding) costs:
    # the same evaluation unmasked, and the QP's plain decryption of it.
    t = time.perf_counter()
    plainb, _ = plan.evaluate(encb, mask=False)
    unmasked_s = time.perf_counter() - t
    t = time.perf_counter()
    he.decrypt_share(keys, outb)
    share_s = time.perf_counter() - t
    t = time.perf_counter()
    he.decrypt(keys, plainb)
    decrypt_s = time.perf_counter() - t
    with torch.no_grad():
        ref = model(xb).double()
    got = he.reveal(keys, outb, rb)
    return {
        "name": name, "plan": plan, "params": keys.params, "keygen_s": keygen_s,
        "ctx_single": ctx_single, "ctx_batch": ctx_batch, "single_s": single_s, "single_cold": single_cold,
        "single_up": len(q1), "single_down": len(a1), "err1": err1, "batch": nb,
        "batch_s": batch_s, "unmasked_s": unmasked_s, "share_s": share_s, "decrypt_s": decrypt_s,
        "qps": nb / batch_s, "batch_up": len(qb) / nb, "batch_down": len(ab) / nb,
        "errb": float((got - ref).abs().max()),
        "agree": float((got.argmax(1) == ref.argmax(1)).double().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=None, help="queries per batch (default N/2)")
    args = ap.parse_args()
    console = Console()
    rows = []
    for name, model, shape in [("CryptoNets 28x28", cryptonets(), (1, 28, 28)),
                               ("digits MLP 64-32-10", digits_mlp(), (64,))]:
        console.print(f"[bold]{name}[/bold]: measuring ...")
        rows.append(measure(name, model, shape, args.batch))
    table = Table(title="he/ (CKKS via TenSEAL's SEAL bindings), one answering party, this machine")
    table.add_column("metric")
    for r in rows:
        table.add_column(r["name"], justify="right")
    table.add_column("anchor / aim")

    def add(label: str, fmt, anchor: str = "") -> None:
        table.add_row(label, *[fmt(r) for r in rows], anchor)

    add("depth / CKKS preset", lambda r: f"{r['plan'].depth} / N={r['params'].poly_degree}, "
        f"2^{r['params'].scale_bits}")
    add("single-query latency (warm, best of 2)", lambda r: f"{r['single_s']:.2f} s",
        "CaPC ref ~3.0 s (CryptoNets-ReLU); aim < 1.0 s")
    add("single-query latency (first query)", lambda r: f"{r['single_cold']:.2f} s",
        "includes encoding the plan's diagonals once")
    add("single: bytes up / down", lambda r: f"{r['single_up'] / 1e3:.0f} kB / {r['single_down'] / 1e3:.0f} kB")
    add("batch size", lambda r: f"{r['batch']}")
    add("batch throughput", lambda r: f"{r['qps']:.1f} q/s ({r['batch_s']:.1f} s)",
        "aim >= 200 q/s CryptoNets")
    add("batch eval masked / unmasked", lambda r: f"{r['batch_s']:.2f} s / {r['unmasked_s']:.2f} s",
        "mask + re-randomization + AP's share decoding")
    add("QP: decrypt_share / plain decrypt", lambda r: f"{r['share_s']:.2f} s / {r['decrypt_s']:.2f} s",
        "exact Z_2^64 shares of all used slots")
    add("batch: bytes/query up / down", lambda r: f"{r['batch_up'] / 1e3:.1f} kB / {r['batch_down']:.0f} B")
    add("keygen", lambda r: f"{r['keygen_s']:.2f} s")
    add("public context (with / without Galois)",
        lambda r: f"{r['ctx_single'] / 1e6:.1f} MB / {r['ctx_batch'] / 1e6:.1f} MB")
    add("max |error| single / batch", lambda r: f"{r['err1']:.1e} / {r['errb']:.1e}")
    add("argmax agreement (batch)", lambda r: f"{r['agree']:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
