"""Federated training over Hash-Comb tokens (protocols/hashcomb_fl.py): in memory and across processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocols
from learning.datasets import DatasetError, partition
from mpc import wire
from mpc.channel import Channel, InMemoryNetwork
from parties.audit import audit_run
from privacy import rqm
from privacy.budget import PrivacyBudget
from privacy.hashcomb_codec import HashCombParams
from privacy.hashcomb_tokens import TokenCounts, TokenPermutation, permutation_key, unpack_upload
from protocols import ParameterError, ProtocolError, RoleContext
from protocols.context import Resources
from protocols.hashcomb_fl import (
    FLConfig,
    decode_mean,
    get_flat,
    make_model,
    node_labels,
    round_context,
)

ROOT = Path(__file__).resolve().parents[1]
OWNERS = [f"owner{i}" for i in range(1, 4)]
PARTIES = [(o, "owner") for o in OWNERS] + [("aggregator", "aggregator")]


class Recorder(Channel):
    """A Channel that keeps a copy of every payload its party receives and sends."""

    def __init__(self, inner: Channel):
        self.inner, self.me, self.peers, self.session = inner, inner.me, inner.peers, inner.session
        self.received: list[tuple[str, str, Any]] = []
        self.sent: list[tuple[str, str, Any]] = []

    async def send(self, to: str, kind: str, payload: Any) -> None:
        self.sent.append((to, kind, payload))
        await self.inner.send(to, kind, payload)

    async def recv(self, frm: str, kind: str, timeout: float | None = None, *,
                   watch: tuple[str, ...] = ()) -> Any:
        got = await self.inner.recv(frm, kind, timeout, watch=watch)
        self.received.append((frm, kind, got))
        return got


def run(protocol: str, params: dict, states: dict[str, dict], record: tuple[str, ...] = (),
        budgets: dict[str, PrivacyBudget] | None = None) -> tuple[dict, dict[str, Recorder], str]:
    """Every party's role of ``protocol`` in one event loop; returns results, recorders, session."""
    net = InMemoryNetwork([n for n, _ in PARTIES])
    roles = dict(PARTIES)
    recorders = {n: Recorder(net.channel(n)) for n in record}

    async def one(name: str):
        ch = recorders.get(name) or net.channel(name)
        fn = protocols.role_function(protocol, roles[name])
        resources = Resources(budget=(budgets or {}).get(name))
        return await fn(RoleContext(ch, roles, params, states.get(name, {}), resources=resources))

    async def main():
        return await asyncio.gather(*(one(n) for n, _ in PARTIES), return_exceptions=True)

    results = dict(zip([n for n, _ in PARTIES], asyncio.run(main()), strict=True))
    return results, recorders, net.session


@pytest.fixture(scope="module")
def states() -> dict[str, dict]:
    res, _, _ = run("hcsetup", {}, {})
    for r in res.values():
        assert not isinstance(r, BaseException), r
    return {n: r.private for n, r in res.items()}


FAST = {"dataset": "digits", "model": "logreg", "lr": 0.5}


def test_hashcomb_fl_tracks_fedavg(states):
    accs = {}
    for enc in ("hashcomb", "float"):
        res, _, _ = run("hcfl", {**FAST, "rounds": 6, "encoding": enc}, states)
        owners = [res[o].public for o in OWNERS]
        assert len({o["model_digest"] for o in owners}) == 1  # every owner holds the same model
        accs[enc] = [r["accuracy"] for r in owners[0]["rounds"]]
        assert res["aggregator"].public["encoding"] == enc
    assert accs["float"][-1] > 0.85  # training works at all
    assert abs(accs["hashcomb"][-1] - accs["float"][-1]) <= 0.03
    gaps = [abs(a - b) for a, b in zip(accs["hashcomb"], accs["float"], strict=True)]
    # Round 1 sits on the steep start (accuracy ~0.37), where one quantization step moves
    # accuracy by ~5 points (0.047-0.049 over 8 runs of fresh randomness); later rounds track closely.
    assert gaps[0] <= 0.1
    assert max(gaps[1:]) <= 0.05


def _leaf_centres(hp: HashCombParams, labels: np.ndarray) -> np.ndarray:
    a, b = hp.lo - hp.delta, hp.hi + hp.delta
    return a + (labels + 0.5) * (b - a) / 2 ** hp.levels


def test_decoded_aggregate_is_mean_of_quantized_updates(states):
    cfg = {**FAST, "rounds": 1, "scale": 2.0}
    res, rec, session = run("hcfl", cfg, states, record=("aggregator",))
    key, seed = states["owner1"]["hashcomb_key"], states["owner1"]["hashcomb_seed"]
    hp = HashCombParams(**states["owner1"]["hashcomb_params"])
    uploads = [p for _, kind, p in rec["aggregator"].received]
    assert len(uploads) == len(OWNERS)
    dim, bits = uploads[0]["dim"], uploads[0]["bits"]
    assert bits == hp.levels and all(len(u["tokens"]) == dim for u in uploads)  # 8 bits a coordinate
    perm = TokenPermutation(permutation_key(key, round_context(seed, session, 0)), dim, bits)
    labels = [perm.inverse(unpack_upload(u["tokens"], bits, dim), np.arange(dim)) for u in uploads]
    quantized = np.stack([_leaf_centres(hp, lab) for lab in labels])  # each owner's bin centres
    replies = [p for _, _, p in rec["aggregator"].sent]
    assert len(replies) == len(OWNERS) and all(r is replies[0] for r in replies)
    agg = TokenCounts.from_wire(wire.decode(wire.encode(replies[0]["counts"])), dim=dim,
                                owners=len(OWNERS), bits=bits)
    coords = agg.coordinates()
    got = perm.inverse(agg.tokens, coords)
    # exact: the aggregate holds every owner's node with its multiplicity, per coordinate
    mine = sorted(zip(np.tile(np.arange(dim), len(OWNERS)), np.concatenate(labels), strict=True))
    theirs = sorted((c, g) for c, g, k in zip(coords, got, agg.counts, strict=True) for _ in range(k))
    assert [(int(c), int(g)) for c, g in mine] == [(int(c), int(g)) for c, g in theirs]
    mean = decode_mean(hp, got, agg.counts, coords, dim, len(OWNERS))
    np.testing.assert_allclose(mean, quantized.mean(0), rtol=0, atol=4 * np.spacing(0.36))
    # and that, divided by the scale, is exactly what every owner applied to the model
    fl = FLConfig.from_dict(cfg)
    init = get_flat(make_model(fl, 64, 10))
    applied = init + (mean / fl.scale).astype(np.float32)
    for o in OWNERS:
        assert np.array_equal(states_after(res, o), applied)


def states_after(res: dict, owner: str) -> np.ndarray:
    return res[owner].private["hcfl_model_hashcomb"]


def _walk(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


def test_aggregator_receives_nothing_decodable(states):
    assert not {"hashcomb_key", "hashcomb_seed"} & set(states["aggregator"])
    res, rec, session = run("hcfl", {**FAST, "rounds": 2}, states, record=("aggregator",))
    received = rec["aggregator"].received
    assert {kind for _, kind, _ in received} == {"hcfl.tokens"}
    leaves = [x for _, _, p in received for x in _walk(p)]
    assert not any(isinstance(x, float | np.ndarray) for x in leaves)  # no values, no arrays
    assert {k for _, _, p in received for k in p} == {"round", "bits", "dim", "tag", "tokens"}
    key, seed = states["owner1"]["hashcomb_key"], states["owner1"]["hashcomb_seed"]
    dim, bits = received[0][2]["dim"], received[0][2]["bits"]
    toks = unpack_upload(received[0][2]["tokens"], bits, dim)
    # the tokens are not the leaf labels: the keyed permutation, and a guessed key, give others
    right = TokenPermutation(permutation_key(key, round_context(seed, session, 0)), dim, bits)
    wrong = TokenPermutation(permutation_key(b"k" * 32, round_context(seed, session, 0)), dim, bits)
    coords = np.arange(dim)
    assert np.mean(right.inverse(toks, coords) == wrong.inverse(toks, coords)) < 0.05
    assert np.mean(toks == right.inverse(toks, coords)) < 0.05


def test_unmasked_tokens_are_leaf_labels_and_masked_ones_change_every_round(states):
    res, rec, session = run("hcfl", {**FAST, "rounds": 2, "mask": False, "rounding": "nearest"},
                            states, record=("aggregator",))
    first = rec["aggregator"].received[0][2]
    toks = unpack_upload(first["tokens"], first["bits"], first["dim"])
    assert abs(np.median(toks) - 127.5) <= 2   # plain bin indices: updates centre on the middle bins
    key, seed = states["owner1"]["hashcomb_key"], states["owner1"]["hashcomb_seed"]
    a, b = (TokenPermutation(permutation_key(key, round_context(seed, session, r)), 100, 8)
            for r in (0, 1))
    same = a.forward(np.zeros(100)) == b.forward(np.zeros(100))
    assert same.mean() < 0.05


@pytest.fixture(scope="module")
def wide_states(states) -> dict[str, dict]:
    """The setup with a margin wide enough for a private run (the RQM needs one)."""
    out = {n: dict(s) for n, s in states.items()}
    for s in out.values():
        if "hashcomb_params" in s:
            s["hashcomb_params"] = {**s["hashcomb_params"], "delta": 4.0}
    return out


@pytest.mark.parametrize("encoding", ["hashcomb", "float"])
def test_private_run_meets_its_epsilon_and_charges_every_ledger(wide_states, encoding):
    eps, rounds = 2000.0, 3
    budgets = {o: PrivacyBudget(eps, 1e-5) for o in OWNERS}
    cfg = {**FAST, "rounds": rounds, "encoding": encoding, "rdp_epsilon": eps,
           "epsilon_budget": eps}
    res, rec, session = run("hcfl", cfg, wide_states, record=("aggregator",), budgets=budgets)
    for o in OWNERS:
        assert not isinstance(res[o], BaseException), res[o]
        pub = res[o].public
        assert [r["epsilon"] for r in pub["rounds"]] == sorted(r["epsilon"] for r in pub["rounds"])
        assert 0.9 * eps < pub["epsilon"] <= eps                     # calibrated to the target
        assert budgets[o].epsilon_spent() == pytest.approx(pub["epsilon"], rel=1e-3)
        assert budgets[o].entries == rounds + 1                      # one charge per round
    if encoding == "float":
        return
    hp = HashCombParams(**wide_states["owner1"]["hashcomb_params"])
    q = res["owner1"].public["hashcomb"]["rqm_q"]
    mech = rqm.RQM.on_leaves(hp.levels, hp.lo, hp.hi, hp.delta, q)
    assert rqm.epsilon(mech, res["owner1"].public["dimension"], rounds, 1e-5) <= eps
    # what the owners released are RQM outputs: leaves far outside [lo, hi] occur
    key, seed = wide_states["owner1"]["hashcomb_key"], wide_states["owner1"]["hashcomb_seed"]
    up = rec["aggregator"].received[0][2]
    perm = TokenPermutation(permutation_key(key, round_context(seed, session, 0)), up["dim"], up["bits"])
    values = mech.levels()[perm.inverse(unpack_upload(up["tokens"], up["bits"], up["dim"]),
                                        np.arange(up["dim"]))]
    assert np.mean(np.abs(values) > hp.hi) > 0.2


def test_private_run_refused_by_a_spent_ledger(wide_states):
    budgets = {o: PrivacyBudget(10.0, 1e-5) for o in OWNERS}
    budgets["owner2"] = PrivacyBudget(3.0, 1e-5)       # owner2's ledger has less left
    cfg = {**FAST, "rounds": 2, "rdp_epsilon": 10.0, "encoding": "float", "timeout": 5}
    res, _, _ = run("hcfl", cfg, wide_states, budgets=budgets)
    assert isinstance(res["owner2"], ProtocolError) and "privacy budget refuses" in str(res["owner2"])


def test_rqm_with_random_levels_is_refused(states):
    randomized = {n: dict(s) for n, s in states.items()}
    for s in randomized.values():
        if "hashcomb_params" in s:
            s["hashcomb_params"] = {**s["hashcomb_params"], "p": 0.5, "delta": 4.0}
    cfg = {**FAST, "rounds": 1, "rdp_epsilon": 5.0, "timeout": 5}
    res, _, _ = run("hcfl", cfg, randomized, budgets={o: PrivacyBudget(10, 1e-5) for o in OWNERS})
    assert isinstance(res["owner1"], ParameterError) and "without random levels" in str(res["owner1"])


def test_owner_without_setup_state_is_told_to_run_hcsetup():
    res, _, _ = run("hcfl", {**FAST, "rounds": 1, "timeout": 2}, {})
    err = res["owner1"]
    assert isinstance(err, ProtocolError) and "run the hcsetup protocol first" in str(err)


def test_owners_with_different_keys_are_refused(states):
    bad = {n: dict(s) for n, s in states.items()}
    bad["owner2"]["hashcomb_key"] = bytes(32)
    res, _, _ = run("hcfl", {**FAST, "rounds": 1}, bad)
    assert isinstance(res["aggregator"], ProtocolError)
    assert "different Hash-Comb configurations" in str(res["aggregator"])
    assert all(isinstance(res[o], ProtocolError) and "aborted" in str(res[o]) for o in OWNERS)


def test_bad_parameters_raise_parameter_error():
    for params in ({"encoding": "zip"}, {"rounds": 0}, {"lr": -1}, {"dataset": "cifar10"},
                   {"round": 3}, {"rounds": "many"}):
        with pytest.raises(ParameterError, match="^hcfl: "):
            FLConfig.from_dict(params)


def test_stochastic_rounding_is_unbiased_and_nearest_is_not():
    hp = HashCombParams(levels=8, lo=-0.35, hi=0.35, delta=0.01)
    x = np.full(200_000, 0.0003)  # well inside one bin: nearest rounding is off by ~0.0011
    rng = np.random.default_rng(1)
    stoch = _leaf_centres(hp, node_labels(hp, x, "stochastic", rng)).mean()
    near = _leaf_centres(hp, node_labels(hp, x, "nearest", rng)).mean()
    w = 0.72 / 256
    assert abs(stoch - 0.0003) < 5 * (w / 2) / np.sqrt(x.size)
    assert abs(near - 0.0003) > 0.25 * w


def test_randomized_release_is_unbiased_too():
    hp = HashCombParams(levels=8, lo=-0.35, hi=0.35, delta=0.01, p=0.5)
    x = np.full(200_000, 0.05)
    pos = node_labels(hp, x, "stochastic", np.random.default_rng(2))
    got = decode_mean(hp, pos, np.ones(x.size), np.arange(x.size), x.size, 1)
    assert abs(got.mean() - 0.05) < 5 * got.std() / np.sqrt(x.size)
    assert np.unique(np.floor(np.log2(pos))).size > 3   # several levels released


@settings(max_examples=40, deadline=None)
@given(n=st.integers(50, 400), parts=st.integers(1, 5), how=st.sampled_from(["iid", "noniid"]),
       seed=st.integers(0, 2**16), classes=st.integers(2, 6))
def test_partition_covers_each_sample_once_and_is_deterministic(n, parts, how, seed, classes):
    y = np.arange(n) % classes
    shards = partition(y, parts, how, seed=seed, alpha=1.0, min_size=5)
    assert len(shards) == parts and min(s.size for s in shards) >= 5
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))
    again = partition(y, parts, how, seed=seed, alpha=1.0, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


def test_noniid_split_is_label_skewed():
    y = np.repeat(np.arange(10), 100)
    iid = partition(y, 5, "iid", seed=0)
    skew = partition(y, 5, "noniid", seed=0, alpha=0.3)

    def spread(shards):  # mean total-variation distance of owners' label mix from uniform
        return np.mean([0.5 * np.abs(np.bincount(y[s], minlength=10) / s.size - 0.1).sum()
                        for s in shards])
    assert spread(iid) < 0.1 < 0.3 < spread(skew)


def test_partition_errors():
    with pytest.raises(DatasetError, match="unknown split"):
        partition(np.zeros(100), 2, "sorted")
    with pytest.raises(DatasetError, match="cannot give"):
        partition(np.zeros(20), 5, "iid", min_size=10)


def test_run_parties_hashcomb_fl_across_processes_passes_audit(tmp_path):
    out = subprocess.run(
        [sys.executable, "run_parties.py", "--runs-dir", str(tmp_path), "--timeout", "150",
         "hashcomb-fl", "--owners", "3", "--rounds", "3", "--model", "logreg", "--no-baseline"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert (run_dir / "hashcomb_fl.png").stat().st_size > 10_000
    report = audit_run(run_dir)
    assert report.ok, report.to_json()
    assert len(report.sessions) == 2  # hcsetup and hcfl, one deployment, one run dir
    sessions = json.loads((run_dir / "results.json").read_text())["sessions"]
    owner = sessions[1]["parties"]["owner1"]["result"]
    assert [r["round"] for r in owner["rounds"]] == [1, 2, 3]
    # what the aggregator received in hcfl, per its transcript: only token messages from owners
    lines = [json.loads(x) for x in (run_dir / "transcripts" / "aggregator.jsonl").read_text()
             .splitlines()]
    steps = {(x["header"]["protocol"], x["header"]["step"]) for x in lines
             if x["event"] == "received" and x["header"]["kind"] == "msg"}
    assert {s for p, s in steps if p == "hcfl"} == {"tokens"}


def test_run_parties_private_hashcomb_fl_reports_epsilon_per_round(tmp_path):
    out = subprocess.run(
        [sys.executable, "run_parties.py", "--runs-dir", str(tmp_path), "--timeout", "150",
         "hashcomb-fl", "--owners", "3", "--rounds", "2", "--model", "logreg",
         "--dataset", "breast_cancer", "--rdp-epsilon", "500"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "RQM plan for epsilon 500" in out.stdout
    assert "-DP for each owner's whole update over 2 rounds" in out.stdout
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert audit_run(run_dir).ok
    sessions = json.loads((run_dir / "results.json").read_text())["sessions"]
    for session, enc in zip(sessions[1:], ("hashcomb", "float"), strict=True):
        owner = session["parties"]["owner1"]["result"]
        assert owner["encoding"] == enc
        eps = [r["epsilon"] for r in owner["rounds"]]
        assert eps[0] < eps[1] <= 500 and eps[1] > 450
    # both sessions trained on the same records: the ledger holds both
    assert sessions[2]["parties"]["owner1"]["result"]["ledger_epsilon"] > 900
