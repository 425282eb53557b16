"""Faults between real party processes: bad input injected into an inbox, a party
SIGKILLed mid-protocol, the broker killed and restarted mid-protocol; on the
embedded amqtt broker and on Mosquitto with the generated passwords and ACL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter

import aiomqtt
import pytest

from mpc import wire
from parties.audit import audit_run
from parties.envelope import Sealer
from parties.identity import Deployment, PrivateKeys
from tests import test_parties_e2e as e2e
from tests.test_parties_e2e import BROKERS, Session

broker_factory = e2e.broker_factory  # the shared pytest fixture

PLAYERS = [("p1", "player"), ("p2", "player")]
MAX_BYTES = 2**18


def transcript(run_dir, name: str) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "transcripts" / f"{name}.jsonl").read_text().splitlines()]


def check_pingpong(results: dict[str, dict], count: int) -> None:
    for name, rec in results.items():
        assert rec["ok"] and rec["exit"] == 0, f"{name}: {rec.get('error')}\n{rec['log'][-3000:]}"
        assert all(got == list(range(count)) for got in rec["result"]["received"].values())


def outsider_envelope(dep: Deployment, session: str, to: str) -> bytes:
    """A well-formed, validly signed envelope from 'mallory', who is not in the deployment."""
    mallory = PrivateKeys.generate("mallory")
    doc = dep.to_dict()
    doc["party"].append(mallory.card("player").to_toml())
    wider = Deployment.from_dict(doc)
    sealer = Sealer(wider, mallory, session)
    sealer.meet(to, Sealer(wider, mallory, session).ephemeral_pub)  # any key: it never decrypts
    return sealer.seal(to, "pingpong", "ball", wire.encode({"n": 0})).data


async def inject(broker, session: str, victim: str, other: str) -> dict[str, bytes]:
    """Capture one real envelope to each player, then push seven kinds of bad input into
    the victim's inbox. Returns what was sent, by the reason it must be refused for."""
    dep = broker.deployment
    async with aiomqtt.Client(**broker.client_args(), identifier="injector") as c:
        await c.subscribe(dep.inbox_topic(victim), qos=1)
        await c.subscribe(dep.inbox_topic(other), qos=1)
        captured: dict[str, bytes] = {}
        async with asyncio.timeout(60):
            async for m in c.messages:
                captured.setdefault(str(m.topic).rsplit("/", 1)[-1], bytes(m.payload))
                if len(captured) == 2:
                    break
        real = captured[victim]
        header, nonce, ciphertext, sig = wire.decode(real)
        bad = {
            "malformed/garbage": os.urandom(300),
            "malformed/truncated": real[: len(real) // 2],
            "signature": wire.encode([header, nonce, ciphertext, bytes([sig[0] ^ 1]) + sig[1:]]),
            "unknown-sender": outsider_envelope(dep, session, victim),
            "duplicate": real,                       # a replay of a message already delivered
            "oversize": os.urandom(MAX_BYTES + 1000),
            "recipient": captured[other],            # a real envelope, for the other player
        }
        for data in bad.values():
            await c.publish(dep.inbox_topic(victim), data, qos=1)
    return bad


@pytest.mark.parametrize("kind", BROKERS)
def test_bad_input_rejected_protocol_completes(kind, broker_factory):
    b = broker_factory(kind, PLAYERS, max_message_bytes=MAX_BYTES)
    count = 40
    s = Session(b.run_dir, "pingpong", {"count": count, "sleep": 0.04}, ["p1", "p2"])
    try:
        bad = asyncio.run(inject(b, s.session, "p1", "p2"))
        results = s.wait()
    finally:
        s.kill()
    check_pingpong(results, count)
    rejected = [ln for ln in transcript(b.run_dir, "p1") if ln["event"] == "rejected"]
    assert Counter(ln["reason"] for ln in rejected) == Counter(k.split("/")[0] for k in bad)
    assert not any(ln["event"] == "rejected" for ln in transcript(b.run_dir, "p2"))
    assert results["p1"]["transport"]["rejected"] == len(bad)
    assert results["p1"]["log"].count("rejected a message") >= len(bad) - 1  # duplicates: debug
    report = audit_run(b.run_dir)
    assert report.ok, [i for i in report.errors]
    assert any(i.code == "rejected" and i.party == "p1" for i in report.issues)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("kind", BROKERS)
def test_killed_party_is_named_within_seconds(kind, broker_factory):
    players = [("p1", "player"), ("p2", "player"), ("p3", "player")]
    b = broker_factory(kind, players)
    s = Session(b.run_dir, "pingpong", {"count": 400, "sleep": 0.05}, ["p1", "p2", "p3"])
    try:
        s.wait_for_log("p2", r"round 10/")
        os.killpg(s.procs["p2"].pid, signal.SIGKILL)
        killed = time.monotonic()
        for name in ("p1", "p3"):
            s.procs[name].wait(timeout=30)
        elapsed = time.monotonic() - killed
        results = {n: s.result(n) for n in ("p1", "p3")}
    finally:
        s.kill()
    assert elapsed < 5, f"survivors took {elapsed:.1f} s to stop"
    for name, rec in results.items():
        assert rec["exit"] == 1 and not rec["ok"]
        assert "party 'p2' went offline" in rec["error"], (name, rec["error"])
        assert rec["fault"] == "peer:p2"
    s.procs["p2"].wait()
    assert all(_gone(p.pid) for p in s.procs.values()), "a party process was left behind"


@pytest.mark.parametrize("kind", BROKERS)
def test_broker_restart_mid_protocol(kind, broker_factory):
    b = broker_factory(kind, PLAYERS)
    count = 60
    s = Session(b.run_dir, "pingpong", {"count": count, "sleep": 0.05}, ["p1", "p2"])
    try:
        s.wait_for_log("p1", r"round 10/")
        b.kill()
        time.sleep(0.5)
        b.start()
        results = s.wait()
    finally:
        s.kill()
    check_pingpong(results, count)
    assert all("reconnected to the broker" in rec["log"] for rec in results.values())
    report = audit_run(b.run_dir)
    assert report.ok, [i for i in report.errors]
