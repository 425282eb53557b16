"""parties/mqtt_channel.py enforces a protocol's conformance rules on both sides, over
the real embedded broker: a party cannot send what its role may not, and an
authentic message that breaks the rules (a peer running modified code) is
refused, recorded as rejected and never delivered, while the session goes on."""

from __future__ import annotations

import asyncio
import json

import pytest

from mpc.channel import Conformance, PeerTimeout, RuleViolation
from parties.broker import EmbeddedBroker, free_port
from parties.identity import Deployment, PrivateKeys, new_local_deployment
from parties.mqtt_channel import MqttChannel
from parties.transcript import Transcript, transcript_path

ROLES = {"qp": "qp", "ap": "ap"}
RULES = {("qp", "ap", "query"), ("ap", "qp", "answer")}


@pytest.fixture
def deployment(tmp_path):
    port = free_port()
    dep = new_local_deployment(tmp_path, list(ROLES.items()), f"mqtt://127.0.0.1:{port}",
                               name="conf")
    broker = EmbeddedBroker(port, auth_dir=tmp_path / "broker-auth").start()
    broker.admit(dep)
    yield Deployment.load(tmp_path / "deployment.toml")
    broker.close()


async def _channels(run_dir, dep: Deployment, enforce: dict[str, bool]) -> dict[str, MqttChannel]:
    chans = {}
    for name in ROLES:
        keys = PrivateKeys.load(run_dir / "keys" / f"{name}.key")
        ch = MqttChannel(dep, keys, "s1", Transcript(transcript_path(run_dir, name), name,
                                                     keys.sign_key))
        if enforce[name]:
            ch.conformance = Conformance("capc", RULES, ROLES)
        chans[name] = await ch.start()
    await asyncio.gather(*(c.wait_for_peers(30) for c in chans.values()))
    return chans


@pytest.mark.parametrize("enforced", [True, False])
async def test_receiver_refuses_an_authentic_message_outside_the_rules(tmp_path, deployment,
                                                                       enforced):
    # the AP runs modified code (no rules on its side); the QP enforces them unless
    # the defence is switched off, in which case the message gets through
    chans = await _channels(tmp_path, deployment, {"qp": enforced, "ap": False})
    qp, ap = chans["qp"], chans["ap"]
    try:
        await ap.send("qp", "capc.reveal", {"label": 3})     # no rule lets an AP send 'reveal'
        await ap.send("qp", "capc.answer", {"y": 1})         # allowed: still delivered after it
        assert await qp.recv("ap", "capc.answer", 30) == {"y": 1}
        if enforced:
            with pytest.raises(PeerTimeout):
                await qp.recv("ap", "capc.reveal", 1)
            assert qp.rejected == 1
        else:
            assert await qp.recv("ap", "capc.reveal", 30) == {"label": 3}
    finally:
        for c in chans.values():
            await c.close()
    lines = [json.loads(x) for x in (tmp_path / "transcripts" / "qp.jsonl").read_text().splitlines()]
    rejected = [ln for ln in lines if ln.get("event") == "rejected"]
    if enforced:
        assert [(r["reason"], r["header"]["step"], r["header"]["sender"]) for r in rejected] == \
            [("conformance", "reveal", "ap")]
    else:
        assert rejected == []


async def test_sender_cannot_break_the_rules(tmp_path, deployment):
    chans = await _channels(tmp_path, deployment, {"qp": True, "ap": True})
    try:
        with pytest.raises(RuleViolation, match="'ap' \\(ap\\) send 'reveal' to a 'qp'"):
            await chans["ap"].send("qp", "capc.reveal", {"label": 3})
        with pytest.raises(RuleViolation, match="not a message of protocol 'capc'"):
            await chans["ap"].send("qp", "hcsetup.answer", {})
        assert chans["ap"].sent_messages == 0   # nothing left the party
    finally:
        for c in chans.values():
            await c.close()


async def test_a_message_the_broker_lost_is_fetched_again_and_order_is_kept(tmp_path, deployment):
    """The broker acknowledges the QP's third message and never delivers it (seen in CI:
    a 2PC read a later message in its place, desynchronised and hung). The AP holds what
    comes after the gap, asks again, and the protocol reads every message in order."""
    chans = await _channels(tmp_path, deployment, {"qp": False, "ap": False})
    qp, ap = chans["qp"], chans["ap"]
    publish, lost = qp._publish, []

    async def lossy(to, out):
        if out.seq == 2 and not lost:
            lost.append(out.seq)
            out.acked = True      # the broker took it: no re-send on reconnect would save it
            return
        await publish(to, out)

    qp._publish = lossy
    try:
        for i in range(5):
            await qp.send("ap", "capc.query", {"i": i})
        got = [await ap.recv("qp", "capc.query", 15) for _ in range(5)]
    finally:
        for c in chans.values():
            await c.close()
    assert lost == [2]
    assert got == [{"i": i} for i in range(5)]
