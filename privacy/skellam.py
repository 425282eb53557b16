"""The distributed Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS 2021): DP for a sum
that nobody sees in the clear. Each client scales its L2-clipped update, rounds it to
integers and adds Skellam noise Sk(mu_i) = Poisson(mu_i) - Poisson(mu_i) before secure
aggregation; Skellam is closed under sums, so the aggregate carries Sk(sum of mu_i).

Accounting (their Theorem 3.5): adding Sk(mu) per coordinate to an integer vector whose
neighbouring values differ by L1 norm D1 and L2 norm D2 is (alpha, eps(alpha))-RDP with

    eps(alpha) = alpha D2^2 / (4 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu)).

The neighbouring relation here is one client's whole update (added or removed), so D2 is
the bound on a client's rounded, scaled update. Rounds compose by adding RDP; the
(epsilon, delta) conversion is privacy.pate's. When up to a tolerated number of clients
drop, the noise that reaches the sum must still be mu: each client adds
mu / (clients that must survive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .pate import DEFAULT_ORDERS, epsilon_from_rdp


class SkellamError(ValueError):
    """Parameters for which no guarantee or no safe encoding exists."""


def rdp(orders: np.ndarray, l1: float, l2: float, mu: float) -> np.ndarray:
    """RDP of one Skellam release at each order (Theorem 3.5 of Agarwal et al. 2021)."""
    if mu <= 0:
        raise SkellamError(f"Skellam mu must be > 0, got {mu}")
    a = np.asarray(orders, dtype=np.float64)
    return a * l2**2 / (4 * mu) + np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (16 * mu**2),
                                             3 * l1 / (4 * mu))


def epsilon(rounds: int, l1: float, l2: float, mu: float, delta: float) -> float:
    """The (epsilon, delta) of ``rounds`` Skellam releases of total parameter ``mu``."""
    return epsilon_from_rdp(DEFAULT_ORDERS, rounds * rdp(DEFAULT_ORDERS, l1, l2, mu), delta)[0]


def epsilon_of(mus: list[float], l1: float, l2: float, delta: float) -> float:
    """The (epsilon, delta) of releases with the Skellam parameters ``mus``, one per round."""
    total = sum((rdp(DEFAULT_ORDERS, l1, l2, mu) for mu in mus), np.zeros_like(DEFAULT_ORDERS))
    return epsilon_from_rdp(DEFAULT_ORDERS, total, delta)[0]


def calibrate(target_epsilon: float, rounds: int, l1: float, l2: float, delta: float) -> float:
    """The smallest total mu (to 0.1 %) whose ``rounds`` releases meet the target."""
    if not target_epsilon > 0:
        raise SkellamError(f"target epsilon must be > 0, got {target_epsilon}")
    lo, hi = 1e-6, 1.0
    while epsilon(rounds, l1, l2, hi, delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e30:
            raise SkellamError("no Skellam parameter meets that target")
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if epsilon(rounds, l1, l2, mid, delta) > target_epsilon else (lo, mid)
    return hi


@dataclass(frozen=True)
class SkellamEncoding:
    """How a client turns its update into the integers it masks.

    ``clip``: L2 clipping norm C. ``scale``: integer units per unit of update, so a
    clipped update becomes at most scale * C + sqrt(d) after stochastic rounding (each
    coordinate moves by less than 1). ``mu``: the Skellam parameter of the sum;
    ``min_survivors``: each client adds mu / min_survivors.
    """

    clip: float
    scale: float
    dim: int
    mu: float
    min_survivors: int

    @property
    def l2(self) -> float:
        return self.scale * self.clip + math.sqrt(self.dim)

    @property
    def l1(self) -> float:
        return min(math.sqrt(self.dim) * self.l2, self.l2**2)   # integers: |x| <= x^2

    def encode(self, update: np.ndarray, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
        """Clip to L2 norm C, scale, round stochastically (unbiased), add ``noise``; int64."""
        u = np.asarray(update, dtype=np.float64)
        norm = float(np.linalg.norm(u))
        if norm > self.clip:
            u = u * (self.clip / norm)
        x = u * self.scale
        low = np.floor(x)
        return (low + (rng.random(x.shape) < (x - low))).astype(np.int64) + noise

    def noise_per_client(self) -> float:
        return self.mu / self.min_survivors

    def modulus_bits(self, clients: int, tail_sigmas: float = 20.0) -> int:
        """Bits k so that the signed sum of ``clients`` inputs plus the noise fits in
        (-2^(k-1), 2^(k-1)) except with chance below e^-(tail_sigmas^2/2) per coordinate."""
        noise_sd = math.sqrt(2 * self.noise_per_client() * clients)
        largest = clients * self.l2 + tail_sigmas * noise_sd
        k = math.ceil(math.log2(largest + 1)) + 1
        if k > 62:
            raise SkellamError(f"a {k}-bit modulus would be needed (scale {self.scale:g}, mu "
                               f"{self.mu:.4g}); use a smaller scale")
        return k
