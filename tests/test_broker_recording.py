"""What the broker sees: a subscriber on '#' with full rights records every payload the
broker relays during hcsetup and a 2PC argmax between processes, and no secret (the
Hash-Comb key, seed and shares, the 2PC inputs, the learned argmax) is in any of it.

The payloads are made by the parties, not the broker, so each protocol is recorded
on one broker: hcsetup on the embedded amqtt (anonymous recorder), the 2PC on
Mosquitto with the generated ACL (recorder with the admin credentials)."""

from __future__ import annotations

import asyncio
import json
import threading

import aiomqtt
import numpy as np
import pytest

from mpc import encoding, wire
from parties.envelope import body_digest
from tests import test_parties_e2e as e2e
from tests.test_parties_e2e import (
    ARGMAX_PARTIES,
    check_argmax,
    check_hcsetup,
    holder_inputs,
    owners,
    run_ok,
    state,
)

broker_factory = e2e.broker_factory  # the shared pytest fixture


class Recorder:
    """Subscribes to '#' in a thread of its own and keeps (topic, payload) of everything."""

    def __init__(self, broker: e2e.Broker):
        self.broker = broker
        self.messages: list[tuple[str, bytes]] = []
        self.granted: list = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with aiomqtt.Client(**self.broker.client_args(), identifier="recorder",
                                      max_queued_incoming_messages=0) as c:
                sub = await c.subscribe("#", qos=1)
                self.granted = [getattr(g, "value", g) for g in sub]
                self._ready.set()
                reader = asyncio.ensure_future(self._read(c))
                await self._stop.wait()
                await asyncio.sleep(0.3)  # what is still in flight
                reader.cancel()
        except BaseException as e:  # surfaced in the test thread
            self._error = e
            self._ready.set()

    async def _read(self, c: aiomqtt.Client) -> None:
        async for m in c.messages:
            self.messages.append((str(m.topic), bytes(m.payload)))

    def __enter__(self) -> Recorder:
        self._thread.start()
        assert self._ready.wait(15), "recorder did not connect"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def inbox_payloads(self) -> list[bytes]:
        return [p for t, p in self.messages if "/inbox/" in t]


def assert_recorded_everything(rec: Recorder, run_dir) -> None:
    """Every envelope any party sent went past the recorder (it saw all there was to see)."""
    seen = set()
    for data in rec.inbox_payloads():
        _, nonce, ciphertext, _ = wire.decode(data)
        seen.add(body_digest(nonce, ciphertext))
    sent = {json.loads(x)["digest"] for f in (run_dir / "transcripts").glob("*.jsonl")
            for x in f.read_text().splitlines() if json.loads(x)["event"] == "sent"}
    assert sent and sent <= seen
    assert any("/presence/" in t for t, _ in rec.messages)


def assert_absent(blob: bytes, secrets_: dict[str, bytes]) -> None:
    for what, needle in secrets_.items():
        assert len(needle) >= 8, what
        assert needle not in blob, f"{what} appears in what the broker relayed"


def test_hcsetup_secret_never_crosses_the_broker(broker_factory):
    b = broker_factory("amqtt", owners(3))
    names = list(b.deployment.parties)
    with Recorder(b) as rec:
        results = run_ok(b.run_dir, "hcsetup", {}, names)
    assert rec.granted and all(g in (0, 1) for g in rec.granted), rec.granted
    check_hcsetup(results, dict.fromkeys(names, b.run_dir))
    assert_recorded_everything(rec, b.run_dir)
    blob = b"\x00".join(p for _, p in rec.messages)
    assert b"owner1" in blob and b"hcsetup" in blob  # headers are readable: the search works
    found: dict[str, bytes] = {}
    for name in names:
        st = state(b.run_dir, name)
        if name == "aggregator":
            continue
        found[f"{name} key"] = st["hashcomb_key"]
        found[f"{name} seed"] = st["hashcomb_seed"]
        found[f"{name} key+seed"] = st["hashcomb_key"] + st["hashcomb_seed"]
        for i, block in enumerate(st["hashcomb_share"]["blocks"]):
            found[f"{name} share block {i}"] = bytes(block)
        found[f"{name} share (wire)"] = wire.encode(st["hashcomb_share"])
    assert_absent(blob, found)


@pytest.mark.mosquitto
def test_2pc_inputs_and_output_never_cross_the_broker(broker_factory):
    b = broker_factory("mosquitto", ARGMAX_PARTIES)
    inputs = holder_inputs(2, 10)
    with Recorder(b) as rec:
        results = run_ok(b.run_dir, "argmax2pc", {"inputs": inputs, "batch": 2, "classes": 10},
                         ["alice", "bob", "dealer"])
    check_argmax(results, inputs)
    assert_recorded_everything(rec, b.run_dir)
    blob = b"\x00".join(p for _, p in rec.messages)
    assert b"alice" in blob and b"crypten" in blob
    needles: dict[str, bytes] = {}
    for holder, x in inputs.items():
        x = np.asarray(x)
        enc = encoding.encode(x)
        needles[f"{holder} encoded"] = enc.tobytes()
        needles[f"{holder} float64"] = x.tobytes()
        needles[f"{holder} float32"] = x.astype(np.float32).tobytes()
        needles[f"{holder} wire"] = wire.encode(enc)
        for i in range(x.shape[0]):
            needles[f"{holder} row {i} encoded"] = enc[i].tobytes()
            needles[f"{holder} row {i} float64"] = x[i].tobytes()
            needles[f"{holder} row {i} float32"] = x[i].astype(np.float32).tobytes()
            for j in range(x.shape[1]):
                needles[f"{holder} [{i},{j}] encoded"] = enc[i, j].tobytes()
                needles[f"{holder} [{i},{j}] float64"] = x[i, j].tobytes()
    learned = np.asarray(results["alice"]["result"]["learned"])
    onehot = np.eye(10)[learned]
    needles["argmax int64"] = learned.astype(np.int64).tobytes()
    needles["one-hot encoded"] = encoding.encode(onehot).tobytes()
    needles["one-hot float64"] = onehot.tobytes()
    assert_absent(blob, needles)
