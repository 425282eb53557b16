"""The embedded amqtt broker as an outsider and as a curious party see it: no anonymous
login, no login without the party's password, and the same topic rights as the
generated Mosquitto ACL (own inbox only, no writing into another deployment)."""

from __future__ import annotations

import itertools

import aiomqtt
import pytest

from parties.broker import EmbeddedBroker
from parties.broker_auth import may
from parties.broker_config import acl_text
from parties.identity import PrivateKeys, new_local_deployment
from tests.test_broker_config import first_message

PARTIES = [("alice", "owner"), ("bob", "owner"), ("carol", "aggregator")]


@pytest.fixture
def broker(tmp_path):
    b = EmbeddedBroker(auth_dir=tmp_path / "auth")
    deps = [new_local_deployment(tmp_path / run, PARTIES, b.url, name=run) for run in ("one", "two")]
    pw = {(d.name, n): PrivateKeys.load(tmp_path / d.name / "keys" / f"{n}.key").mqtt_password
          for d in deps for n in d.parties}
    with b:
        for d in deps:
            b.admit(d)
        yield b, deps, pw


def client(b: EmbeddedBroker, user: str | None = None, password: str | None = None):
    return aiomqtt.Client("127.0.0.1", b.port, username=user, password=password, timeout=5)


async def test_outsiders_cannot_log_in(broker):
    b, (one, two), pw = broker
    for user, password in [(None, None), ("alice", ""), ("alice", pw[("one", "bob")]),
                           ("mallory", pw[("one", "alice")]), ("admin", pw[("one", "alice")])]:
        with pytest.raises(aiomqtt.MqttError):
            async with client(b, user, password):
                pass
    async with client(b, "alice", pw[("one", "alice")]):
        pass


async def test_a_party_reads_only_its_inbox_and_writes_only_its_deployment(broker):
    b, (one, two), pw = broker
    async with (client(b, "alice", pw[("one", "alice")]) as alice,
                client(b, "bob", pw[("one", "bob")]) as bob,
                client(b, "alice", pw[("two", "alice")]) as alice2,
                client(b, *b.admin) as admin):
        await admin.subscribe("confidant/#", qos=1)
        await alice.subscribe(one.inbox_topic("alice"), qos=1)
        await alice2.subscribe(two.inbox_topic("alice"), qos=1)
        # bob snoops on alice's inbox: refused
        granted = await bob.subscribe(one.inbox_topic("alice"), qos=1)
        assert all(getattr(g, "value", g) == 0x80 for g in granted)
        await bob.publish(one.inbox_topic("alice"), b"for alice", qos=1)
        got = await first_message(alice, 5)
        assert got is not None and got.payload == b"for alice"
        assert await first_message(bob, 0.5) is None
        assert (await first_message(admin, 5)).payload == b"for alice"
        # bob of run 'one' writes into run 'two', into his own inbox, into alice's presence
        await bob.publish(two.inbox_topic("alice"), b"cross-run", qos=1)
        await bob.publish(one.inbox_topic("bob"), b"to myself", qos=1)
        await bob.publish(one.presence_topic("alice"), b"offline", qos=1)
        await bob.publish("elsewhere/topic", b"x", qos=1)
        assert await first_message(admin, 0.5) is None
        assert await first_message(alice2, 0.2) is None


def test_same_rights_as_the_mosquitto_acl(tmp_path):
    dep = new_local_deployment(tmp_path, PARTIES, "mqtt://127.0.0.1:1883", name="acl")
    rules: dict[str, set[tuple[str, str]]] = {}
    user = None
    for line in acl_text(dep).splitlines():
        if line.startswith("user "):
            user = line.split()[1]
        elif line.startswith("topic "):
            _, access, topic = line.split()
            rules.setdefault(user, set()).add((access, topic))
    topics = [f(p) for p in [*dep.parties, "zed"] for f in (dep.inbox_topic, dep.presence_topic)]
    for user, topic, write in itertools.product([*dep.parties, "zed"], topics, (False, True)):
        wanted = {"readwrite", "write" if write else "read"}
        expected = any(a in wanted and t == topic for a, t in rules.get(user, ()))
        assert may(dep, user, topic, write) == expected, (user, topic, write)
