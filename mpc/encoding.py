"""Fixed-point encoding of floats into the ring Z_2^64, as CrypTen encodes them.

A float x becomes trunc(x * 2^f) as a two's-complement 64-bit integer, held in
a numpy uint64 array (the ring element; ``view(np.int64)`` gives CrypTen's
torch.long value). Truncation toward zero is what CrypTen's FixedPointEncoder
does, so shares made here and shares made by CrypTen are interchangeable. Decoding is exact signed division
by 2^f (CrypTen 0.4.1's own decode is off by one for some negative values,
e.g. -92.999 decodes to -93.999; we do not replicate that bug).
"""

from __future__ import annotations

import numpy as np

PRECISION_BITS = 16  # CrypTen's default (cfg.encoder.precision_bits)


class EncodingError(ValueError):
    """A value that cannot be represented in the fixed-point ring."""


def max_abs(precision_bits: int = PRECISION_BITS) -> float:
    """Largest magnitude that encodes without wrapping: 2^(63 - f)."""
    return float(2 ** (63 - precision_bits))


def encode(x: np.ndarray | float, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """Floats -> uint64 ring elements; raises EncodingError instead of wrapping."""
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise EncodingError("cannot encode NaN or infinity into the fixed-point ring")
    limit = max_abs(precision_bits)
    if a.size and np.max(np.abs(a)) >= limit:
        raise EncodingError(f"value {np.max(np.abs(a)):g} is outside the encodable range "
                            f"(-{limit:g}, {limit:g}) at {precision_bits} fractional bits; "
                            "scale the data down or use fewer fractional bits")
    return np.trunc(a * float(2 ** precision_bits)).astype(np.int64).view(np.uint64)


def decode(ring: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """uint64 (or int64) ring elements -> float64, reading them as signed."""
    r = np.asarray(ring)
    if r.dtype not in (np.uint64, np.int64):
        raise EncodingError(f"ring elements must be uint64 or int64, got {r.dtype}")
    return r.view(np.int64).astype(np.float64) / float(2 ** precision_bits)
