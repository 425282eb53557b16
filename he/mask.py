"""Masks and noise from the OS random source.

Mask: r uniform on [-R, R], R = 2**(LOGIT_BITS + HIDING_BITS). For logits with
|f| <= 2**LOGIT_BITS the statistical distance between f - r and r is at most
|f| / (2R) <= 2**-(HIDING_BITS + 1): HIDING_BITS bits of statistical hiding.
Larger R is limited by the output modulus (params.py) and by float64 decoding:
values near 2**32 keep ~2**-20 absolute precision.
"""

from __future__ import annotations

import numpy as np

from he.params import HIDING_BITS, LOGIT_BITS
from mpc import randomness

MASK_RANGE = float(2 ** (LOGIT_BITS + HIDING_BITS))


def uniform_mask(shape: tuple[int, ...]) -> np.ndarray:
    return randomness.generator().uniform(-MASK_RANGE, MASK_RANGE, size=shape)


def gaussian_complex(n: int, std: float) -> list[complex]:
    """n complex Gaussians whose real part has std `std`; encoded as CKKS slots they
    give i.i.d. Gaussian polynomial coefficients (the canonical embedding is a
    scaled unitary map), i.e. coefficient-domain flooding noise."""
    g = randomness.generator().normal(0.0, std, size=(2, n))
    return (g[0] + 1j * g[1]).tolist()
