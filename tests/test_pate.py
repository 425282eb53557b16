"""PATE mechanisms and the RDP accountant: reference values, soundness, invariants."""

from __future__ import annotations

import math
import multiprocessing as mp

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.pate import (
    DEFAULT_ORDERS,
    InsecureNoiseError,
    NoiseSource,
    PateAccountant,
    PateError,
    confident_gnmax,
    confident_gnmax_noise,
    epsilon_from_rdp,
    gnmax,
    gnmax_logq,
    gnmax_noise,
    gnmax_rdp_data_independent,
    gnmax_rdp_from_logq,
    require_secure,
    threshold_log_pr_answered,
    threshold_rdp_data_independent,
    threshold_rdp_from_log_pr,
)

UNANIMOUS = [250] + [0] * 9


# ---------------------------------------------------------------- reference values

def test_one_gnmax_answer_sigma40_matches_published_epsilons() -> None:
    acc = PateAccountant()
    acc.add_gnmax(None, 40.0)
    assert round(acc.epsilon(1e-6, conversion="classic"), 3) == 0.186
    assert round(acc.epsilon(1e-6, conversion="improved"), 3) == 0.142


def test_reference_values_are_the_optimum_over_all_integer_orders() -> None:
    # Independent of our grid: brute force over every integer order 2..5000.
    a = np.arange(2, 5001, dtype=float)
    log_d = math.log(1e-6)
    classic = np.min(a / 1600 - log_d / (a - 1))
    improved = np.min(a / 1600 + np.log((a - 1) / a) - (log_d + np.log(a)) / (a - 1))
    acc = PateAccountant()
    acc.add_gnmax(None, 40.0)
    # The default grid loses at most 1e-4 against the integer optimum.
    assert classic <= acc.epsilon(1e-6, "classic") <= classic + 1e-4
    assert improved <= acc.epsilon(1e-6, "improved") <= improved + 1e-4


def test_data_independent_curves_have_the_closed_forms() -> None:
    o = np.array([1.5, 2.0, 10.0, 100.0])
    np.testing.assert_allclose(gnmax_rdp_data_independent(40.0, o), o / 1600)
    np.testing.assert_allclose(threshold_rdp_data_independent(200.0, o), o / (2 * 200.0**2))


# ---------------------------------------------------------------- data dependence

def test_unanimous_vote_costs_far_less_data_dependent() -> None:
    o = np.array([5.0, 10.0, 17.0])
    dd = gnmax_rdp_from_logq(gnmax_logq(UNANIMOUS, 40.0), 40.0, o)
    di = gnmax_rdp_data_independent(40.0, o)
    assert np.all(dd < di / 100)
    dep, ind = PateAccountant(), PateAccountant()
    for _ in range(1000):
        dep.add_gnmax(UNANIMOUS, 40.0, data_dependent=True)
        ind.add_gnmax(UNANIMOUS, 40.0, data_dependent=False)
    assert dep.epsilon(1e-6) < ind.epsilon(1e-6) / 10
    assert dep.data_dependent and not ind.data_dependent
    assert "DATA-DEPENDENT" in str(dep.spent(1e-6))
    assert "data-independent" in str(ind.spent(1e-6))


def test_split_vote_gets_no_data_dependent_discount() -> None:
    votes = [125, 125] + [0] * 8
    np.testing.assert_allclose(
        gnmax_rdp_from_logq(gnmax_logq(votes, 40.0), 40.0),
        gnmax_rdp_data_independent(40.0))


def test_logq_is_the_union_bound_capped_at_one_minus_one_over_m() -> None:
    votes = np.array([30.0, 20.0, 5.0])
    expected = scipy.special.logsumexp(
        scipy.stats.norm.logsf([10.0, 25.0], scale=math.sqrt(2) * 4.0))
    assert gnmax_logq(votes, 4.0) == pytest.approx(expected)
    assert gnmax_logq([3, 3, 3], 10.0) == pytest.approx(math.log(2 / 3))


def _bernoulli_renyi(logp: float, logq: float, a: float) -> float:
    """D_a(Bern(p) || Bern(q)) from log-probabilities, in log space."""
    log1p_, log1q = math.log(-math.expm1(logp)), math.log(-math.expm1(logq))
    return float(np.logaddexp(a * logp + (1 - a) * logq,
                              a * log1p_ + (1 - a) * log1q)) / (a - 1)


@settings(max_examples=150, deadline=None)
@given(gap=st.integers(0, 400), sigma=st.floats(2.0, 80.0), order=st.floats(1.1, 300.0))
def test_theorem6_bound_dominates_the_true_divergence_for_two_classes(
        gap: int, sigma: float, order: float) -> None:
    # With two classes the union bound is exact and GNMax's output is a
    # Bernoulli; a neighbour (one teacher switches) moves the gap by 2.
    # Our data-dependent bound at D must dominate D_a(M(D) || M(D')) for both.
    def log_pr_second(g: float) -> float:
        return float(scipy.stats.norm.logsf(g, scale=math.sqrt(2) * sigma))
    votes = [gap + 100, 100]
    bound = gnmax_rdp_from_logq(gnmax_logq(votes, sigma), sigma, [order])[0]
    for neighbour_gap in (gap - 2, gap + 2):
        true = _bernoulli_renyi(log_pr_second(gap), log_pr_second(neighbour_gap), order)
        assert true <= bound * (1 + 1e-9) + 1e-12


def test_threshold_costs() -> None:
    log_pr = threshold_log_pr_answered(UNANIMOUS, 300, 200.0)
    assert math.exp(log_pr) == pytest.approx(scipy.stats.norm.sf(50 / 200))
    # Pr[answered] ~ 0.4: no data-dependent discount is possible.
    np.testing.assert_allclose(threshold_rdp_from_log_pr(log_pr, 200.0),
                               threshold_rdp_data_independent(200.0))
    # Far above the threshold, the check almost surely answers: cheap.
    far = threshold_log_pr_answered([2000, 0], 300, 200.0)
    o = np.array([5.0, 10.0])
    assert np.all(threshold_rdp_from_log_pr(far, 200.0, o)
                  < threshold_rdp_data_independent(200.0, o) / 10)


def test_confident_gnmax_realized_and_expected_costs() -> None:
    o = DEFAULT_ORDERS
    t_cost = threshold_rdp_from_log_pr(threshold_log_pr_answered(UNANIMOUS, 300, 200.0), 200.0)
    g_cost = gnmax_rdp_from_logq(gnmax_logq(UNANIMOUS, 40.0), 40.0)
    p = scipy.stats.norm.sf(50 / 200)
    # one rule for an unknown outcome (None): charged and counted as answered, on both paths
    cases = {None: t_cost + g_cost, True: t_cost + g_cost, False: t_cost}
    for answered, expected in cases.items():
        acc = PateAccountant()
        acc.add_confident_gnmax(UNANIMOUS, 300, 200.0, 40.0, answered=answered,
                                data_dependent=True)
        np.testing.assert_allclose(acc.rdp, expected, rtol=1e-12)
        assert acc.answered == (answered is not False)
    # the expected cost: a planning estimate, never charged
    acc = PateAccountant()
    np.testing.assert_allclose(acc.expected_confident_gnmax(UNANIMOUS, 300, 200.0, 40.0),
                               t_cost + p * g_cost, rtol=1e-12)
    assert not acc.rdp.any() and acc.queries == 0
    # Data-independent: realized costs, and the worst case when the outcome is unknown.
    di_t, di_g = threshold_rdp_data_independent(200.0), gnmax_rdp_data_independent(40.0)
    for answered, expected in {None: di_t + di_g, True: di_t + di_g, False: di_t}.items():
        acc = PateAccountant(o)
        acc.add_confident_gnmax(None, 300, 200.0, 40.0, answered=answered)
        np.testing.assert_allclose(acc.rdp, expected)
        assert acc.answered == (answered is not False)


def test_what_if_equals_actually_charging() -> None:
    acc = PateAccountant()
    for _ in range(7):
        acc.add_confident_gnmax(None, 300, 200.0, 40.0, answered=False)
    predicted = acc.epsilon_after_confident_gnmax(200.0, 40.0, 1e-6)
    predicted_gnmax = acc.epsilon_after_gnmax(40.0, 1e-6, "classic")
    before = acc.epsilon(1e-6)
    acc2 = acc.copy()
    acc.add_confident_gnmax(None, 300, 200.0, 40.0, answered=True)
    acc2.add_gnmax(None, 40.0)
    assert predicted == acc.epsilon(1e-6) > before
    assert predicted_gnmax == acc2.epsilon(1e-6, "classic")


def test_logq_hooks_for_costs_computed_elsewhere() -> None:
    acc = PateAccountant()
    acc.add_gnmax_logq(gnmax_logq(UNANIMOUS, 40.0), 40.0)
    ref = PateAccountant()
    ref.add_gnmax(UNANIMOUS, 40.0, data_dependent=True)
    np.testing.assert_array_equal(acc.rdp, ref.rdp)
    assert acc.data_dependent
    zero = PateAccountant()
    zero.add_gnmax_logq(-math.inf, 40.0)
    assert not zero.rdp.any()


# ---------------------------------------------------------------- properties

query = st.tuples(
    st.lists(st.integers(0, 300), min_size=2, max_size=12),
    st.floats(1.0, 300.0),            # sigma_threshold
    st.floats(1.0, 100.0),            # sigma_gnmax
    st.integers(0, 400),              # threshold
    st.sampled_from([None, True, False]),
    st.booleans(),                    # plain GNMax instead of Confident-GNMax
)


@settings(max_examples=60, deadline=None)
@given(queries=st.lists(query, min_size=1, max_size=15),
       delta=st.sampled_from([1e-5, 1e-6, 1e-9]),
       conversion=st.sampled_from(["classic", "improved"]))
def test_costs_nonnegative_monotone_and_data_dependent_below_independent(
        queries: list, delta: float, conversion: str) -> None:
    dep, ind = PateAccountant(), PateAccountant()
    last_dep = last_ind = 0.0
    for votes, s1, s2, t, answered, plain in queries:
        if plain:
            dep.add_gnmax(votes, s2, data_dependent=True)
            ind.add_gnmax(votes, s2)
        else:
            dep.add_confident_gnmax(votes, t, s1, s2, answered=answered, data_dependent=True)
            ind.add_confident_gnmax(votes, t, s1, s2, answered=answered)
        assert np.all(dep.rdp >= 0)
        assert np.all(dep.rdp <= ind.rdp * (1 + 1e-12))
        e_dep, e_ind = dep.epsilon(delta, conversion), ind.epsilon(delta, conversion)
        assert 0.0 <= e_dep <= e_ind + 1e-12
        assert e_dep >= last_dep and e_ind >= last_ind
        last_dep, last_ind = e_dep, e_ind
        assert ind.epsilon(delta, "improved") <= ind.epsilon(delta, "classic")


@settings(max_examples=50, deadline=None)
@given(logq=st.floats(-5000.0, 0.0), sigma=st.floats(0.5, 500.0))
def test_theorem6_never_negative_nor_above_data_independent(logq: float, sigma: float) -> None:
    dd = gnmax_rdp_from_logq(logq, sigma)
    assert np.all(dd >= 0)
    assert np.all(dd <= gnmax_rdp_data_independent(sigma))


# ---------------------------------------------------------------- conversion & errors

def test_epsilon_from_rdp_zero_curve_and_order() -> None:
    eps, order = epsilon_from_rdp(DEFAULT_ORDERS, np.zeros_like(DEFAULT_ORDERS), 1e-6, "classic")
    assert eps > 0 and order == DEFAULT_ORDERS.max()


@pytest.mark.parametrize("call", [
    lambda: PateAccountant().add_gnmax(None, 0.0),
    lambda: PateAccountant().add_gnmax([1], 1.0, data_dependent=True),
    lambda: PateAccountant().add_gnmax([1, -2], 1.0, data_dependent=True),
    lambda: PateAccountant().add_gnmax(None, 1.0, data_dependent=True),
    lambda: PateAccountant().epsilon(0.0),
    lambda: PateAccountant().epsilon(1e-5, conversion="fancy"),
    lambda: PateAccountant(orders=[0.5, 2.0]),
    lambda: PateAccountant().add_rdp(np.ones(3), data_dependent=False),
    lambda: gnmax_rdp_from_logq(0.5, 1.0),
    lambda: gnmax_noise(1, 1.0),
    lambda: NoiseSource.for_simulation(-1),
])
def test_user_errors_raise_pate_error(call) -> None:
    with pytest.raises(PateError):
        call()


# ---------------------------------------------------------------- mechanisms & noise

def test_simulation_source_is_reproducible_and_labelled_insecure() -> None:
    a, b = NoiseSource.for_simulation(7), NoiseSource.for_simulation(7)
    np.testing.assert_array_equal(gnmax_noise(10, 3.0, a), gnmax_noise(10, 3.0, b))
    assert "INSECURE" in repr(a) and a.insecure
    with pytest.raises(InsecureNoiseError):
        require_secure(a)
    require_secure(NoiseSource.secure())


def test_secure_sources_differ_and_have_the_right_scale() -> None:
    x, y = gnmax_noise(20_000, 40.0), gnmax_noise(20_000, 40.0)
    assert not np.array_equal(x, y)
    assert abs(x.std() - 40.0) < 1.5 and abs(x.mean()) < 1.5
    n = confident_gnmax_noise(5, 200.0, 40.0, NoiseSource.for_simulation(1))
    assert isinstance(n.threshold, float) and n.argmax.shape == (5,)


def _draw(source: NoiseSource, out: mp.Queue) -> None:
    out.put(gnmax_noise(4, 1.0, source).tolist())


def test_secure_source_reseeds_after_fork() -> None:
    ctx = mp.get_context("fork")
    source = NoiseSource.secure()
    q = ctx.Queue()
    procs = [ctx.Process(target=_draw, args=(source, q)) for _ in range(2)]
    for p in procs:
        p.start()
    draws = [q.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(timeout=20)
    assert draws[0] != draws[1]


def test_mechanisms_answer_the_clear_winner_and_abstain_below_threshold() -> None:
    src = NoiseSource.for_simulation(0)
    assert all(gnmax([0, 0, 500, 0], 5.0, src) == 2 for _ in range(50))
    assert confident_gnmax([0, 500, 0], 300, 10.0, 5.0, src) == 1
    assert confident_gnmax([100, 90, 60], 300, 10.0, 5.0, src) is None
    # Noise matters: a near-tie is answered both ways.
    answers = {gnmax([100, 100], 40.0, src) for _ in range(100)}
    assert answers == {0, 1}
