"""CaPC with many teachers per organisation and a fixed answer cap (issue 16)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch

from learning.models import build_model, stack_teachers
from mpc import additive, encoding
from mpc.channel import InMemoryNetwork
from mpc.twopc import argmax_onehot, serve_dealer
from privacy.budget import PrivacyBudget
from protocols import capc
from tests.capc_harness import run_capc

SMALL = {"dataset": "digits", "queries": 12, "batch_size": 6, "epochs": 10, "noise_seed": 5,
         "epsilon_budget": 1e6, "teachers": 3, "teacher_arch": "logreg", "qp_points": 40}


@pytest.mark.parametrize("arch", ["logreg", "mlp-square-64", "mlp-square-32x2"])
def test_stacked_teachers_give_each_teachers_logits(arch):
    teachers = [build_model(arch, 64, 10, seed=s) for s in range(4)]
    x = torch.randn(9, 64)
    with torch.no_grad():
        np.testing.assert_allclose(stack_teachers(teachers)(x),
                                   torch.cat([t(x) for t in teachers], 1), atol=1e-5)
    with pytest.raises(ValueError, match="one architecture"):
        stack_teachers([build_model("logreg", 64, 10, 0), build_model(arch, 32, 10, 0)])


async def test_vote_shares_add_up_to_the_teachers_histogram():
    """Through the real 2PC: per-teacher one-hot shares, summed per query by each side."""
    batch, k, classes = 5, 7, 10
    logits = np.random.default_rng(1).normal(scale=3, size=(batch, k * classes))
    qp_share, ap_share = additive.share(encoding.encode(logits), 2)
    net = InMemoryNetwork(["qp", "ap", "dealer"])
    rows = [capc.per_teacher(s, k, classes) for s in (qp_share, ap_share)]
    a, b, _ = await asyncio.gather(argmax_onehot(net.channel("qp"), "ap", "dealer", rows[0]),
                                   argmax_onehot(net.channel("ap"), "qp", "dealer", rows[1]),
                                   serve_dealer(net.channel("dealer"), ("qp", "ap")))
    votes = encoding.decode(additive.reconstruct([capc.vote_share(a, k), capc.vote_share(b, k)]))
    expected = np.zeros((batch, classes))
    for q in range(batch):
        for t in range(k):
            expected[q, logits[q, t * classes:(t + 1) * classes].argmax()] += 1
    np.testing.assert_array_equal(votes, expected)


class _Spy:
    """Every payload a party receives, by kind."""

    def __init__(self, inner):
        self.inner, self.me, self.peers, self.session = inner, inner.me, inner.peers, inner.session
        self.seen: list[tuple[str, str, Any]] = []

    async def send(self, to, kind, payload):
        await self.inner.send(to, kind, payload)

    async def recv(self, frm, kind, timeout=None, *, watch=()):
        got = await self.inner.recv(frm, kind, timeout, watch=watch)
        self.seen.append((frm, kind, got))
        return got


def _looks_like_votes(shares: list[np.ndarray], total: int) -> bool:
    """The adversary's test: shares that are vote counts (small multiples of 2^16) give the
    votes away; uniform ring elements do not."""
    v = np.concatenate([np.asarray(s, dtype=np.uint64).ravel() for s in shares])
    counts = encoding.decode(v)
    return bool(np.all((counts >= 0) & (counts <= total) & (np.round(counts) == counts)))


@pytest.mark.parametrize("defence", [True, False])
async def test_guardian_sees_no_organisation_or_teacher_vote(tmp_path, monkeypatch, defence):
    """The PG's whole view: every AP's vote share (and so their sum) is uniform, not a vote
    histogram; with the AP's 2PC output handed over in the clear it would be."""
    if not defence:   # the argmax 2PC no longer shares its output: the AP gets the one-hots
        shared_two_pc = capc._plain_two_pc

        async def in_the_clear(ch, peer, compute, *shares):
            out = await shared_two_pc(ch, peer, compute, *shares)
            if compute is not capc._plain_argmax:
                return out
            await ch.send(peer, "capc.plain", [out[0]])
            full = additive.reconstruct([out[0], (await ch.recv(peer, "capc.plain"))[0]])
            return (full if ch.me.startswith("ap") else np.zeros_like(full),)
        monkeypatch.setattr(capc, "_plain_two_pc", in_the_clear)
    spies = {}
    real_channel = InMemoryNetwork.channel

    def spying(self, name):
        ch = real_channel(self, name)
        if name == "guardian":
            spies[name] = _Spy(ch)
            return spies[name]
        return ch
    monkeypatch.setattr(InMemoryNetwork, "channel", spying)
    res = await run_capc(tmp_path, {**SMALL, "mode": "plaintext"}, aps=2)
    assert not any(isinstance(r, BaseException) for r in res.values()), res
    shares = [p["share"] for _, kind, p in spies["guardian"].seen if kind == "capc.vote_share"]
    assert len(shares) == 2 * 2          # 2 APs x 2 batches
    total = 2 * SMALL["teachers"]
    per_org = _looks_like_votes(shares, total)
    summed = _looks_like_votes([shares[0] + shares[1], shares[2] + shares[3]], total)
    if defence:
        assert not per_org and not summed
        top = np.concatenate([np.asarray(s).ravel() for s in shares]) >> np.uint64(56)
        assert len(np.unique(top)) > 0.3 * top.size   # spread over the ring
    else:
        assert per_org and summed        # the test catches a guardian that would see votes


async def test_querying_party_sees_no_teacher_vote(tmp_path):
    """The QP's shares of every teacher's one-hot are uniform across 24 x 3 teachers."""
    batch, k, classes = 24, 3, 10
    logits = np.tile(np.eye(classes)[0] * 9, (batch, k))    # every teacher votes class 0
    qp_share, ap_share = additive.share(encoding.encode(logits), 2)
    net = InMemoryNetwork(["qp", "ap", "dealer"])
    a, _, _ = await asyncio.gather(
        argmax_onehot(net.channel("qp"), "ap", "dealer", capc.per_teacher(qp_share, k, classes)),
        argmax_onehot(net.channel("ap"), "qp", "dealer", capc.per_teacher(ap_share, k, classes)),
        serve_dealer(net.channel("dealer"), ("qp", "ap")))
    assert not _looks_like_votes([a], 1)
    cls0, rest = a[:, 0] >> np.uint64(60), a[:, 1:] >> np.uint64(60)
    # the share of the winning class is distributed like the others' (top 4 bits)
    assert abs(float(cls0.mean()) - float(rest.mean())) < 3.0


async def test_teachers_crypto_labels_equal_plaintext(tmp_path, monkeypatch):
    params = {**SMALL, "threshold": 3, "sigma_threshold": 1.0, "sigma_gnmax": 1.0}
    plain = await run_capc(tmp_path, {**params, "mode": "plaintext"}, aps=2)
    # small pieces: every query and answer crosses in several messages, as MNIST's do
    monkeypatch.setattr(capc, "QUERY_PIECE_BYTES", 200_000)
    crypto = await run_capc(tmp_path, {**params, "mode": "crypto"}, aps=2)
    for res in (plain, crypto):
        assert not any(isinstance(r, BaseException) for r in res.values()), res
    assert crypto["qp"].public["labels"] == plain["qp"].public["labels"]
    assert crypto["ap1"].public["teachers"] == 3
    assert crypto["qp"].public["answered"] > 6


@pytest.mark.parametrize("mode", ["plaintext", "crypto"])
async def test_answer_cap_binds_and_is_charged_as_fixed(tmp_path, mode):
    cap = 3
    params = {**SMALL, "teachers": 2, "queries": 8, "batch_size": 4, "threshold": 1.0,
              "sigma_threshold": 1.0, "sigma_gnmax": 1.0, "max_answers": cap, "mode": mode}
    res = await run_capc(tmp_path, params, aps=1)
    assert not any(isinstance(r, BaseException) for r in res.values()), res
    qp, pg = res["qp"].public, res["guardian"].public
    assert qp["answered"] == cap and qp["abstained"] == params["queries"] - cap
    assert pg["charged_answers"] == cap
    # worst case fixed in advance: every query's threshold step, GNMax for cap of them
    expected = PrivacyBudget(1e6, 1e-5)
    for j in range(params["queries"]):
        if j < cap:
            expected.request_confident_gnmax(1.0, 1.0)
        else:
            expected.request_threshold(1.0)
    assert pg["epsilon"] == pytest.approx(expected.epsilon_spent(), rel=1e-9)


async def test_gnmax_cap_refuses_beyond_it(tmp_path):
    params = {**SMALL, "teachers": 2, "queries": 8, "batch_size": 4, "sigma_gnmax": 1.0,
              "max_answers": 5, "mode": "plaintext"}
    res = await run_capc(tmp_path, params, aps=1)
    qp, pg = res["qp"].public, res["guardian"].public
    assert qp["answered"] == 5 and qp["refused"] == 3 and pg["granted"] == 5


def test_teacher_parameters_are_checked():
    from protocols import ParameterError
    for bad, what in (({"teachers": 0}, "teachers"), ({"teacher_arch": "cnn"}, "teacher_arch"),
                      ({"max_answers": 0}, "max_answers")):
        with pytest.raises(ParameterError, match=what):
            capc.CapcParams.from_dict(bad)


async def test_qp_runs_its_2pcs_with_all_aps_at_once(tmp_path, monkeypatch):
    """The argmax 2PCs with the APs overlap in time, served concurrently by one dealer,
    and still give the plaintext simulation's labels."""
    import time
    spans: dict[str, list[float]] = {}
    real = capc._argmax

    async def timed(ch, peer, dealer, p, tag, share):
        start = time.perf_counter()
        try:
            return await real(ch, peer, dealer, p, tag, share)
        finally:
            if ch.me == "qp":
                spans[tag] = [start, time.perf_counter()]
    monkeypatch.setattr(capc, "_argmax", timed)
    params = {**SMALL, "queries": 6, "batch_size": 6, "teachers": 2, "sigma_gnmax": 1.0}
    crypto = await run_capc(tmp_path, {**params, "mode": "crypto"}, aps=3)
    assert not any(isinstance(r, BaseException) for r in crypto.values()), crypto
    assert crypto["dealer"].public["sessions"] == 3 + 1
    starts, ends = zip(*spans.values(), strict=True)
    assert len(spans) == 3 and max(starts) < min(ends)       # all three were running together
    plain = await run_capc(tmp_path, {**params, "mode": "plaintext"}, aps=3)
    assert crypto["qp"].public["labels"] == plain["qp"].public["labels"]


async def test_single_queries_use_single_query_packing(tmp_path):
    """Batches of one query go as one ciphertext (rotations, Galois keys sent once),
    and give the plaintext simulation's labels, with teachers stacked too."""
    params = {**SMALL, "queries": 2, "batch_size": 1, "sigma_gnmax": 1.0, "threshold": None}
    crypto = await run_capc(tmp_path, {**params, "mode": "crypto"}, aps=2)
    assert not any(isinstance(r, BaseException) for r in crypto.values()), crypto
    qp = crypto["qp"].public
    assert qp["packing"] == "single" and len(qp["curve"]) == 2
    assert all(c["labelling_seconds"] > 0 for c in qp["curve"])
    assert qp["timing_seconds"]["rehearsal"] > 0      # the 2PCs' dealer plans learnt locally
    plain = await run_capc(tmp_path, {**params, "mode": "plaintext"}, aps=2)
    assert qp["labels"] == plain["qp"].public["labels"] and len(qp["labels"]) == 2
    batched = await run_capc(tmp_path, {**params, "mode": "crypto", "batch_size": 2}, aps=2)
    assert batched["qp"].public["packing"] == "batch"
    assert batched["qp"].public["timing_seconds"]["rehearsal"] == 0
