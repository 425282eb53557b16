"""privacy/svt.py: DSSGD's sparse vector technique uses the noise scales of its formulas,
draws from the OS source, and its accounting says what a whole run costs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpc import randomness
from privacy import svt
from privacy.budget import PrivacyBudget


def test_scales_follow_the_papers_formulas():
    eps, c, gamma = 2.0, 24, 0.05
    delta_f = 2 * gamma
    s = svt.scales(eps, c, gamma)
    assert s.threshold == pytest.approx(2 * c * delta_f / (8 / 9 * eps))
    assert s.query == pytest.approx(2 * s.threshold)
    assert s.value == pytest.approx(2 * c * delta_f / (2 / 9 * eps))
    # the round's cost: choosing (epsilon_1) plus c values of sensitivity delta_f
    cost = 8 / 9 * eps + c * delta_f / s.value
    assert cost == pytest.approx(eps)


def test_the_mechanism_draws_those_scales_from_the_os(monkeypatch):
    drawn = []

    def laplace(shape, scale):
        drawn.append(scale)
        return real(shape, scale)

    real = randomness.laplace
    monkeypatch.setattr(svt.randomness, "laplace", laplace)
    change = np.linspace(-0.2, 0.2, 500)
    index, values = svt.svt_upload(change, 5, 1e-4, 0.05, 1.0)
    s = svt.scales(1.0, 5, 0.05)
    assert set(drawn) == {s.threshold, s.query, s.value}
    assert index.size <= 5 and np.all(np.abs(values) <= 0.05)


def test_value_noise_has_the_stated_scale():
    """Every candidate passes (tau far below zero): the values are Laplace(value scale)
    around the clipped change."""
    gamma, eps, c = 1.0, 1e5, 10      # noise far inside [-gamma, gamma]: no clipping
    s = svt.scales(eps, c, gamma)
    runs = [svt.svt_upload(np.zeros(200), c, -1e12, gamma, eps) for _ in range(400)]
    values = np.concatenate([v for _, v in runs])
    assert all(i.size == c for i, _ in runs)
    assert np.mean(np.abs(values)) == pytest.approx(s.value, rel=0.06)  # E|Lap(b)| = b


def test_laplace_from_the_os_has_the_right_moments():
    x = randomness.laplace(100_000, 3.0)
    assert abs(x.mean()) < 0.05 and np.mean(np.abs(x)) == pytest.approx(3.0, rel=0.02)
    assert np.var(x) == pytest.approx(18.0, rel=0.05)
    assert np.all(np.isfinite(x))


def test_a_run_costs_more_than_a_round():
    costs = svt.run_epsilon(0.5, 30, 1e-5)
    assert costs["basic"] == 15.0
    rho = 30 * 0.25 / 2
    assert costs["zcdp"] == pytest.approx(rho + 2 * math.sqrt(rho * math.log(1e5)))
    # the budget charges each round as an epsilon-DP release; its RDP accountant agrees
    # with basic composition to within its order grid
    b = PrivacyBudget(100.0, 1e-5)
    for r in range(30):
        assert b.request_pure(0.5, f"round {r}").granted
    assert 0.99 * min(costs["basic"], costs["zcdp"]) <= b.epsilon_spent() <= costs["basic"] + 0.2


def test_pure_charges_replay_from_entries():
    a = PrivacyBudget(5.0, 1e-5)
    entries = []
    a._record = lambda body, _orig=a._record: (entries.append(body), _orig(body))[1]
    for _ in range(6):
        a.request_pure(1.0)
    b = PrivacyBudget(5.0, 1e-5)
    for i, e in enumerate(entries, 1):
        b.apply({"seq": i, **e})
    assert b.epsilon_spent() == pytest.approx(a.epsilon_spent()) and b.refusals == a.refusals == 2
