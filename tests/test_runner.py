"""protocols/runner.py: a whole session in one process, with no parties/ at all
(an in-memory privacy budget, the protocol's conformance rules enforced)."""

import subprocess
import sys
from pathlib import Path

import pytest

from protocols import ParameterError
from protocols.runner import run_session

ROLES = {"qp": "qp", "ap1": "ap", "ap2": "ap", "guardian": "pg", "dealer": "dealer"}
SMALL = {"mode": "plaintext", "queries": 6, "batch_size": 6, "epochs": 4, "noise_seed": 1,
         "sigma_gnmax": 0.5, "epsilon_budget": 1e4}


async def test_capc_runs_in_memory_without_parties():
    res = await run_session("capc", ROLES, SMALL)
    bad = {k: v for k, v in res.items() if isinstance(v, BaseException)}
    assert not bad, bad
    assert res["qp"].public["answered"] == SMALL["queries"]
    assert 0 < res["guardian"].public["epsilon"] <= SMALL["epsilon_budget"]


async def test_the_guardian_refuses_by_default():
    """Nobody raised the budget: a QP asking many queries at the default noise is refused
    once the default (finite) budget is spent, and is told so."""
    from protocols.capc import CapcParams
    params = {k: v for k, v in SMALL.items() if k not in ("epsilon_budget", "sigma_gnmax")}
    res = await run_session("capc", ROLES, {**params, "queries": 40, "batch_size": 20})
    assert not [v for v in res.values() if isinstance(v, BaseException)]
    default = CapcParams().epsilon_budget
    assert default <= 10
    assert res["qp"].public["refused"] > 0
    assert 0 < res["guardian"].public["epsilon"] <= default


def test_a_protocol_session_loads_nothing_of_parties():
    code = ("import asyncio, sys; from protocols.runner import run_session; "
            f"r = asyncio.run(run_session('capc', {ROLES!r}, {SMALL!r})); "
            "assert not any(isinstance(v, BaseException) for v in r.values()), r; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'parties'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


async def test_bad_parameters_fail_before_any_role_starts():
    with pytest.raises(ParameterError, match="queries must be at least 1"):
        await run_session("capc", ROLES, {**SMALL, "queries": 0})
