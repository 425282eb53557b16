"""CaPC in one process: the cryptographic run gives the plaintext simulation's labels."""

import asyncio

import pytest

from protocols import ParameterError
from protocols.capc import CapcParams
from tests.capc_harness import run_capc

SMALL = {"dataset": "digits", "queries": 12, "batch_size": 6, "epochs": 8, "noise_seed": 11,
         "epsilon_budget": 1e4,
         "sigma_gnmax": 0.5}


@pytest.mark.parametrize("threshold", [None, 1.5])
async def test_crypto_labels_equal_plaintext_simulation(tmp_path, threshold):
    params = {**SMALL, "threshold": threshold}
    plain = await run_capc(tmp_path, {**params, "mode": "plaintext"})
    crypto = await run_capc(tmp_path, {**params, "mode": "crypto"})
    for res in (plain, crypto):
        bad = {k: v for k, v in res.items() if isinstance(v, BaseException)}
        assert not bad, bad
    p, c = plain["qp"].public, crypto["qp"].public
    assert c["labels"] == p["labels"]
    assert c["answered"] + c["abstained"] + c["refused"] == SMALL["queries"]
    if threshold is None:
        assert c["answered"] == SMALL["queries"]
    assert c["epsilon"] == pytest.approx(p["epsilon"]) and c["epsilon"] > 0
    # the labels are mostly right: the answering parties' models are good
    assert c["labelled_correctly"] >= 0.6 * c["answered"]
    assert crypto["dealer"].public["sessions"] == 2 * 2 + 2   # per batch: 2 APs + final
    assert crypto["guardian"].public["granted"] == SMALL["queries"]


async def test_budget_refusal_is_reported_to_the_qp(tmp_path):
    # sigma 0.5 costs a lot per query: a budget of 30 affords only a few
    res = await run_capc(tmp_path, {**SMALL, "mode": "plaintext", "epsilon_budget": 30.0})
    qp, pg = res["qp"].public, res["guardian"].public
    assert 0 < qp["refused"] < SMALL["queries"]
    assert qp["answered"] == SMALL["queries"] - qp["refused"] == pg["granted"]
    assert pg["epsilon"] <= 30.0


async def test_answering_party_killed_mid_run_query_completes_without_it(tmp_path):
    params = {**SMALL, "mode": "plaintext", "queries": 24, "batch_size": 6}
    res = await run_capc(tmp_path, params, aps=3, kill={"party": "ap2", "when": ("qp", "batch 1/")})
    assert isinstance(res["ap2"], BaseException)
    qp = res["qp"]
    assert not isinstance(qp, BaseException), qp
    assert qp.public["answering_parties_at_end"] == 2
    assert qp.public["answered"] == params["queries"]
    # every answered query was charged, whoever voted
    assert res["guardian"].public["granted"] == params["queries"]


def test_bad_parameters_are_named():
    with pytest.raises(ParameterError, match="unknown parameter.* sigma; known: "):
        CapcParams.from_dict({"queries": 5, "sigma": 1})
    with pytest.raises(ParameterError, match="mode"):
        CapcParams.from_dict({"mode": "fast"})
    for bad, what in (({"queries": 0}, "queries"), ({"queries": -5}, "queries"),
                      ({"batch_size": "ten"}, "batch_size"), ({"delta": 2}, "delta")):
        with pytest.raises(ParameterError, match=what):
            CapcParams.from_dict(bad)


async def test_pg_without_ledger_refuses_to_run(tmp_path):
    from mpc.channel import InMemoryNetwork
    from protocols import RoleContext, role_function
    from tests.capc_harness import roles_for
    roles = roles_for(1)
    net = InMemoryNetwork(list(roles))
    with pytest.raises(ParameterError, match="privacy budget"):
        await asyncio.wait_for(role_function("capc", "pg")(
            RoleContext(net.channel("guardian"), roles, dict(SMALL))), 30)
