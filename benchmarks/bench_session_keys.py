"""What per-run session keys cost a party: one ephemeral X25519 key per run, and per peer
two X25519 exchanges and two HKDF derivations (before: one exchange, two derivations).

    python -m benchmarks.bench_session_keys
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from rich.console import Console
from rich.table import Table

from parties.envelope import Sealer
from parties.identity import PrivateKeys, new_local_deployment

PEERS = 9


def _best(fn, repeat: int = 200) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    names = [(f"p{i}", "player") for i in range(PEERS + 1)]
    dep = new_local_deployment(run_dir, names, "mqtt://127.0.0.1:1883", name="bench")
    keys = {n: PrivateKeys.load(run_dir / "keys" / f"{n}.key") for n in dep.parties}
    others = {n: Sealer(dep, k, "s").ephemeral_pub for n, k in keys.items() if n != "p0"}

    def per_run() -> None:  # what a party does now when a run starts and its peers announce
        s = Sealer(dep, keys["p0"], "s")
        for peer, eph in others.items():
            s.meet(peer, eph)

    def static_only() -> None:  # the earlier derivation: static X25519 + HKDF per direction
        for peer in others:
            shared = keys["p0"].box_key.exchange(
                X25519PublicKey.from_public_bytes(dep.parties[peer].box_pub))
            for _ in range(2):
                HKDF(hashes.SHA256(), 32, salt=b"s", info=b"i").derive(shared)

    now, before = _best(per_run), _best(static_only)
    table = Table(title=f"session keys of one party with {PEERS} peers (best of 200)")
    table.add_column("derivation")
    table.add_column("time", justify="right")
    table.add_row("per run: ephemeral key + 2 X25519 + 2 HKDF per peer (this)", f"{now * 1e3:.2f} ms")
    table.add_row("before: static X25519 + 2 HKDF per peer", f"{before * 1e3:.2f} ms")
    Console().print(table)


if __name__ == "__main__":
    main()
