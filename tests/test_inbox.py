"""Concurrent 2PC sessions on one channel: each gets its own messages, and a session
whose message has arrived never waits for another session's."""

import asyncio

import pytest

from mpc.channel import InMemoryNetwork, PeerTimeout
from mpc.twopc.inbox import recv_tagged

KIND = "mpc.tuple"


def _pair():
    net = InMemoryNetwork(["qp", "dealer"])
    return net.channel("qp"), net.channel("dealer")


async def _started(*coros) -> list[asyncio.Task]:
    tasks = []
    for c in coros:
        tasks.append(asyncio.ensure_future(c))
        await asyncio.sleep(0)   # in this order: the first one reads, the others queue
    return tasks


async def test_each_session_gets_its_own_messages_in_order():
    qp, dealer = _pair()
    tasks = await _started(*(recv_tagged(qp, "dealer", KIND, t, 5) for t in "abc"))
    for t in "cab":
        await dealer.send("qp", KIND, {"tag": t, "n": 1})
    assert [(await x)["tag"] for x in tasks] == ["a", "b", "c"]
    for n in (2, 3):
        await dealer.send("qp", KIND, {"tag": "a", "n": n})
    assert [(await recv_tagged(qp, "dealer", KIND, "a", 5))["n"] for _ in range(2)] == [2, 3]


async def test_a_session_whose_message_arrived_does_not_wait_behind_a_reader():
    """The hang of concurrent 2PCs between processes (10 APs x 20 teachers): session r
    reads c's message and hands it over, but session x, queued before c, becomes the
    reader and waits for a message that only comes once c goes on (in the real run, x's
    tuple needs its peer's request, which needed c's progress at the other end).
    c must return at once, not after x gives up."""
    qp, dealer = _pair()
    r, x, c = await _started(recv_tagged(qp, "dealer", KIND, "r", 30),
                             recv_tagged(qp, "dealer", KIND, "x", 30),
                             recv_tagged(qp, "dealer", KIND, "c", 30))
    await dealer.send("qp", KIND, {"tag": "c"})
    assert (await asyncio.wait_for(c, 2))["tag"] == "c"
    await dealer.send("qp", KIND, {"tag": "x"})
    await dealer.send("qp", KIND, {"tag": "r"})
    assert (await asyncio.wait_for(x, 2))["tag"] == "x"
    assert (await asyncio.wait_for(r, 2))["tag"] == "r"


async def test_a_waiting_session_times_out_on_its_own_deadline():
    qp, _ = _pair()
    reader = asyncio.ensure_future(recv_tagged(qp, "dealer", KIND, "r", 30))
    await asyncio.sleep(0)
    with pytest.raises(PeerTimeout):
        await recv_tagged(qp, "dealer", KIND, "w", 0.2)
    reader.cancel()


async def test_a_cancelled_reader_hands_reading_to_a_waiting_session():
    qp, dealer = _pair()
    r, w = await _started(recv_tagged(qp, "dealer", KIND, "r", 30),
                          recv_tagged(qp, "dealer", KIND, "w", 30))
    r.cancel()
    await asyncio.sleep(0)
    await dealer.send("qp", KIND, {"tag": "w"})
    assert (await asyncio.wait_for(w, 2))["tag"] == "w"
