"""privacy/skellam.py: the RDP bound holds against the exact Rényi divergence of shifted
Skellam distributions, calibration meets its target, encoding respects its norm bound,
and the noise has the Skellam variance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from mpc import randomness
from privacy import skellam


def exact_renyi(alpha: float, mu: float, shift: int) -> float:
    """D_alpha(Sk(mu) + shift || Sk(mu)) in one dimension, summed over a wide support."""
    k = np.arange(-int(60 * math.sqrt(mu)) - 60, int(60 * math.sqrt(mu)) + 60 + shift)
    lp = stats.skellam.logpmf(k - shift, mu, mu)
    lq = stats.skellam.logpmf(k, mu, mu)
    ok = np.isfinite(lp) & np.isfinite(lq)      # far tails underflow to -inf: no mass there
    return float(logsumexp(alpha * lp[ok] + (1 - alpha) * lq[ok]) / (alpha - 1))


@pytest.mark.parametrize("mu", [2.0, 10.0, 50.0, 400.0])
@pytest.mark.parametrize("shift", [1, 3, 8])
def test_rdp_bound_holds_against_the_exact_divergence(mu, shift):
    orders = np.array([1.5, 2, 4, 8, 16, 32])
    bound = skellam.rdp(orders, shift, shift, mu)
    exact = np.array([exact_renyi(a, mu, shift) for a in orders])
    assert np.all(exact <= bound * (1 + 1e-9)), (exact, bound)
    # and it is not vacuous where the Gaussian-like term dominates
    if mu >= 50:   # orders that matter at these epsilons
        assert np.all(bound[:4] <= 1.5 * exact[:4] + 1e-6), (exact, bound)


def test_calibration_meets_its_target_and_more_rounds_need_more_noise():
    mus = [skellam.calibrate(4.0, r, 100.0, 10.0, 1e-5) for r in (1, 10, 100)]
    assert mus[0] < mus[1] < mus[2]
    for r, mu in zip((1, 10, 100), mus, strict=True):
        eps = skellam.epsilon(r, 100.0, 10.0, mu, 1e-5)
        assert 3.99 <= eps <= 4.0, eps
        assert skellam.epsilon(r, 100.0, 10.0, mu * 0.99, 1e-5) > 4.0


def test_encoding_respects_its_norm_bound_and_the_modulus_fits():
    enc = skellam.SkellamEncoding(clip=1.0, scale=300.0, dim=500, mu=2e6, min_survivors=8)
    rng = randomness.generator()
    for norm in (0.1, 1.0, 30.0):
        u = rng.normal(size=500)
        u *= norm / np.linalg.norm(u)
        x = enc.encode(u, rng, np.zeros(500, dtype=np.int64))
        assert np.linalg.norm(x) <= enc.l2
    k = enc.modulus_bits(10)
    noise = sum(randomness.skellam(500, enc.noise_per_client()) for _ in range(10))
    assert np.max(np.abs(10 * enc.l2 + noise)) < 2 ** (k - 1)


def test_skellam_noise_has_its_variance_and_sums_to_skellam():
    draws = randomness.skellam(200_000, 7.5)
    assert abs(draws.mean()) < 0.05 and abs(draws.var() / 15.0 - 1) < 0.02
    total = randomness.skellam(100_000, 2.0) + randomness.skellam(100_000, 3.0)
    ks = np.arange(-8, 9)
    observed = np.array([np.sum(total == k) for k in ks] + [np.sum(np.abs(total) > 8)])
    pmf = stats.skellam.pmf(ks, 5.0, 5.0)
    expected = total.size * np.append(pmf, 1 - pmf.sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-4   # Sk(2) + Sk(3) = Sk(5)
