"""The Randomized Quantization Mechanism and its accountant (privacy/rqm.py)."""

from __future__ import annotations

import numpy as np
import pytest

from privacy import gaussian, rqm
from privacy.budget import PrivacyBudget
from privacy.rqm import RQM, RQMError

ORDERS = np.array([1.5, 2.0, 4.0, 8.0, 16.0])


@pytest.mark.parametrize("q", [0.05, 0.3, 1.0])
def test_output_is_unbiased_and_stays_on_the_levels(q):
    mech = RQM.on_leaves(6, -1.0, 1.0, 0.4, q)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, 50)
    for v in x[:5]:
        p = mech.pmf(v)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert p @ mech.levels() == pytest.approx(v, abs=1e-12)       # exact mean
    idx = mech.sample(np.repeat(x, 4000), np.random.default_rng(1))
    assert idx.min() >= 0 and idx.max() < mech.m
    got = mech.levels()[idx].reshape(50, 4000).mean(1)
    std = np.sqrt([mech.variance(v) for v in x])
    assert np.all(np.abs(got - x) < 5 * std / np.sqrt(4000))
    # inputs outside the range are clipped first
    assert set(mech.sample(np.full(1000, 50.0), np.random.default_rng(2)).tolist()) <= \
        set(np.flatnonzero(mech.pmf(1.0) > 0).tolist())


def test_sampler_matches_the_closed_form():
    mech = RQM.on_leaves(4, -1.0, 1.0, 0.5, 0.3)
    for v in (-1.0, -0.37, 0.0, 0.81, 1.0):
        idx = mech.sample(np.full(300_000, v), np.random.default_rng(3))
        freq = np.bincount(idx, minlength=mech.m) / idx.size
        p = mech.pmf(v)
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / idx.size) + 1e-4)


@pytest.mark.parametrize("levels,margin,q", [(3, 0.3, 0.5), (4, 0.5, 0.3), (3, 1.0, 0.8)])
def test_accountant_matches_a_monte_carlo_estimate(levels, margin, q):
    mech = RQM.on_leaves(levels, -1.0, 1.0, margin, q)
    exact = rqm.divergence(mech.pmf(-1.0), mech.pmf(1.0), ORDERS)
    est = rqm.monte_carlo_divergence(mech, -1.0, 1.0, ORDERS[:3], 400_000, np.random.default_rng(4))
    np.testing.assert_allclose(est, exact[:3], rtol=0.05)
    assert np.all(rqm.rdp(mech, ORDERS) >= exact)


@pytest.mark.parametrize("q", [0.1, 0.6])
def test_the_extreme_inputs_are_the_worst_pair(q):
    mech = RQM.on_leaves(5, -1.0, 1.0, 0.3, q)
    xs = np.linspace(-1.0, 1.0, 33)
    pmfs = [mech.pmf(v) for v in xs]
    worst = max(rqm.divergence(a, b, ORDERS).max() for a in pmfs for b in pmfs)
    assert worst <= rqm.rdp(mech, ORDERS).max() * (1 + 1e-9)


def test_binary_case_matches_randomized_response_by_hand():
    """q -> 0 keeps only the outer levels -B and B: P(B | x) = (x + B) / 2B."""
    mech = RQM(-3.0, 2.0, 4, -1.0, 1.0, 1e-15)   # levels -3, -1, 1, 3; outer ones +-3
    p_hi, p_lo = 4 / 6, 2 / 6                      # P(output 3 | x = 1), P(output 3 | x = -1)
    a = 2.0
    by_hand = np.log(p_hi**a * p_lo**(1 - a) + (1 - p_hi)**a * (1 - p_lo)**(1 - a)) / (a - 1)
    assert rqm.divergence(mech.pmf(1.0), mech.pmf(-1.0), np.array([a]))[0] == \
        pytest.approx(by_hand, rel=1e-9)


def test_composition_and_calibration():
    mech = RQM.on_leaves(8, -0.35, 0.35, 0.35, 0.01)
    one = rqm.epsilon(mech, 1, 1, 1e-5)
    many = rqm.epsilon(mech, 100, 20, 1e-5)
    assert many > 20 * one
    q = rqm.calibrate_q(8, -0.35, 0.35, 20.0, 1000.0, 2410, 20, 1e-5)
    assert rqm.epsilon(RQM.on_leaves(8, -0.35, 0.35, 20.0, q), 2410, 20, 1e-5) <= 1000.0
    assert rqm.epsilon(RQM.on_leaves(8, -0.35, 0.35, 20.0, min(1.0, q * 1.01)), 2410, 20, 1e-5) \
        > 1000.0 or q == 1.0
    with pytest.raises(RQMError, match="larger delta"):
        rqm.calibrate_q(8, -0.35, 0.35, 0.35, 1.0, 2410, 20, 1e-5)
    margin, q, std = rqm.plan(8, -0.35, 0.35, 1000.0, 2410, 20, 1e-5)
    assert rqm.epsilon(RQM.on_leaves(8, -0.35, 0.35, margin, q), 2410, 20, 1e-5) <= 1000.0
    # as noisy as the Gaussian baseline at the same epsilon, within a factor of 2
    g = gaussian.calibrate(1000.0, 20, 1e-5) * 0.7 * np.sqrt(2410)
    assert 0.5 < std / g < 2.0


def test_a_margin_inside_half_a_leaf_has_no_guarantee():
    with pytest.raises(RQMError, match="strictly inside"):
        RQM.on_leaves(8, -0.35, 0.35, 0.35 / 256, 0.5)


def test_ledger_charges_and_replays_rqm_and_gaussian_rounds():
    budget = PrivacyBudget(1e6, 1e-5)
    d1 = budget.request_rqm(8, -0.35, 0.35, 20.0, 0.5, 2410, "round 1")
    d2 = budget.request_gaussian(3.0, "round 1 baseline")
    assert d1.granted and d2.granted and d2.epsilon_if_granted > d1.epsilon_if_granted
    replayed = PrivacyBudget(1e6, 1e-5)
    mech = RQM.on_leaves(8, -0.35, 0.35, 20.0, 0.5)
    for entry in ({"seq": 1, "type": "charge", "mechanism": "rqm", "levels": 8, "lo": -0.35,
                   "hi": 0.35, "margin": 20.0, "q": 0.5, "coordinates": 2410},
                  {"seq": 2, "type": "charge", "mechanism": "gaussian", "noise_multiplier": 3.0}):
        replayed.apply(entry)
    assert replayed.epsilon_spent() == pytest.approx(budget.epsilon_spent(), rel=1e-12)
    np.testing.assert_allclose(replayed.accountant.rdp, 2410 * rqm.rdp(mech, replayed.accountant.orders)
                               + gaussian.rdp(replayed.accountant.orders, 3.0), rtol=1e-12)
    small = PrivacyBudget(1.0, 1e-5)
    assert not small.request_rqm(8, -0.35, 0.35, 20.0, 0.5, 2410).granted
