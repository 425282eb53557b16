"""DSSGD's private uploads: the sparse vector technique with Laplace noise (Shokri and
Shmatikov, CCS 2015, Algorithm 2), and what a whole run of it costs.

One participant, one round, input epsilon. At most c values go up; every change is
clipped to [-gamma, gamma], so one record moves each by at most Delta = 2 gamma. The
paper splits epsilon into epsilon_1 = 8/9 epsilon (choosing) and epsilon_2 = 2/9
epsilon (the values), with sigma(x) = 2 c Delta / x:

- candidates in random order; threshold noise Lap(sigma(epsilon_1)), drawn afresh
  after each upload; query noise Lap(2 sigma(epsilon_1)) per candidate; a candidate
  goes up when |clip(change)| + query noise >= tau + threshold noise;
- its value is clip(clip(change) + Lap(sigma(epsilon_2))).

Choosing is Dwork and Roth's "Sparse" with c answers: epsilon_1-DP. Each released
value has sensitivity Delta and noise 2 c Delta / epsilon_2, so the c values cost
epsilon_2 / 2 together: epsilon_1 + epsilon_2 / 2 = epsilon per round. (The paper adds
the noise to the unclipped change and clips afterwards, which bounds nothing; here
the change is clipped first.)

That epsilon is per participant and per round. Papers quote it as if it were the
guarantee, sometimes per parameter (epsilon / c); over R rounds a participant's
data costs R epsilon by basic composition, or less through zero-concentrated DP
(an epsilon-DP round is epsilon^2/2-zCDP) when R is large: :func:`run_epsilon`.
All noise comes from the OS (:mod:`mpc.randomness`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpc import randomness

SELECT_SHARE, VALUE_SHARE = 8 / 9, 2 / 9   # the paper's split of epsilon


@dataclass(frozen=True)
class SvtScales:
    """The Laplace scales of one round."""

    threshold: float
    query: float
    value: float


def scales(epsilon: float, count: int, gamma: float) -> SvtScales:
    """Noise scales for ``count`` uploads of changes clipped to [-gamma, gamma] at ``epsilon``."""
    if not (epsilon > 0 and count >= 1 and gamma > 0):
        raise ValueError(f"need epsilon > 0, count >= 1, gamma > 0; got {epsilon}, {count}, {gamma}")
    sensitivity = 2.0 * gamma
    sigma1 = 2.0 * count * sensitivity / (SELECT_SHARE * epsilon)
    return SvtScales(threshold=sigma1, query=2.0 * sigma1,
                     value=2.0 * count * sensitivity / (VALUE_SHARE * epsilon))


def svt_upload(change: np.ndarray, count: int, tau: float, gamma: float,
               epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices, noisy clipped values) of at most ``count`` changes, chosen and perturbed
    with ``epsilon``-DP for this round."""
    s = scales(epsilon, count, gamma)
    clipped = np.clip(np.asarray(change, dtype=np.float64), -gamma, gamma)
    order = randomness.generator().permutation(clipped.size)
    # Draw the query noise for every candidate up front (it is independent of the data);
    # thresholds are drawn as they are used.
    query = randomness.laplace(clipped.size, s.query)
    chosen: list[int] = []
    threshold = tau + float(randomness.laplace(1, s.threshold)[0])
    for i in order:
        if abs(clipped[i]) + query[i] >= threshold:
            chosen.append(int(i))
            if len(chosen) == count:
                break
            threshold = tau + float(randomness.laplace(1, s.threshold)[0])
    index = np.sort(np.asarray(chosen, dtype=np.int64))
    values = np.clip(clipped[index] + randomness.laplace(index.size, s.value), -gamma, gamma)
    return index, values


def zcdp_epsilon(epsilon: float, rounds: int, delta: float) -> float:
    """(epsilon, delta) of ``rounds`` epsilon-DP rounds through zCDP (Bun and Steinke 2016):
    rho = rounds * epsilon^2 / 2, epsilon' = rho + 2 sqrt(rho ln(1/delta))."""
    rho = rounds * epsilon ** 2 / 2
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


def run_epsilon(epsilon: float, rounds: int, delta: float) -> dict[str, float]:
    """What ``rounds`` private uploads of one participant cost, three ways: the paper's
    per-round figure, basic composition (pure), and the zCDP bound at ``delta``."""
    return {"per_round": epsilon, "basic": rounds * epsilon,
            "zcdp": zcdp_epsilon(epsilon, rounds, delta) if rounds else 0.0,
            "delta": delta}


def pure_dp_rdp(epsilon: float, orders: np.ndarray) -> np.ndarray:
    """The RDP curve of an epsilon-DP mechanism: min(epsilon, alpha epsilon^2 / 2) at each order."""
    return np.minimum(epsilon, np.asarray(orders, dtype=np.float64) * epsilon ** 2 / 2)
