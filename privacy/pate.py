"""PATE mechanisms (GNMax, Confident-GNMax) and their Renyi-DP accountant.

Pure computation: no file, socket or clock.  The formulas follow Papernot et
al. 2018, "Scalable private learning with PATE" (ICLR), summarised in
PAPERS.md section 4:

* GNMax answers ``argmax_j (n_j + N(0, sigma^2))``.  Its data-independent RDP
  at order ``a`` is ``a / sigma^2`` (Proposition 8).  Given an upper bound
  ``q`` on Pr[answer != plurality] (union bound, Proposition 7), Theorem 6
  gives a smaller, *data-dependent* RDP where its conditions hold.
* Confident-GNMax first checks ``max_j n_j + N(0, sigma_1^2) >= T``; the check
  has sensitivity 1, so its RDP is ``a / (2 sigma_1^2)`` (data-independent), or
  Theorem 6 with ``q' = min(Pr[answered], 1 - Pr[answered])``.
* RDP adds up per order; epsilon is the minimum over the orders of the classic
  conversion ``rdp + log(1/delta)/(a-1)`` or of the tighter one of Canonne,
  Kamath and Steinke / Balle et al. (arXiv 2004.00010, Prop. 12):
  ``rdp + log((a-1)/a) - (log(delta) + log(a))/(a-1)``.

Data-dependent numbers are computed from the vote histogram.  In CaPC nobody
sees that histogram, and even where someone does, releasing a data-dependent
epsilon is itself a leak unless it goes through a smooth-sensitivity analysis
(not implemented here).  So the accountant's default is data-independent, and
every figure that includes a data-dependent cost carries ``data_dependent=True``.
A data-dependent cost computed later inside MPC enters through
:meth:`PateAccountant.add_gnmax_logq` / :meth:`PateAccountant.add_confident_gnmax_logq`,
which take only the (securely computed) log-probabilities, never the votes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from mpc import randomness

Conversion = Literal["classic", "improved"]

# Orders near 1 serve large budgets (many queries), orders up to 1e4 serve
# tiny ones (one low-noise query); the reference sigma=40 optimum is ~120-150.
DEFAULT_ORDERS: NDArray[np.float64] = np.unique(np.concatenate([
    1.0 + np.logspace(-2, 0, 30, endpoint=False),
    np.arange(2.0, 100.0, 0.5),
    np.logspace(2, 4, 120),
]))


class PateError(ValueError):
    """A PATE mechanism or accountant was called with invalid parameters."""


class InsecureNoiseError(RuntimeError):
    """A fixed-seed simulation noise source reached code that needs real noise."""


# --------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------

class NoiseSource:
    """Where Gaussian noise comes from.

    ``NoiseSource.secure()`` (the default everywhere) draws every sample from the
    OS random source (:func:`mpc.randomness.normal`): no generator state, so no
    two processes (forked or not) share noise.  ``NoiseSource.for_simulation(seed)`` fixes
    the noise for reproducible experiments; it is an object that must be passed
    explicitly, it says INSECURE in its repr, and :func:`require_secure` turns
    it away.  There is deliberately no environment variable or global switch.
    """

    __slots__ = ("_gen", "insecure", "_seed")

    def __init__(self, *, _generator: np.random.Generator | None, _insecure: bool,
                 _seed: int | None) -> None:
        self._gen = _generator
        self.insecure = _insecure
        self._seed = _seed

    @classmethod
    def secure(cls) -> NoiseSource:
        """Noise seeded from the OS random source (deployment)."""
        return cls(_generator=None, _insecure=False, _seed=None)

    @classmethod
    def for_simulation(cls, seed: int) -> NoiseSource:
        """INSECURE reproducible noise for simulations and tests only."""
        if not isinstance(seed, int) or seed < 0:
            raise PateError(f"simulation seed must be a non-negative int, got {seed!r}")
        return cls(_generator=np.random.Generator(np.random.PCG64(seed)),
                   _insecure=True, _seed=seed)

    def normal(self, sigma: float, size: int | None = None) -> NDArray[np.float64] | float:
        """Draw N(0, sigma^2) samples (a float when ``size`` is None)."""
        _check_sigma(sigma, "sigma")
        if self._gen is not None:  # simulation only
            return float(self._gen.normal(0.0, sigma)) if size is None else self._gen.normal(0.0, sigma, size)
        if size is None:
            return float(randomness.normal(1, sigma)[0])
        return randomness.normal(size, sigma)

    def __repr__(self) -> str:
        if self.insecure:
            return f"NoiseSource(INSECURE fixed seed {self._seed}: simulation only)"
        return "NoiseSource(secure: OS-seeded)"


def require_secure(source: NoiseSource) -> None:
    """Raise :class:`InsecureNoiseError` if ``source`` is a simulation source."""
    if source.insecure:
        raise InsecureNoiseError(
            f"{source!r} was given where deployment noise is required; "
            "use NoiseSource.secure() (or pass no source)")


def _source(source: NoiseSource | None) -> NoiseSource:
    return NoiseSource.secure() if source is None else source


def gnmax_noise(num_classes: int, sigma: float,
                source: NoiseSource | None = None) -> NDArray[np.float64]:
    """The GNMax noise vector alone: ``num_classes`` draws of N(0, sigma^2).

    The privacy guardian adds this to a secret-shared vote histogram.
    """
    if not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise PateError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return np.asarray(_source(source).normal(sigma, int(num_classes)), dtype=np.float64)


def threshold_noise(sigma_threshold: float, source: NoiseSource | None = None) -> float:
    """The Confident-GNMax threshold noise: one draw of N(0, sigma_1^2),
    added to ``max_j n_j`` before comparing it with the threshold."""
    return float(_source(source).normal(sigma_threshold))


@dataclass(frozen=True)
class ConfidentNoise:
    """Both noises of one Confident-GNMax query."""

    threshold: float                 # added to max_j n_j (sigma_1)
    argmax: NDArray[np.float64]      # added to every n_j before the argmax (sigma_2)


def confident_gnmax_noise(num_classes: int, sigma_threshold: float, sigma_gnmax: float,
                          source: NoiseSource | None = None) -> ConfidentNoise:
    """Draw the threshold noise, then the argmax noise, for one query."""
    src = _source(source)
    return ConfidentNoise(threshold_noise(sigma_threshold, src),
                          gnmax_noise(num_classes, sigma_gnmax, src))


# --------------------------------------------------------------------------
# Mechanisms (plaintext, for simulation)
# --------------------------------------------------------------------------

def gnmax(votes: ArrayLike, sigma: float, source: NoiseSource | None = None) -> int:
    """GNMax: the index of the largest noisy vote count."""
    v = _votes(votes)
    return int(np.argmax(v + gnmax_noise(v.size, sigma, source)))


def confident_gnmax(votes: ArrayLike, threshold: float, sigma_threshold: float,
                    sigma_gnmax: float, source: NoiseSource | None = None) -> int | None:
    """Confident-GNMax: None (abstain) if the noisy top count is below
    ``threshold``, else the GNMax answer with ``sigma_gnmax``."""
    v = _votes(votes)
    noise = confident_gnmax_noise(v.size, sigma_threshold, sigma_gnmax, source)
    if v.max() + noise.threshold < threshold:
        return None
    return int(np.argmax(v + noise.argmax))


# --------------------------------------------------------------------------
# RDP of one query
# --------------------------------------------------------------------------

def gnmax_logq(votes: ArrayLike, sigma: float) -> float:
    """Upper bound on log Pr[GNMax answer != plurality class] (Prop. 7).

    Union bound over the other classes of Pr[N(0, 2 sigma^2) >= n_top - n_j],
    capped at 1 - 1/m (the mechanism can never do worse than uniform).
    """
    v = _votes(votes)
    _check_sigma(sigma, "sigma")
    top = int(np.argmax(v))
    gaps = np.delete(v[top] - v, top)
    logq = float(scipy.special.logsumexp(
        scipy.stats.norm.logsf(gaps, scale=math.sqrt(2.0) * sigma)))
    return min(logq, math.log1p(-1.0 / v.size))


def threshold_log_pr_answered(votes: ArrayLike, threshold: float, sigma_threshold: float) -> float:
    """log Pr[max_j n_j + N(0, sigma_1^2) >= T]."""
    v = _votes(votes)
    _check_sigma(sigma_threshold, "sigma_threshold")
    return float(scipy.stats.norm.logsf(threshold - v.max(), scale=sigma_threshold))


def gnmax_rdp_data_independent(sigma: float, orders: ArrayLike = DEFAULT_ORDERS) -> NDArray[np.float64]:
    """RDP of one GNMax answer at each order: ``a / sigma^2`` (Prop. 8)."""
    _check_sigma(sigma, "sigma")
    return _orders(orders) / (sigma * sigma)


def threshold_rdp_data_independent(sigma_threshold: float,
                                   orders: ArrayLike = DEFAULT_ORDERS) -> NDArray[np.float64]:
    """RDP of one threshold check: ``a / (2 sigma_1^2)`` (sensitivity 1)."""
    _check_sigma(sigma_threshold, "sigma_threshold")
    return _orders(orders) / (2.0 * sigma_threshold * sigma_threshold)


def gnmax_rdp_from_logq(logq: float, sigma: float,
                        orders: ArrayLike = DEFAULT_ORDERS) -> NDArray[np.float64]:
    """Data-dependent RDP of GNMax given ``logq >= log Pr[answer != plurality]``.

    Theorem 6 of Papernot et al. 2018 with the higher orders of Prop. 10,
    ``mu_2 = sigma sqrt(log 1/q)`` and ``mu_1 = mu_2 + 1``, at the orders
    ``a < mu_1`` and only when q is in the range where the theorem holds;
    everywhere else the data-independent bound.  Never above the latter.
    """
    _check_sigma(sigma, "sigma")
    a = _orders(orders)
    if not (logq <= 0.0) or math.isnan(logq):
        raise PateError(f"logq must be a log-probability (<= 0), got {logq!r}")
    if logq == -math.inf:  # the answer is fixed: nothing leaks
        return np.zeros_like(a)
    var = sigma * sigma
    bound = a / var
    mu2 = sigma * math.sqrt(-logq)
    mu1 = mu2 + 1.0
    applies = a < mu1
    if mu2 <= 1.0 or not applies.any():
        return bound
    eps1, eps2 = mu1 / var, mu2 / var  # the mechanism's RDP at mu_1, mu_2
    # Theorem 6 needs q <= e^{(mu2-1) eps2} / (mu1/(mu1-1) * mu2/(mu2-1))^mu2
    # (there the bound increases with q) and e^{eps2} q < 1 (A finite, > 0).
    q_max = (mu2 - 1.0) * eps2 - mu2 * (math.log1p(1.0 / (mu1 - 1.0))
                                        + math.log1p(1.0 / (mu2 - 1.0)))
    if logq > q_max or -logq <= eps2:
        return bound
    log1mq = _log1mexp(logq)
    log_a = log1mq - _log1mexp((logq + eps2) * (1.0 - 1.0 / mu2))   # log A
    log_b = eps1 - logq / (mu1 - 1.0)                                 # log B
    am1 = a[applies] - 1.0
    # RDP <= log((1-q) A^{a-1} + q B^{a-1}) / (a-1), in log space.
    theorem6 = np.logaddexp(log1mq + am1 * log_a, logq + am1 * log_b) / am1
    out = bound.copy()
    out[applies] = np.minimum(bound[applies], np.maximum(theorem6, 0.0))
    return out


def threshold_rdp_from_log_pr(log_pr_answered: float, sigma_threshold: float,
                              orders: ArrayLike = DEFAULT_ORDERS) -> NDArray[np.float64]:
    """Data-dependent RDP of the threshold check from log Pr[answered].

    The check is a Gaussian mechanism of sensitivity 1 (GNMax's analysis with
    sigma_1 * sqrt(2)); its 'unlikely outcome' has probability
    ``min(Pr[answered], 1 - Pr[answered])``.
    """
    if not (log_pr_answered <= 0.0) or math.isnan(log_pr_answered):
        raise PateError(f"log_pr_answered must be <= 0, got {log_pr_answered!r}")
    logq = min(log_pr_answered, _log1mexp(log_pr_answered))
    return gnmax_rdp_from_logq(logq, math.sqrt(2.0) * sigma_threshold, orders)


# --------------------------------------------------------------------------
# RDP -> (epsilon, delta)
# --------------------------------------------------------------------------

def epsilon_per_order(orders: ArrayLike, rdp: ArrayLike, delta: float,
                      conversion: Conversion = "improved") -> NDArray[np.float64]:
    """Epsilon at each order (last axis of ``rdp``), before the minimum."""
    a = _orders(orders)
    r = np.asarray(rdp, dtype=np.float64)
    if r.shape[-1] != a.size:
        raise PateError(f"rdp has {r.shape[-1]} orders, expected {a.size}")
    if not 0.0 < delta < 1.0:
        raise PateError(f"delta must be in (0, 1), got {delta!r}")
    if conversion == "classic":
        return r - math.log(delta) / (a - 1.0)
    if conversion == "improved":
        return r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
    raise PateError(f"conversion must be 'classic' or 'improved', got {conversion!r}")


def epsilon_from_rdp(orders: ArrayLike, rdp: ArrayLike, delta: float,
                     conversion: Conversion = "improved") -> tuple[float, float]:
    """(epsilon, best order) for the RDP curve ``rdp`` over ``orders``."""
    eps = epsilon_per_order(orders, rdp, delta, conversion)
    i = int(np.argmin(eps))
    return max(0.0, float(eps[i])), float(_orders(orders)[i])


def epsilon_curve(orders: ArrayLike, rdp_rows: ArrayLike, delta: float,
                  conversion: Conversion = "improved") -> NDArray[np.float64]:
    """Epsilon for each row of a (k, n_orders) array of RDP curves."""
    return np.maximum(epsilon_per_order(orders, rdp_rows, delta, conversion).min(axis=-1), 0.0)


# --------------------------------------------------------------------------
# The accountant
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class PrivacySpent:
    """An (epsilon, delta) figure with what it rests on."""

    epsilon: float
    delta: float
    order: float
    conversion: Conversion
    data_dependent: bool
    queries: int
    answered: int

    def __str__(self) -> str:
        kind = ("DATA-DEPENDENT (computed from the votes; not a releasable DP "
                "guarantee without smooth-sensitivity analysis)"
                if self.data_dependent else "data-independent")
        return (f"epsilon={self.epsilon:.4g} at delta={self.delta:g} "
                f"({self.conversion} conversion, order {self.order:.4g}; {kind}; "
                f"{self.queries} queries, {self.answered} answered)")


class PateAccountant:
    """Composes the RDP of PATE queries over a fixed grid of orders.

    Costs are data-independent unless a call says ``data_dependent=True``;
    once any data-dependent cost is added, :attr:`data_dependent` is True and
    every figure reported is labelled so.
    """

    def __init__(self, orders: ArrayLike = DEFAULT_ORDERS) -> None:
        self._orders = _orders(orders)
        self._rdp = np.zeros_like(self._orders)
        self._data_dependent = False
        self.queries = 0
        self.answered = 0

    # -- state -------------------------------------------------------------
    @property
    def orders(self) -> NDArray[np.float64]:
        return self._orders.copy()

    @property
    def rdp(self) -> NDArray[np.float64]:
        return self._rdp.copy()

    @property
    def data_dependent(self) -> bool:
        return self._data_dependent

    def copy(self) -> PateAccountant:
        other = PateAccountant(self._orders)
        other._rdp = self._rdp.copy()
        other._data_dependent = self._data_dependent
        other.queries, other.answered = self.queries, self.answered
        return other

    # -- adding costs --------------------------------------------------------
    def add_rdp(self, rdp: ArrayLike, *, data_dependent: bool, answered: bool = True) -> None:
        """Add an RDP curve computed elsewhere (e.g. a cost derived in MPC)."""
        r = np.asarray(rdp, dtype=np.float64)
        if r.shape != self._orders.shape or np.any(r < 0) or np.any(np.isnan(r)):
            raise PateError(f"rdp must be {self._orders.size} non-negative numbers, "
                            f"one per order of this accountant")
        self._rdp += r
        self._data_dependent |= bool(data_dependent)
        self.queries += 1
        self.answered += int(bool(answered))

    def add_gnmax(self, votes: ArrayLike | None, sigma: float, *,
                  data_dependent: bool = False) -> None:
        """Charge one GNMax answer.  ``votes`` may be None when data-independent."""
        if data_dependent:
            if votes is None:
                raise PateError("data_dependent=True needs the vote histogram")
            self.add_rdp(gnmax_rdp_from_logq(gnmax_logq(votes, sigma), sigma, self._orders),
                         data_dependent=True)
        else:
            if votes is not None:
                _votes(votes)
            self.add_rdp(gnmax_rdp_data_independent(sigma, self._orders), data_dependent=False)

    def add_gnmax_logq(self, logq: float, sigma: float) -> None:
        """Charge one GNMax answer from a bound on log q computed elsewhere
        (the hook for a data-dependent cost computed inside MPC)."""
        self.add_rdp(gnmax_rdp_from_logq(logq, sigma, self._orders), data_dependent=True)

    def add_confident_gnmax(self, votes: ArrayLike | None, threshold: float,
                            sigma_threshold: float, sigma_gnmax: float, *,
                            answered: bool | None = None,
                            data_dependent: bool = False) -> None:
        """Charge one Confident-GNMax query.

        ``answered=True/False`` charges the realized cost: the threshold check
        always, the GNMax step only if it answered.  ``answered=None`` (the
        outcome is not known to whoever charges) is charged and counted as
        answered, the worst case, in both data-independent and data-dependent
        accounting: one rule. The expected cost is a planning estimate, never a
        charge: :meth:`expected_confident_gnmax`.
        """
        if data_dependent:
            if votes is None:
                raise PateError("data_dependent=True needs the vote histogram")
            log_pr = threshold_log_pr_answered(votes, threshold, sigma_threshold)
            logq = gnmax_logq(votes, sigma_gnmax)
            self.add_confident_gnmax_logq(log_pr, logq, sigma_threshold, sigma_gnmax,
                                          answered=answered)
            return
        if votes is not None:
            _votes(votes)
        cost = threshold_rdp_data_independent(sigma_threshold, self._orders)
        if answered is None or answered:
            cost = cost + gnmax_rdp_data_independent(sigma_gnmax, self._orders)
        self.add_rdp(cost, data_dependent=False, answered=answered is None or answered)

    def add_confident_gnmax_logq(self, log_pr_answered: float, logq: float,
                                 sigma_threshold: float, sigma_gnmax: float, *,
                                 answered: bool | None = None) -> None:
        """Data-dependent Confident-GNMax cost from log Pr[answered] and log q
        computed elsewhere (e.g. in MPC).  ``answered`` as in
        :meth:`add_confident_gnmax`."""
        cost = threshold_rdp_from_log_pr(log_pr_answered, sigma_threshold, self._orders)
        if answered is None or answered:
            cost = cost + gnmax_rdp_from_logq(logq, sigma_gnmax, self._orders)
        self.add_rdp(cost, data_dependent=True, answered=answered is None or answered)

    def expected_confident_gnmax(self, votes: ArrayLike, threshold: float, sigma_threshold: float,
                                 sigma_gnmax: float) -> np.ndarray:
        """The expected data-dependent RDP of one Confident-GNMax query,
        ``threshold + Pr[answered] * gnmax``: for planning only (what a run may
        cost), not a guarantee, and never charged."""
        log_pr = threshold_log_pr_answered(votes, threshold, sigma_threshold)
        return (threshold_rdp_from_log_pr(log_pr, sigma_threshold, self._orders)
                + math.exp(log_pr) * gnmax_rdp_from_logq(gnmax_logq(votes, sigma_gnmax),
                                                        sigma_gnmax, self._orders))

    # -- reading epsilon ---------------------------------------------------
    def epsilon(self, delta: float, conversion: Conversion = "improved") -> float:
        """Epsilon spent so far at ``delta`` (see :attr:`data_dependent`)."""
        return epsilon_from_rdp(self._orders, self._rdp, delta, conversion)[0]

    def spent(self, delta: float, conversion: Conversion = "improved") -> PrivacySpent:
        """Epsilon spent so far, with its order, conversion and labelling."""
        eps, order = epsilon_from_rdp(self._orders, self._rdp, delta, conversion)
        return PrivacySpent(eps, delta, order, conversion, self._data_dependent,
                            self.queries, self.answered)

    def epsilon_after_gnmax(self, sigma: float, delta: float,
                            conversion: Conversion = "improved") -> float:
        """Epsilon if one more GNMax answer were charged (data-independent)."""
        extra = gnmax_rdp_data_independent(sigma, self._orders)
        return epsilon_from_rdp(self._orders, self._rdp + extra, delta, conversion)[0]

    def epsilon_after_confident_gnmax(self, sigma_threshold: float, sigma_gnmax: float,
                                      delta: float,
                                      conversion: Conversion = "improved") -> float:
        """Worst-case epsilon if one more Confident-GNMax query were charged:
        data-independent, and as if it answered."""
        extra = (threshold_rdp_data_independent(sigma_threshold, self._orders)
                 + gnmax_rdp_data_independent(sigma_gnmax, self._orders))
        return epsilon_from_rdp(self._orders, self._rdp + extra, delta, conversion)[0]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _log1mexp(x: float) -> float:
    """log(1 - e^x) for x <= 0, without cancellation."""
    if x > 0:
        raise PateError(f"log-probability must be <= 0, got {x!r}")
    if x == 0:
        return -math.inf
    return math.log1p(-math.exp(x)) if x < -math.log(2) else math.log(-math.expm1(x))


def _check_sigma(sigma: float, name: str) -> None:
    if not isinstance(sigma, int | float | np.number) or not math.isfinite(sigma) or sigma <= 0:
        raise PateError(f"{name} must be a positive finite number, got {sigma!r}")


def _votes(votes: ArrayLike) -> NDArray[np.float64]:
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise PateError(f"votes must be a 1-D histogram over >= 2 classes, got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise PateError("votes must be finite and non-negative")
    return v


def _orders(orders: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(orders, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 1.0):
        raise PateError("orders must be a non-empty 1-D array of finite numbers > 1")
    return a
