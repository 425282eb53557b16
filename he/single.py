"""Single-query packing: the query layout and the first affine layer on it.

Layout (fixed by the input size and the slot count only, never by a model, so
one query ciphertext serves answering parties with different architectures):
the input v, zero-padded to n_p = 2^k features, is written into the S slots as
R = S / n_p blocks, block c holding v rotated by c * delta with
delta = max(1, n_p / R): slot c * n_p + t holds v[(t + c * delta) mod n_p].

Because the blocks are shifted copies rather than identical ones, a rotation of
the whole vector by k reaches a different input column in each block. The first
affine layer y = W v (m_p x n_p padded) is computed as
    out[s] = sum_{k < T} p_k[s] * x[s + k],  then  y[r] = sum_j out[r + j m_p]
(the second sum by log2(S / m_p) rotate-and-add steps, leaving y repeated with
period m_p, the layout the later layers use). Each (row r, column) pair of W is
assigned to one (slot s = r mod m_p, offset k) pair that reaches that column;
T, the number of plaintext products, only needs about m_p * n_p / S instead of
min(m_p, n_p) with identical copies: 256 instead of 1024 for the 845 x 784
CryptoNets convolution on 4096 slots. The products are grouped baby-step
giant-step (rotations by 1 and by B only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from he.errors import HEError
from he.layers import Affine, pow2


def shift(n_p: int, slots: int) -> int:
    """Rotation between consecutive input blocks."""
    return max(1, n_p // (slots // n_p))


def layout(v: np.ndarray, slots: int) -> np.ndarray:
    """The slot vector a querying party encrypts for input v (flattened)."""
    n_p = pow2(len(v))
    if n_p > slots:
        raise HEError(f"input of {len(v)} features needs {n_p} slots, the key has {slots}")
    padded = np.zeros(n_p)
    padded[: len(v)] = v
    s = np.arange(slots)
    return padded[(s % n_p + (s // n_p) * shift(n_p, slots)) % n_p]


def _columns(n_p: int, slots: int) -> np.ndarray:
    """Input column held by each slot."""
    s = np.arange(slots)
    return (s % n_p + (s // n_p) * shift(n_p, slots)) % n_p


@dataclass(frozen=True)
class FirstLayer:
    """Plaintext products of the first affine layer for one slot count."""
    diagonals: np.ndarray  # [T, slots] float64: p_k
    baby: int              # B
    m_p: int

    @property
    def count(self) -> int:
        return len(self.diagonals)

    def rotation_steps(self, slots: int) -> set[int]:
        steps = set()
        if self.count > 1:
            steps.add(1)
        if self.count > self.baby:
            steps.add(self.baby)
        s = self.m_p
        while s < slots:
            steps.add(s)
            s *= 2
        return steps


def first_layer(step: Affine, slots: int) -> FirstLayer:
    """Assign every weight of `step` to one (slot, offset) pair; cached per slot count."""
    cache = step.__dict__.setdefault("_single_cache", {})
    if slots in cache:
        return cache[slots]
    m, n = step.W.shape
    m_p, n_p = step.padded
    Wp = np.zeros((m_p, n_p))
    Wp[:m, :n] = step.W
    cols = _columns(n_p, slots)
    s = np.arange(slots)
    t = max(1, (m_p * n_p) // slots)
    while True:
        k = np.arange(t)[:, None]
        key = (s % m_p)[None, :] * n_p + cols[(s[None, :] + k) % slots]  # [t, slots]
        uniq, first = np.unique(key.reshape(-1), return_index=True)
        if len(uniq) == m_p * n_p:
            break
        if t >= slots:
            raise HEError("internal: single-query layout does not cover the layer")  # pragma: no cover
        t *= 2
    diag = np.zeros(t * slots)
    diag[first] = Wp[uniq // n_p, uniq % n_p]
    baby = 1 << ((t.bit_length() - 1 + 1) // 2)
    cache[slots] = FirstLayer(diag.reshape(t, slots), baby, m_p)
    return cache[slots]
