"""protocols/dssgd.py with learning/dssgd.py: DSSGD in process (the same role code that
runs between processes), checked against sequential SGD, against its public limits with
a spy on every upload, and with a participant that dies or cheats.
(Between processes, with a SIGKILL: tests/test_dssgd_processes.py.)"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

from learning import dssgd as maths
from learning.datasets import federated_shard
from learning.models import public_mlp
from learning.training import get_flat, round_seed, train
from privacy.budget import PrivacyBudget
from protocols import dssgd
from protocols.context import Resources
from protocols.errors import ParameterError
from protocols.runner import run_session

SMALL = {"rounds": 4, "hidden": 16, "baselines": False}


def roles(n: int) -> dict[str, str]:
    return {**{f"p{i}": "participant" for i in range(1, n + 1)}, "server": "server"}


@contextlib.contextmanager
def spying(monkeypatch):
    """Every upload each participant sends: name -> [(round, index, values)]."""
    seen: dict[str, list] = {}

    class Spy:
        def __init__(self, channel):
            self._channel = channel

        def __getattr__(self, name):
            return getattr(self._channel, name)

        async def send(self, to, kind, payload):
            if kind == "dssgd.push":
                seen.setdefault(self._channel.me, []).append(
                    (payload["round"], np.asarray(payload["index"]).astype(np.int64),
                     np.asarray(payload["value"])))
            await self._channel.send(to, kind, payload)

    real = dssgd.ROLES["participant"]

    async def participant(ctx):
        return await real(dataclasses.replace(ctx, channel=Spy(ctx.channel)))

    monkeypatch.setitem(dssgd.ROLES, "participant", participant)
    yield seen


async def run(params: dict, n: int = 3, **kw) -> dict:
    res = await run_session("dssgd", roles(n), {**SMALL, **params}, **kw)
    failed = {k: v for k, v in res.items() if isinstance(v, BaseException)}
    assert not failed, failed
    return res


@pytest.mark.parametrize("order", ["round-robin", "random"])
async def test_full_sharing_in_turn_is_sequential_sgd(order):
    """theta_u = theta_d = 1 without clipping: the global model after the run is, bit for
    bit, sequential SGD over the participants in the order they were served."""
    cfg = {"theta_u": 1.0, "theta_d": 1.0, "gamma": None, "order": order, "seed": 3}
    res = await run(cfg)
    names = sorted(n for n in roles(3) if n != "server")
    typed = dssgd.DssgdParams.from_dict({**SMALL, **cfg})
    shards = [federated_shard("digits", 3, i, seed=0) for i in range(3)]
    model = public_mlp("mlp", shards[0][0].shape[1], 10, typed.hidden, typed.seed)
    for r in range(typed.rounds):
        order_r = range(3) if order == "round-robin" else np.random.default_rng([3, r]).permutation(3)
        for i in order_r:
            x, y = shards[i][:2]
            train(model, x, y, epochs=1, lr=typed.lr, batch_size=typed.batch, optimizer="sgd",
                  seed=round_seed(typed.seed, i, r))
    got = res["server"].private["dssgd_global"]
    assert got.dtype == np.float64
    assert np.array_equal(got, get_flat(model).astype(np.float64))
    for n in names:  # everyone ends with the same, final, global model
        assert np.array_equal(res[n].private["dssgd_model"], get_flat(model))


@pytest.mark.parametrize("selection,gamma,dp", [("largest", 0.01, None), ("threshold", 0.05, None),
                                                 ("largest", 0.02, 50.0)])
async def test_uploads_keep_the_public_limits_and_the_server_counts_them(monkeypatch, selection,
                                                                        gamma, dp):
    tau = 2e-3
    params = {"theta_u": 0.05, "theta_d": 0.5, "selection": selection, "gamma": gamma,
              "tau": tau, "dp_epsilon": dp, "epsilon_budget": 1e4, "download": "recent"}
    with spying(monkeypatch) as seen:
        res = await run(params)
    dim = res["p1"].public["dimension"]
    limit = int(np.floor(0.05 * dim))
    counts = np.zeros(dim, dtype=np.int64)
    for uploads in seen.values():
        assert [r for r, _, _ in uploads] == list(range(SMALL["rounds"]))
        for _, index, values in uploads:
            assert 0 < index.size <= limit and np.unique(index).size == index.size
            assert np.all(np.abs(values) <= gamma)
            if selection == "threshold" and dp is None:
                assert np.all(np.abs(values) >= tau)   # never a value below tau
            counts += np.bincount(index, minlength=dim)
    assert np.array_equal(res["server"].private["dssgd_counts"], counts)
    assert res["server"].public["uploads_applied"] == 3 * SMALL["rounds"]


def test_selection_maths():
    rng = np.random.default_rng(0)
    change = rng.normal(size=1000)
    top = maths.select_largest(change, 10)
    assert set(top) == set(np.argsort(-np.abs(change))[:10])   # magnitude, not signed value
    picked = maths.select_threshold(change, 50, 1.5, rng)
    assert picked.size == 50 and np.all(np.abs(change[picked]) >= 1.5)
    few = maths.select_threshold(change, 500, 3.0, rng)
    assert set(few) == set(np.flatnonzero(np.abs(change) >= 3.0))
    counts, last = np.arange(100), np.arange(100)[::-1].copy()
    assert list(maths.select_download(counts, last, 0.05, "counts", rng)) == [95, 96, 97, 98, 99]
    assert list(maths.select_download(counts, last, 0.05, "recent", rng)) == [0, 1, 2, 3, 4]
    assert maths.select_download(counts, last, 1.0, "random", rng).size == 100
    with pytest.raises(maths.DssgdError, match="raise theta_u"):
        maths.upload_count(100, 0.001)


def test_the_server_refuses_uploads_past_the_limits():
    ps = maths.ParameterServer(np.zeros(10), max_values=2, gamma=0.1)
    for index, values, why in [([1, 2, 3], [0, 0, 0], "at most 2"), ([1, 1], [0, 0], "twice"),
                               ([1], [0.2], "gamma"), ([10], [0.0], "outside"),
                               ([1], [np.nan], "finite")]:
        assert why in ps.check(np.array(index), np.array(values))
    ps.apply(np.array([3, 4]), np.array([0.1, -0.05]))
    assert ps.counts.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0] and ps.params[3] == 0.1


async def test_a_cheating_participant_is_dropped_and_named(monkeypatch):
    """p2 uploads values beyond gamma: the server refuses them, drops p2 by name, and the
    others finish; p2's run then fails (nobody answers it)."""
    real = dssgd.ROLES["participant"]

    class Cheat:
        def __init__(self, channel):
            self._channel = channel

        def __getattr__(self, name):
            return getattr(self._channel, name)

        async def send(self, to, kind, payload):
            if kind == "dssgd.push" and payload["round"] == 1:
                payload = {**payload, "value": payload["value"] * 1000}
            await self._channel.send(to, kind, payload)

    async def participant(ctx):
        if ctx.me == "p2":
            ctx = dataclasses.replace(ctx, channel=Cheat(ctx.channel),
                                      params={**ctx.params, "timeout": 3.0})
        return await real(ctx)

    monkeypatch.setitem(dssgd.ROLES, "participant", participant)
    res = await run_session("dssgd", roles(3), {**SMALL, "gamma": 0.01})
    assert isinstance(res["p2"], BaseException)
    dropped = res["server"].public["dropped"]
    assert list(dropped) == ["p2"] and "gamma" in dropped["p2"] and "round 2" in dropped["p2"]
    assert res["server"].public["uploads_applied"] == 2 * SMALL["rounds"] + 1
    assert all(not isinstance(res[n], BaseException) for n in ("p1", "p3"))


async def test_a_participant_killed_mid_run_is_dropped_the_others_finish():
    res = await run_session("dssgd", roles(3), {**SMALL, "order": "async", "rounds": 6},
                            kill={"party": "p3", "when": ("p1", "round 2/")})
    assert isinstance(res["p3"], BaseException)
    assert "p3" in res["server"].public["dropped"]
    assert all(len(res[n].public["rounds"]) == 6 for n in ("p1", "p2"))


async def test_private_uploads_are_charged_to_each_participants_budget():
    budgets: dict[str, PrivacyBudget] = {}

    def resources(name: str, role: str) -> Resources:
        if role != "participant":
            return Resources()
        budgets[name] = PrivacyBudget(3.5, 1e-5)
        return Resources(budget=budgets[name])

    res = await run({"dp_epsilon": 1.0, "gamma": 0.05}, resources=resources)
    for name, budget in budgets.items():
        privacy = res[name].public["privacy"]
        # three rounds fit in epsilon 3.5, the fourth is refused and uploads nothing
        assert privacy["rounds_charged"] == 3 and privacy["rounds_refused"] == 1
        assert [r["uploaded"] > 0 for r in res[name].public["rounds"]] == [True] * 3 + [False]
        assert privacy["basic"] == 3.0 and 3.0 <= budget.epsilon_spent() <= 3.5
        assert budget.refusals == 1


def test_bad_parameters_say_what_to_change():
    for params, words in [({"dp_epsilon": 1.0, "gamma": None}, "needs gamma"),
                          ({"theta_u": 0}, "theta_u"), ({"order": "sideways"}, "order must be"),
                          ({"gamma": 1e-5, "tau": 1e-4}, "gamma must be >= tau")]:
        with pytest.raises(ParameterError, match=words):
            dssgd.DssgdParams.from_dict(params)


async def test_a_tiny_theta_u_fails_before_any_upload():
    res = await run_session("dssgd", roles(2), {**SMALL, "theta_u": 1e-5, "timeout": 2.0})
    assert "raise theta_u" in str(res["p1"])
