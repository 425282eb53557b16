"""Additive shares of the decoded logits, from shares of a CKKS plaintext polynomial.

The answering party (AP) adds a polynomial u, uniform modulo the output modulus
Q0, to its result (he/mask.py). The querying party (QP) decrypts a = P + u mod Q0,
where P = Delta * encode(f(x)) + noise: a is uniform whatever P is, so the QP
learns nothing from any slot, real or imaginary, used or not. As integers,
a + (-u) = P exactly unless P + u wraps past Q0, which happens with probability
|P_i| / Q0 per coefficient (a wrong vote of that AP in that batch, never a leak).

CKKS decoding is linear over the integers, so each party decodes its own integer
share and the two results add up to the logits. The 2PC (CrypTen) needs them as
fixed-point elements of Z_2^64, so each party computes

    share_j = round(2^f * sum_i a_i cos(pi * (i * 3^j mod 2N) / N) / Delta)  mod 2^64,

the real part of slot j (SEAL 4 slot order: root zeta^(3^j), zeta = e^(i pi / N)).
Shares are ~Q0 * sqrt(N) / Delta large, far beyond float64's 53 bits, so the sum
is computed exactly: the cosines as fixed-point integers with F fractional bits
(error <= N * Q0 / 2^(F+1) <= 1/8 unit), both factors split into 16-bit limbs
whose products sum exactly in float64 matrix products (< 2^47 for N <= 2^15),
and the limb products combined modulo 2^(64+F) with Python integers.
"""

from __future__ import annotations

from functools import lru_cache

import mpmath
import numpy as np
from tenseal import sealapi as seal

from he import rns
from mpc.encoding import PRECISION_BITS

_LIMB = 16
_SLOT_CHUNK_ELEMENTS = 1 << 23  # cosine-limb matrix per chunk of slots: 64 MB of float64


def primes(ctx: seal.SEALContext, parms_id) -> list[int]:
    return [m.value() for m in ctx.get_context_data(parms_id).parms().coeff_modulus()]


def to_integers(residues: np.ndarray, moduli: list[int]) -> np.ndarray:
    """CRT: residues uint64 [limbs, ..., N] -> Python integers in [0, Q) (object array)."""
    q = 1
    for p in moduli:
        q *= p
    total = np.zeros(residues.shape[1:], dtype=object)
    for r, p in zip(residues, moduli, strict=True):
        lift = (q // p) * pow(q // p, -1, p)
        total = total + r.astype(object) * lift
    return total % q


def slot_shares(coeffs: np.ndarray, q: int, scale: float, slots: np.ndarray,
                precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """Fixed-point Z_2^64 values of the real parts of `slots` of each polynomial.

    coeffs: integers in [0, q) (object array [polys, N]). Returns uint64 [polys, len(slots)].
    The map is linear modulo 2^64, so shares of the coefficients give shares of the slots.
    """
    polys, n = coeffs.shape
    frac = n.bit_length() + q.bit_length() + 2
    width = 64 + frac
    a_limbs = _limbs(coeffs, q.bit_length()).reshape(-1, n)          # [La * polys, N]
    table = _cosine_limbs(n, float(scale), precision_bits, frac)      # [Lk, 2N]
    g = np.array([pow(3, int(j), 2 * n) for j in slots], dtype=np.int64)
    i = np.arange(n, dtype=np.int64)
    chunk = max(1, _SLOT_CHUNK_ELEMENTS // (n * len(table)))
    out = np.empty((polys, len(slots)), dtype=np.uint64)
    la = len(a_limbs) // polys
    for start in range(0, len(slots), chunk):
        idx = (i[:, None] * g[None, start:start + chunk]) % (2 * n)   # [N, J]
        acc = np.zeros((polys, idx.shape[1]), dtype=object)
        for qi, limb in enumerate(table):
            prod = (a_limbs @ limb[idx]).astype(np.int64).reshape(la, polys, -1)
            for pi in range(la):
                shift = _LIMB * (pi + qi)
                if shift < width:
                    acc = acc + (prod[pi].astype(object) << shift)
        rounded = ((acc % (1 << width)) + (1 << (frac - 1))) >> frac
        out[:, start:start + chunk] = (rounded % (1 << 64)).astype(np.uint64)
    return out


def _limbs(values: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integers -> float64 16-bit limbs [limbs, *shape]."""
    count = (bits + _LIMB - 1) // _LIMB
    mask = (1 << _LIMB) - 1
    return np.stack([((values >> (_LIMB * k)) & mask).astype(np.float64) for k in range(count)])


@lru_cache(maxsize=8)
def _cosine_limbs(n: int, scale: float, precision_bits: int, frac: int) -> np.ndarray:
    """round(cos(pi k / N) * 2^(f + F) / Delta) mod 2^(64 + F) for k < 2N, as 16-bit limbs."""
    width = 64 + frac
    num, den = scale.as_integer_ratio()  # Delta exactly
    with mpmath.workprec(width + 64):
        factor = mpmath.mpf(2) ** (precision_bits + frac) * den / num
        quarter = [int(mpmath.nint(mpmath.cos(mpmath.pi * k / n) * factor)) for k in range(n // 2 + 1)]
    values = np.empty(2 * n, dtype=object)
    for k in range(2 * n):  # cos(pi k / N) from the first quarter by symmetry
        m = k % (2 * n)
        m = 2 * n - m if m > n else m
        values[k] = quarter[m] if m <= n // 2 else -quarter[n - m]
    return _limbs(values % (1 << width), width)


def open_shares(*shares: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """Sum ring shares and decode the fixed-point values (float64); for tests and owners
    of both shares."""
    total = np.zeros_like(np.asarray(shares[0], dtype=np.uint64))
    for s in shares:
        total = total + np.asarray(s, dtype=np.uint64)
    return total.view(np.int64) / float(2**precision_bits)


def plaintext_residues(ctx, pt: seal.Plaintext) -> np.ndarray:
    """A CKKS plaintext (NTT form) as coefficient residues uint64 [limbs, N]: SEAL's inverse
    NTT, applied through a ciphertext whose first component holds the plaintext (its
    second component, unused, stays nonzero: SEAL refuses transparent ciphertexts)."""
    holder = seal.Ciphertext()
    ctx.encryptor.encrypt_zero(pt.parms_id(), holder)
    data = rns.view(holder)
    data[0] = rns.plain_view(pt).reshape(data.shape[1:])
    ctx.evaluator.transform_from_ntt_inplace(holder)
    return rns.view(holder)[0].copy()
