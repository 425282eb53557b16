"""Bit packing of unsigned integers: each value in its own number of bits (little-endian
bit order), so a message carries k-bit values in about k/8 bytes each, not 8."""

from __future__ import annotations

import numpy as np


class BitPackError(ValueError):
    """Packed data whose length does not match the widths it should hold."""


def _widths(widths: int | np.ndarray, count: int) -> np.ndarray:
    w = np.broadcast_to(np.asarray(widths, dtype=np.int64), (count,))
    if count and (w.min() < 0 or w.max() > 64):
        raise BitPackError("bit widths must be in 0..64")
    return w


def pack(values: np.ndarray, widths: int | np.ndarray) -> bytes:
    """``values[i]`` in ``widths[i]`` bits (one width for all, or one each); the caller
    guarantees each value fits."""
    v = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    w = _widths(widths, v.size)
    bits = np.unpackbits(v.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return np.packbits(bits[np.arange(64) < w[:, None]], bitorder="little").tobytes()


def unpack(data: bytes, widths: int | np.ndarray, count: int) -> np.ndarray:
    """The inverse of :func:`pack` (uint64); a wrong length is malformed data."""
    w = _widths(widths, count)
    total = int(w.sum())
    if len(data) != (total + 7) // 8:
        raise BitPackError(f"{count} values of {total} bits in all take {(total + 7) // 8} bytes, "
                           f"got {len(data)}")
    bits = np.zeros((count, 64), dtype=np.uint8)
    bits[np.arange(64) < w[:, None]] = np.unpackbits(np.frombuffer(data, np.uint8), count=total,
                                                      bitorder="little")
    return np.packbits(bits, axis=1, bitorder="little").reshape(-1).view("<u8").astype(np.uint64)
