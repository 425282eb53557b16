"""What the Hash-Comb aggregator process receives, after decryption, in a real hcsetup
between processes: the public hyper-parameters and their fingerprint, and nothing derived
from the secret (no key, no seed, no share, so no token table it could decode).

Played with the aggregator's full view (every payload it opened, recorded by
tests/spy_party.py), and checked against every owner's secret state. A planted leak
(tests/leaky_hcsetup.py: shares smuggled inside the allowed 'params' message, which no
conformance rule or broker recording can catch) must be found."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgpack
import pytest

from tests import test_parties_e2e as e2e
from tests.test_parties_e2e import Session, owners, state

broker_factory = e2e.broker_factory
SPY = [sys.executable, "-m", "tests.spy_party"]


def leaves(obj) -> list:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in leaves(k) + leaves(v)]
    if isinstance(obj, list | tuple):
        return [x for v in obj for x in leaves(v)]
    return [obj]


def received(workdir: Path, name: str) -> list[tuple[str, str, object]]:
    path = workdir / "spy" / f"{name}.msgpack"
    if not path.exists():
        return []
    out = []
    for sender, kind, payload in msgpack.Unpacker(open(path, "rb"), raw=False):
        if payload:  # an end-of-session marker has none
            out.append((sender, kind, msgpack.unpackb(payload, raw=False, strict_map_key=False)))
    return out


def secrets_found(view: list, secrets: dict[str, list]) -> list[str]:
    """Which secrets appear anywhere in the view (whole values or inside byte strings)."""
    seen = [x for _, _, payload in view for x in leaves(payload)]
    found = []
    for owner, values in secrets.items():
        for value in values:
            if isinstance(value, bytes | bytearray):
                hit = any(isinstance(x, bytes | bytearray) and bytes(value) in bytes(x) for x in seen)
                hit = hit or any(isinstance(x, str) and bytes(value).hex() in x for x in seen)
            else:
                hit = value in seen
            if hit:
                found.append(f"{owner}: {str(value)[:24]}")
    return found


@pytest.mark.parametrize("planted_leak", [False, True], ids=["honest", "planted-leak"])
def test_the_aggregator_receives_nothing_derived_from_the_secret(broker_factory, planted_leak,
                                                                  monkeypatch):
    if planted_leak:
        monkeypatch.setenv("CONFIDANT_PROTOCOLS", os.environ["CONFIDANT_PROTOCOLS"]
                           + ",hcsetup=tests.leaky_hcsetup")
    b = broker_factory("amqtt", owners(3))
    names = list(b.deployment.parties)
    results = Session(b.run_dir, "hcsetup", {"levels": 6, "threshold": 2}, names,
                      command=SPY).wait()
    owner_names = [n for n in names if n != "aggregator"]
    assert all(results[n]["ok"] for n in owner_names), {n: (r.get("error"), r["log"][-1500:]) for n, r in results.items()}
    secrets = {}
    for n in owner_names:
        st = state(b.run_dir, n)
        secrets[n] = [st["hashcomb_key"], st["hashcomb_seed"],
                      *[blk for blk in st["hashcomb_share"]["blocks"]]]
    # the owners did exchange shares (so the spy sees them where they belong) ...
    assert any(kind == "hcsetup.open" for _, kind, _ in received(b.run_dir, owner_names[0]))
    view = received(b.run_dir, "aggregator")
    assert {kind for _, kind, _ in view} == {"hcsetup.params"}
    found = secrets_found(view, secrets)
    if planted_leak:
        assert found, "the planted leak went unnoticed: this test could not fail"
    else:
        assert not found, f"the aggregator received secrets: {found}"
