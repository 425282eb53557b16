import asyncio

import numpy as np
import pytest

from mpc import additive, encoding
from mpc.channel import ChannelError, InMemoryNetwork, PeerGone
from mpc.twopc import (
    Dealer,
    TwoParty,
    TwoPartyError,
    argmax_onehot,
    serve_dealer,
    share_of,
    tensor_from_shares,
)


async def _argmax(logits: np.ndarray, net=None):
    net = net or InMemoryNetwork(["alice", "bob", "dealer"])
    s0, s1 = additive.share(encoding.encode(logits), 2)
    r0, r1, served = await asyncio.gather(
        argmax_onehot(net.channel("alice"), "bob", "dealer", s0),
        argmax_onehot(net.channel("bob"), "alice", "dealer", s1),
        serve_dealer(net.channel("dealer"), ("alice", "bob")))
    assert served > 0
    return r0, r1, encoding.decode(additive.reconstruct([r0, r1]))


@pytest.mark.parametrize("shape", [(10,), (1, 10), (64, 10), (5, 2)])
async def test_argmax_onehot_is_correct(shape):
    logits = np.random.default_rng(sum(shape)).normal(scale=5, size=shape)
    _, _, onehot = await _argmax(logits)
    expected = np.eye(shape[-1])[logits.argmax(-1)]
    np.testing.assert_array_equal(onehot, expected)


async def test_each_output_share_alone_looks_random():
    # 400 queries whose argmax is always class 0 vs always class 3: one party's
    # share must look the same (uniform) in both cases.
    base = np.zeros((400, 4))
    top_bits = []
    for cls in (0, 3):
        logits = base.copy()
        logits[:, cls] = 10.0
        r0, r1, onehot = await _argmax(logits)
        assert (onehot.argmax(-1) == cls).all()
        for share in (r0, r1):
            bits = (share >> np.uint64(63)).astype(float)
            assert 0.4 < bits.mean() < 0.6  # a one-hot in the clear would be all zeros
        top_bits.append((r0[:, cls] >> np.uint64(63)).astype(float).mean())
    assert abs(top_bits[0] - top_bits[1]) < 0.12


async def test_ties_give_exactly_one_hot_chosen_among_the_tied():
    logits = np.tile(np.array([1.0, 5.0, 5.0, 0.0, 5.0]), (300, 1))
    _, _, onehot = await _argmax(logits)
    assert (onehot.sum(-1) == 1).all()
    picked = onehot.argmax(-1)
    assert set(picked) <= {1, 2, 4}
    assert len(set(picked)) == 3  # random among tied maxima, not always the first


async def test_shares_feed_a_follow_up_2pc():
    # Shares out of one 2PC become the input of another (CaPC's vote pipeline).
    net = InMemoryNetwork(["p", "q", "d"])
    x = np.array([[1.5, -2.0, 3.25]])
    s0, s1 = additive.share(encoding.encode(x), 2)

    def double_plus_one(share):
        t = tensor_from_shares(share)
        return share_of(t * 2 + 1)

    async def party(name, peer, share):
        async with TwoParty(net.channel(name), peer, "d") as tp:
            return await tp.run(double_plus_one, share)

    a, b, _ = await asyncio.gather(party("p", "q", s0), party("q", "p", s1),
                                   serve_dealer(net.channel("d"), ("p", "q")))
    np.testing.assert_allclose(encoding.decode(additive.reconstruct([a, b])), x * 2 + 1, atol=1e-3)


async def test_dealer_detects_diverging_parties():
    net = InMemoryNetwork(["p", "q", "d"])
    await net.channel("p").send("d", "mpc.tuple_req", {"fn": "square", "size": [3]})
    await net.channel("q").send("d", "mpc.tuple_req", {"fn": "square", "size": [4]})
    with pytest.raises(TwoPartyError, match="diverged"):
        await serve_dealer(net.channel("d"), ("p", "q"))


async def test_parties_whose_computations_diverge_fail_at_once_with_the_dealers_reason():
    """Two parties run the 'same' 2PC on different shapes: the dealer sees different
    requests and tells both why; each fails with that reason at once, not after its
    timeout. Their first tuples are fetched inside CrypTen's A2B conversion, which
    retries another algorithm on any RuntimeError: the failure must get through it."""
    net = InMemoryNetwork(["alice", "bob", "dealer"])
    a, _ = additive.share(encoding.encode(np.zeros((2, 4))), 2)
    _, b = additive.share(encoding.encode(np.zeros((3, 4))), 2)
    outs = await asyncio.wait_for(asyncio.gather(
        argmax_onehot(net.channel("alice"), "bob", "dealer", a, timeout=120),
        argmax_onehot(net.channel("bob"), "alice", "dealer", b, timeout=120),
        serve_dealer(net.channel("dealer"), ("alice", "bob"), timeout=120),
        return_exceptions=True), timeout=20)
    for out in outs:
        assert isinstance(out, TwoPartyError) and "diverged" in str(out), out


async def test_dealer_refuses_unknown_requests():
    net = InMemoryNetwork(["p", "q", "d"])
    for p in "pq":
        await net.channel(p).send("d", "mpc.tuple_req", {"fn": "generate_additive_triple",
                                                          "op": "__import__", "size0": [1], "size1": [1]})
    with pytest.raises(TwoPartyError, match="refuses"):
        await serve_dealer(net.channel("d"), ("p", "q"))


async def test_dead_peer_is_named():
    net = InMemoryNetwork(["alice", "bob", "dealer"])
    s0, _ = additive.share(encoding.encode(np.zeros((1, 3))), 2)
    task = asyncio.create_task(argmax_onehot(net.channel("alice"), "bob", "dealer", s0, timeout=30))
    await asyncio.sleep(0.2)
    net.kill("bob")
    with pytest.raises(PeerGone, match="'bob'"):
        await asyncio.wait_for(task, 10)


def test_bad_arguments():
    net = InMemoryNetwork(["p", "q"])
    with pytest.raises(TwoPartyError, match="distinct"):
        TwoParty(net.channel("p"), "q", "q")


def _draw_after_reseeding_local_generator():
    """What an adversary who knows (or, from 624 outputs, recovers) the Mersenne Twister
    state of a party's CrypTen 'local' generator can predict: reseed it identically
    twice and draw the party's private random values."""
    import torch

    from mpc.twopc.shims import ArithmeticSharedTensor, BinarySharedTensor, crypten
    draws = []
    for _ in range(2):
        crypten.generators["local"][torch.device("cpu")].manual_seed(1234)
        draws.append((ArithmeticSharedTensor.PRSS(16).share.clone(),
                      BinarySharedTensor.rand(16, bits=64).share.clone()))
    return draws


async def test_private_randomness_does_not_come_from_crypten_mersenne_twister():
    net = InMemoryNetwork(["alice", "bob", "dealer"])

    async def party(me, peer):
        async with TwoParty(net.channel(me), peer, "dealer") as tp:
            return await tp.run(_draw_after_reseeding_local_generator)

    (a1, a2), (b1, b2) = await asyncio.gather(party("alice", "bob"), party("bob", "alice"))
    for first, second in ((a1, a2), (b1, b2)):
        for x, y in zip(first, second, strict=True):
            assert not (x == y).any(), "the draw repeats with the generator's state: predictable"


async def test_dealer_moves_on_when_a_party_dies_mid_2pc():
    """The issue-18 hang: an AP dies during its argmax 2PC with the QP. The QP drops it
    and starts its next 2PC (with another AP); the dealer, still in the dead AP's
    session, must fail that session at once and serve the next one, without
    throwing away the QP's first request of it."""
    net = InMemoryNetwork(["qp", "ap1", "ap2", "dealer"])
    logits = np.array([[0.5, 3.0, -1.0, 2.0]])
    s0, s1 = additive.share(encoding.encode(logits), 2)
    dealer = Dealer(net.channel("dealer"), timeout=60)
    outcome = {}

    async def serve_all():
        for pair, tag in ((("qp", "ap1"), "b0:ap1"), (("qp", "ap2"), "b0:ap2")):
            try:
                outcome[tag] = await dealer.serve(pair, tag)
            except ChannelError as e:
                outcome[tag] = e

    async def dying_ap1():
        async with TwoParty(net.channel("ap1"), "qp", "dealer", tag="b0:ap1") as tp:
            await asyncio.sleep(0.05)
            net.kill("ap1")   # dies after the QP has asked the dealer for its first tuples
            await tp.run(share_of, np.zeros((1, 4), np.uint64))

    async def qp():
        try:
            async with TwoParty(net.channel("qp"), "ap1", "dealer", tag="b0:ap1") as tp:
                await tp.run(lambda s: share_of(tensor_from_shares(s).argmax(dim=-1, one_hot=True)),
                             s0)
        except ChannelError as e:
            outcome["qp saw"] = e
        async with TwoParty(net.channel("qp"), "ap2", "dealer", tag="b0:ap2") as tp:
            return await tp.run(lambda s: share_of(tensor_from_shares(s).argmax(dim=-1,
                                                                                one_hot=True)), s0)

    async def ap2():
        async with TwoParty(net.channel("ap2"), "qp", "dealer", tag="b0:ap2") as tp:
            return await tp.run(lambda s: share_of(tensor_from_shares(s).argmax(dim=-1,
                                                                                one_hot=True)), s1)

    async with asyncio.timeout(30):  # before the fix: hangs until the 60 s timeouts
        r_qp, r_ap2, *_ = await asyncio.gather(qp(), ap2(), serve_all(),
                                               dying_ap1(), return_exceptions=True)
    assert isinstance(outcome["qp saw"], ChannelError) and outcome["qp saw"].peer == "ap1"
    assert isinstance(outcome["b0:ap1"], ChannelError)
    assert outcome["b0:ap2"] > 0
    np.testing.assert_array_equal(encoding.decode(additive.reconstruct([r_qp, r_ap2])),
                                  [[0, 1, 0, 0]])


async def test_one_party_runs_many_2pcs_at_once_without_starving_threads():
    """A querying party runs its argmax 2PC with every answering party at once, one
    dealer serving all sessions (told apart by tag). Here all parties share one process:
    34 sessions blocked on the channel at once, more than asyncio's default thread pool
    ever has (32), which deadlocked when sessions ran in that pool."""
    from mpc.twopc import onehot_argmax_share
    aps = [f"ap{i}" for i in range(17)]
    net = InMemoryNetwork(["qp", "dealer", *aps])
    rng = np.random.default_rng(7)
    logits = {ap: rng.normal(scale=5, size=(3, 4)) for ap in aps}
    shares = {ap: additive.share(encoding.encode(x), 2) for ap, x in logits.items()}
    dealer = Dealer(net.channel("dealer"), timeout=60)

    async def side(me: str, peer: str, ap: str, share: np.ndarray) -> np.ndarray:
        async with TwoParty(net.channel(me), peer, "dealer", timeout=60, tag=ap) as tp:
            return await tp.run(onehot_argmax_share, share)

    outs = await asyncio.wait_for(asyncio.gather(
        *(side("qp", ap, ap, shares[ap][0]) for ap in aps),
        *(side(ap, "qp", ap, shares[ap][1]) for ap in aps),
        *(dealer.serve(("qp", ap), tag=ap) for ap in aps)), timeout=240)
    for i, ap in enumerate(aps):
        onehot = encoding.decode(additive.reconstruct([outs[i], outs[len(aps) + i]]))
        np.testing.assert_array_equal(onehot, np.eye(4)[logits[ap].argmax(-1)])


async def test_a_rehearsed_2pc_fetches_its_tuples_in_one_round_trip():
    """After a local rehearsal on zero shares of the same shapes, the first real 2PC
    announces its plan: one round trip to the dealer instead of one per tuple."""
    from mpc.twopc import onehot_argmax_share, provider, rehearse
    provider._PLANS.clear()
    logits = np.random.default_rng(3).normal(scale=5, size=(2, 7))
    s0, s1 = additive.share(encoding.encode(logits), 2)

    async def real() -> list[dict]:
        net = InMemoryNetwork(["alice", "bob", "dealer"])

        async def side(me, peer, share):
            async with TwoParty(net.channel(me), peer, "dealer") as tp:
                out = await tp.run(onehot_argmax_share, share)
            return out, tp.stats
        (r0, st0), (r1, _), _ = await asyncio.gather(
            side("alice", "bob", s0), side("bob", "alice", s1),
            serve_dealer(net.channel("dealer"), ("alice", "bob")))
        np.testing.assert_array_equal(encoding.decode(additive.reconstruct([r0, r1])),
                                      np.eye(7)[logits.argmax(-1)])
        return st0

    cold = await real()
    provider._PLANS.clear()
    await rehearse(onehot_argmax_share, s0)
    warm = await real()
    assert cold["dealer_round_trips"] == cold["dealer_requests"] > 10
    assert warm["dealer_round_trips"] == 1 and warm["dealer_requests"] == cold["dealer_requests"]
