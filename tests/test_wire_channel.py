import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import wire
from mpc.channel import ChannelError, InMemoryNetwork, PeerGone, PeerTimeout, split_kind


def test_wire_round_trip_of_every_supported_type():
    payload = {"n": 3, "f": 1.5, "s": "x", "b": b"\x00\xff", "none": None, "l": [1, [2, "3"]],
               "u64": np.arange(6, dtype=np.uint64).reshape(2, 3), "scalar": np.array(7),
               "f32": np.ones(4, np.float32), "t": torch.tensor([[1.0, 2.0]]), "np_int": np.int64(5)}
    out = wire.decode(wire.encode(payload))
    assert out["n"] == 3 and out["b"] == b"\x00\xff" and out["l"] == [1, [2, "3"]]
    np.testing.assert_array_equal(out["u64"], payload["u64"])
    assert out["u64"].dtype == np.uint64 and out["scalar"].shape == ()
    assert isinstance(out["t"], torch.Tensor) and torch.equal(out["t"], payload["t"])
    assert out["np_int"] == 5


def test_wire_refuses_what_cannot_cross():
    with pytest.raises(wire.WireError, match="cannot put a set"):
        wire.encode({1, 2})
    with pytest.raises(wire.WireError, match="dtype"):
        wire.encode(np.array(["a"], dtype=object))
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode(wire.encode(b"x" * 100), max_size=10)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_wire_decode_garbage_raises_only_wire_error(data):
    try:
        wire.decode(data)
    except wire.WireError:
        pass


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=60), st.binary(min_size=1, max_size=4))
def test_wire_decode_mutated_arrays(pos, junk):
    good = wire.encode({"a": np.arange(5, dtype=np.int64)})
    pos = pos % len(good)
    try:
        wire.decode(good[:pos] + junk + good[pos + len(junk):])
    except wire.WireError:
        pass


def test_split_kind():
    assert split_kind("capc.vote") == ("capc", "vote")
    with pytest.raises(ValueError, match="<protocol>.<step>"):
        split_kind("vote")


async def test_in_memory_channel_fifo_per_kind_and_sender():
    net = InMemoryNetwork(["a", "b", "c"])
    a, b, c = (net.channel(x) for x in "abc")
    assert a.session == b.session and set(a.peers) == {"b", "c"}
    await a.send("b", "t.x", 1)
    await c.send("b", "t.x", "from c")
    await a.send("b", "t.y", 2)
    await a.send("b", "t.x", 3)
    assert await b.recv("a", "t.y") == 2
    assert [await b.recv("a", "t.x"), await b.recv("a", "t.x")] == [1, 3]
    assert await b.recv("c", "t.x") == "from c"


async def test_in_memory_channel_errors():
    net = InMemoryNetwork(["a", "b"])
    a, _b = net.channel("a"), net.channel("b")
    with pytest.raises(ChannelError, match="not a peer"):
        await a.send("zed", "t.x", 1)
    with pytest.raises(PeerTimeout, match="'b' within 0.05"):
        await a.recv("b", "t.x", timeout=0.05)
    with pytest.raises(wire.WireError):
        await a.send("b", "t.x", object())
    waiter = asyncio.create_task(a.recv("b", "t.x", timeout=30))
    await asyncio.sleep(0.01)
    net.kill("b")
    with pytest.raises(PeerGone, match="party 'b' went offline"):
        await waiter
    with pytest.raises(PeerGone):
        await a.recv("b", "t.x")
    with pytest.raises(ValueError, match="unique"):
        InMemoryNetwork(["a", "a"])


async def test_in_memory_channel_enforces_conformance_rules():
    from mpc.channel import Conformance, InMemoryNetwork, RuleViolation
    roles = {"a": "qp", "b": "ap"}
    net = InMemoryNetwork(list(roles))
    for name in roles:
        net.channel(name).conformance = Conformance("capc", {("qp", "ap", "query")}, roles)
    await net.channel("a").send("b", "capc.query", 1)
    assert await net.channel("b").recv("a", "capc.query", 5) == 1
    with pytest.raises(RuleViolation, match="does not let a 'ap'"):
        await net.channel("b").send("a", "capc.query", 2)
    with pytest.raises(RuleViolation, match="not a message of protocol"):
        await net.channel("a").send("b", "other.query", 2)
