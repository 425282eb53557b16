"""Additive n-of-n secret sharing over Z_2^64 (numpy uint64 arithmetic wraps mod 2^64).

Any n-1 shares are uniformly random and independent of the secret; all n sum
to it. Randomness comes from the OS (:mod:`mpc.randomness`), never from numpy's generators.
"""

from __future__ import annotations

import numpy as np

from . import randomness


class SharingError(ValueError):
    """Bad arguments to a sharing or reconstruction."""


def as_ring(array: np.ndarray) -> np.ndarray:
    """View an integer array as uint64 ring elements (int64 is reinterpreted, not converted)."""
    a = np.asarray(array)
    if a.dtype == np.uint64:
        return a
    if a.dtype == np.int64:
        return a.view(np.uint64)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64).view(np.uint64)
    raise SharingError(f"additive shares live in Z_2^64: pass uint64/int64 ring elements, not "
                       f"{a.dtype} (encode floats first with mpc.encoding.encode)")


def share(array: np.ndarray, n: int) -> list[np.ndarray]:
    """Split ring elements into ``n`` uint64 shares that sum to them mod 2^64."""
    if not isinstance(n, int) or n < 2:
        raise SharingError(f"need at least 2 shares, got n={n!r}")
    a = as_ring(array)
    parts = [randomness.ring(a.shape) for _ in range(n - 1)]
    last = a.copy()
    for p in parts:
        last -= p
    return parts + [last]


def reconstruct(parts: list[np.ndarray]) -> np.ndarray:
    """Sum shares mod 2^64."""
    if len(parts) < 1:
        raise SharingError("no shares to reconstruct from")
    shapes = {np.shape(p) for p in parts}
    if len(shapes) != 1:
        raise SharingError(f"shares have different shapes {sorted(shapes)}; they are not "
                           "shares of one secret")
    total = as_ring(parts[0]).copy()
    for p in parts[1:]:
        total += as_ring(p)
    return total
