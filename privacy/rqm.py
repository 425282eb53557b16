"""The Randomized Quantization Mechanism (Youn, Hu, Ziani, Abernethy 2023; PAPERS.md section 8)
and its Rényi-DP accountant.

A value x in [lo, hi] is released as one of m evenly spaced levels B(0) < ... < B(m-1)
that lie strictly around the range (B(0) < lo, hi < B(m-1)):

1. keep B(0) and B(m-1), and keep every interior level independently with probability q;
2. round x to the nearest kept level below or above it, up with probability
   (x - below) / (above - below), so the output is unbiased: E[output] = x.

Both layers of randomness are what make the output private without added noise: every
level has positive probability for every input, so the privacy loss is bounded.

The accountant here is exact, not a bound: :func:`pmf` is the output distribution of one
input in closed form (a sum over the nearest kept level on either side, O(m^2)), and the
per-coordinate RDP is the Rényi divergence between the two extreme inputs, lo and hi, in
both directions (the worst pair; ``tests/test_rqm.py`` checks that no pair on a grid is
worse, and checks the closed form against a Monte-Carlo estimate from :func:`sample`).
A release of ``coordinates`` values composes additively, and so do rounds: the guarantee
covers any change of a whole clipped vector (one owner's entire update), which includes
any change of one record.

Sampling uses the OS random source (``mpc.randomness``) unless a numpy Generator is
passed explicitly (reproducible tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mpc import randomness

from .pate import DEFAULT_ORDERS, epsilon_from_rdp

__all__ = ["RQM", "RQMError", "calibrate_q", "epsilon", "monte_carlo_divergence", "rdp"]


class RQMError(ValueError):
    """Parameters that give no mechanism or no guarantee."""


@dataclass(frozen=True)
class RQM:
    """Levels ``first + j * step`` (j = 0..m-1), inputs clipped to [lo, hi], keep probability q."""

    first: float
    step: float
    m: int
    lo: float
    hi: float
    q: float

    def __post_init__(self) -> None:
        if self.m < 3:
            raise RQMError(f"RQM needs at least 3 levels, got {self.m}")
        if not 0.0 < self.q <= 1.0:
            raise RQMError(f"keep probability q must be in (0, 1], got {self.q!r}")
        if not (self.first < self.lo < self.hi < self.last):
            raise RQMError(
                f"the input range [{self.lo}, {self.hi}] must lie strictly inside the outer "
                f"levels ({self.first}, {self.last}); otherwise an extreme input has an output "
                "the other can never give and the privacy loss is unbounded: widen the margin "
                "(Hash-Comb's delta must exceed half a leaf width)")

    @classmethod
    def on_leaves(cls, levels: int, lo: float, hi: float, delta: float, q: float) -> RQM:
        """The mechanism whose levels are the leaf centres of a Hash-Comb tree of depth
        ``levels`` over [lo - delta, hi + delta], so its output index is the leaf index."""
        m = 1 << levels
        step = (hi - lo + 2 * delta) / m
        return cls(lo - delta + step / 2, step, m, lo, hi, q)

    @property
    def last(self) -> float:
        return self.first + (self.m - 1) * self.step

    def levels(self) -> NDArray[np.float64]:
        return self.first + self.step * np.arange(self.m)

    # ------------------------------------------------------------------ sampling
    def sample(self, x: NDArray, rng: np.random.Generator | None = None) -> NDArray[np.int64]:
        """Output level index of each value (clipped to [lo, hi] first)."""
        v = np.clip(np.asarray(x, dtype=np.float64), self.lo, self.hi).ravel()
        u = randomness.uniform(3 * v.size) if rng is None else rng.random(3 * v.size)
        u_below, u_above, u_round = u[:v.size], u[v.size:2 * v.size], u[2 * v.size:]
        cell = np.clip(np.floor((v - self.first) / self.step).astype(np.int64), 0, self.m - 2)
        # Levels are dropped independently, so the run of dropped levels next to x is
        # geometric: the nearest kept level below is cell - G, above is cell + 1 + G'.
        below = np.maximum(cell - self._geometric(u_below), 0)
        above = np.minimum(cell + 1 + self._geometric(u_above), self.m - 1)
        b_lo, b_hi = self.first + below * self.step, self.first + above * self.step
        up = u_round < (v - b_lo) / (b_hi - b_lo)
        return np.where(up, above, below).reshape(np.shape(x))

    def _geometric(self, u: NDArray) -> NDArray[np.int64]:
        """Dropped levels before the first kept one: P(G = g) = q (1 - q)^g."""
        if self.q >= 1.0:
            return np.zeros(u.size, dtype=np.int64)
        g = np.floor(np.log1p(-u) / math.log1p(-self.q))
        return np.minimum(g, self.m).astype(np.int64)

    # ------------------------------------------------------------------ distribution
    def pmf(self, x: float) -> NDArray[np.float64]:
        """P(output = level j) for one input, in closed form."""
        v = min(max(float(x), self.lo), self.hi)
        i = min(max(int(math.floor((v - self.first) / self.step)), 0), self.m - 2)
        keep = np.full(self.m, self.q)
        keep[[0, -1]] = 1.0
        l_idx, u_idx = np.arange(i + 1), np.arange(i + 1, self.m)
        # nearest kept below is l: l kept, l+1..i dropped; above is u: u kept, i+1..u-1 dropped
        w_below = keep[l_idx] * (1.0 - self.q) ** (i - l_idx)
        w_above = keep[u_idx] * (1.0 - self.q) ** (u_idx - i - 1)
        b_l, b_u = self.first + l_idx * self.step, self.first + u_idx * self.step
        p_up = (v - b_l[:, None]) / (b_u[None, :] - b_l[:, None])
        joint = w_below[:, None] * w_above[None, :]
        out = np.empty(self.m)
        out[:i + 1] = (joint * (1.0 - p_up)).sum(axis=1)
        out[i + 1:] = (joint * p_up).sum(axis=0)
        return out

    def variance(self, x: float) -> float:
        p, b = self.pmf(x), self.levels()
        return float(p @ (b - x) ** 2)


def divergence(p: NDArray, q: NDArray, orders: NDArray) -> NDArray[np.float64]:
    """Rényi divergence D_alpha(p || q) at each order > 1 (natural log), in log space;
    infinite when p puts mass where q has none."""
    a = np.asarray(orders, dtype=np.float64)
    if np.any((p > 0) & (q <= 0)):
        return np.full(a.size, np.inf)
    s = p > 0
    terms = a[:, None] * np.log(p[s])[None, :] + (1.0 - a[:, None]) * np.log(q[s])[None, :]
    top = terms.max(axis=1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(terms - top).sum(axis=1))) / (a - 1.0)


def rdp(mech: RQM, orders: NDArray = DEFAULT_ORDERS) -> NDArray[np.float64]:
    """Per-coordinate RDP: the larger divergence between the extreme inputs, both ways."""
    p_lo, p_hi = mech.pmf(mech.lo), mech.pmf(mech.hi)
    return np.maximum(divergence(p_lo, p_hi, orders), divergence(p_hi, p_lo, orders))


def epsilon(mech: RQM, coordinates: int, rounds: int, delta: float,
            orders: NDArray = DEFAULT_ORDERS) -> float:
    """(epsilon, delta) of ``rounds`` releases of ``coordinates`` values each."""
    return epsilon_from_rdp(orders, coordinates * rounds * rdp(mech, orders), delta)[0]


def calibrate_q(levels: int, lo: float, hi: float, margin: float, target_epsilon: float,
                coordinates: int, rounds: int, delta: float) -> float:
    """The largest keep probability q (least noise) whose release meets the target epsilon.

    Epsilon grows with q; at q -> 0 only the two outer levels are kept, which is the
    floor that ``margin`` (Hash-Comb's delta) sets. Raises when even that floor is above
    the target, saying which margin would do."""
    def eps(q: float) -> float:
        return epsilon(RQM.on_leaves(levels, lo, hi, margin, q), coordinates, rounds, delta)

    floor = eps(1e-12)
    if floor > target_epsilon:
        raise RQMError(
            f"epsilon {target_epsilon} is out of reach with delta = {margin}: even keeping only "
            f"the two outer levels gives {floor:.4g} over {rounds} round(s) of {coordinates} "
            "coordinates; use a larger delta (a wider margin around [lo, hi]), fewer rounds or a "
            "larger epsilon")
    if eps(1.0) <= target_epsilon:
        return 1.0
    lo_q, hi_q = 1e-12, 1.0
    for _ in range(60):
        mid = math.sqrt(lo_q * hi_q)
        lo_q, hi_q = (mid, hi_q) if eps(mid) <= target_epsilon else (lo_q, mid)
        if hi_q / lo_q < 1.0 + 1e-6:
            break
    return lo_q


def monte_carlo_divergence(mech: RQM, x: float, y: float, orders: NDArray, samples: int,
                           rng: np.random.Generator) -> NDArray[np.float64]:
    """An independent estimate of D_alpha(M(x) || M(y)) from ``samples`` runs of
    :meth:`RQM.sample` for each input (for small m, where every level is seen)."""
    px = np.bincount(mech.sample(np.full(samples, x), rng), minlength=mech.m) / samples
    py = np.bincount(mech.sample(np.full(samples, y), rng), minlength=mech.m) / samples
    if np.any(py == 0) or np.any(px == 0):
        raise RQMError("some level was never sampled: use more samples or fewer levels")
    return divergence(px, py, orders)


def plan(levels: int, lo: float, hi: float, target_epsilon: float, coordinates: int,
         rounds: int, delta: float) -> tuple[float, float, float]:
    """(margin, q, standard deviation) meeting the target with the least noise.

    For margins from a quarter of the range to 10^4 ranges (a geometric grid), the
    largest q that meets the target; the pair whose worst standard deviation over
    {lo, middle, hi} is smallest wins. Raises when no margin on the grid reaches the target."""
    width = hi - lo
    best = None
    for margin in width * np.geomspace(0.25, 1e4, 49):
        try:
            q = calibrate_q(levels, lo, hi, float(margin), target_epsilon, coordinates, rounds, delta)
        except RQMError:
            continue
        mech = RQM.on_leaves(levels, lo, hi, float(margin), q)
        std = math.sqrt(max(mech.variance(x) for x in (lo, (lo + hi) / 2, hi)))
        if best is None or std < best[2]:
            best = (float(margin), q, std)
    if best is None:
        raise RQMError(f"epsilon {target_epsilon} is out of reach for {rounds} round(s) of "
                       f"{coordinates} coordinates even with a margin of 10^4 x the range")
    return best
