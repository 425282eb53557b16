"""The Gaussian mechanism's RDP (Mironov 2017) and its calibration: the central-DP
baseline of FedAvg, where a trusted server adds N(0, (sigma C)^2) to the sum of updates
clipped to L2 norm C (one client's update added or removed moves the sum by at most C)."""

from __future__ import annotations

import math

import numpy as np

from .pate import DEFAULT_ORDERS, epsilon_from_rdp


def rdp(orders: np.ndarray, sigma: float) -> np.ndarray:
    """alpha / (2 sigma^2): sensitivity 1, noise standard deviation sigma."""
    return np.asarray(orders, dtype=np.float64) / (2 * sigma**2)


def epsilon(rounds: int, sigma: float, delta: float) -> float:
    return epsilon_from_rdp(DEFAULT_ORDERS, rounds * rdp(DEFAULT_ORDERS, sigma), delta)[0]


def calibrate(target_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier sigma (to 0.1 %) whose ``rounds`` releases meet the target."""
    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    lo, hi = 1e-3, 1.0
    while epsilon(rounds, hi, delta) > target_epsilon:
        lo, hi = hi, hi * 2
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if epsilon(rounds, mid, delta) > target_epsilon else (lo, mid)
    return hi
