"""The one source of randomness for secrets and DP noise: the OS (``os.urandom``).

Every key, mask, share, seed and noise draw in Confidant comes through here,
never from numpy's or torch's default generators (which are predictable from
a few outputs, and shared across forked processes). Seeded generators exist
only for reproducible *public* choices (data splits, model initialisation)
and live with the code that makes those choices.
"""

from __future__ import annotations

import os
import secrets

import numpy as np


def token_bytes(n: int) -> bytes:
    """``n`` random bytes (keys, seeds, nonces, tags)."""
    return secrets.token_bytes(n)


def token_urlsafe(n: int) -> str:
    """A random text token of ``n`` bytes (passwords)."""
    return secrets.token_urlsafe(n)


def randbits(k: int) -> int:
    return secrets.randbits(k)


def ring(shape: tuple[int, ...] | int) -> np.ndarray:
    """Uniform uint64 array: elements of Z_2^64 (masks, additive shares)."""
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return np.frombuffer(os.urandom(8 * count), dtype=np.uint64).reshape(shape).copy()


def below(modulus: int, count: int) -> np.ndarray:
    """``count`` integers uniform in [0, modulus), uint64, for 2 <= modulus <= 2^63
    (residues of a uniform polynomial modulo an RNS prime). Rejection sampling on
    bit-length-wide draws, so there is no modulo bias."""
    if not 2 <= modulus <= 2**63:
        raise ValueError(f"modulus must be in [2, 2^63], got {modulus}")
    keep = np.uint64((1 << (modulus - 1).bit_length()) - 1)
    out = np.empty(0, dtype=np.uint64)
    while out.size < count:
        draw = ring(2 * (count - out.size) + 16) & keep  # acceptance > 1/2
        out = np.concatenate([out, draw[draw < np.uint64(modulus)]])
    return out[:count]


def uniform(n: int) -> np.ndarray:
    """``n`` doubles uniform in [0, 1), 53 random bits each."""
    return (ring(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def normal(shape: tuple[int, ...] | int, std: float = 1.0) -> np.ndarray:
    """Gaussian draws (Box-Muller over :func:`uniform`), float64.

    Like Opacus without secure_mode, not hardened against floating-point
    attacks on the Gaussian mechanism (Mironov 2012); SECURITY.md says so.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    m = (n + 1) // 2
    u = uniform(2 * m)
    radius = np.sqrt(-2.0 * np.log1p(-u[:m]))  # 1 - u in (0, 1]: the log is finite
    angle = 2.0 * np.pi * u[m:]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]
    return (z * std).reshape(shape)


def laplace(shape: tuple[int, ...] | int, scale: float) -> np.ndarray:
    """Laplace draws of ``scale`` (inverse CDF over :func:`uniform`), float64: DP noise
    of the sparse vector technique. Like :func:`normal`, not hardened against
    floating-point attacks (Mironov 2012)."""
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    u = uniform(n) - 0.5                       # in [-1/2, 1/2)
    z = -np.sign(u) * np.log1p(-2.0 * np.abs(u))  # |u| = 1/2 only at u = -1/2: -inf, redrawn
    bad = ~np.isfinite(z)
    while bad.any():
        u = uniform(int(bad.sum())) - 0.5
        z[bad] = -np.sign(u) * np.log1p(-2.0 * np.abs(u))
        bad = ~np.isfinite(z)
    return (z * float(scale)).reshape(shape)


def generator() -> np.random.Generator:
    """A fresh numpy Generator seeded with 256 bits from the OS, for bulk draws
    (masks over 10^5 slots, dither) where numpy's distributions are needed.
    Never reuse one across a fork: take a new one per use."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(256)))


def skellam(shape: tuple[int, ...] | int, mu: float) -> np.ndarray:
    """Skellam draws Poisson(mu) - Poisson(mu) (variance 2 mu), int64: the integer DP noise
    each client adds before secure aggregation (privacy/skellam.py). From a fresh
    OS-seeded generator."""
    if not mu >= 0:
        raise ValueError(f"Skellam mu must be >= 0, got {mu}")
    g = generator()
    return g.poisson(mu, shape).astype(np.int64) - g.poisson(mu, shape).astype(np.int64)
