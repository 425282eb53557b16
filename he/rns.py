"""Linear layers as exact modular matrix products on ciphertext RNS limbs (numpy/BLAS).

In batch packing an affine layer is out_j = sum_i c_ji * ct_i with scalar c_ji.
SEAL's CKKS encoding of a scalar c at scale q is the constant round(c q) in every
NTT coefficient of every limb, so multiply_plain by it multiplies each
coefficient by round(c q) mod p_l, and add_inplace adds coefficients mod p_l.
The whole layer is therefore, per limb p_l, the integer matrix product
[out x in] @ [in x (components * N)] mod p_l: a few BLAS calls instead of
out x in SEAL calls, and bit-for-bit the same result (tests/test_he_rns.py).

Exactness: coefficients are centred to |x| <= p/2 and the signed weights are split
into balanced base-2^b digits small enough that every partial sum of a float64
product stays below 2^53 (or 2^63 for the int64 sparse product), so no rounding
ever happens; the digit results are recombined mod p in int64.

Access to the coefficients: TenSEAL's sealapi exposes no bulk buffer for a
Ciphertext (only single coefficients), so `view` maps the SEAL object's
coefficient array (seal::Ciphertext's DynArray) as a numpy array. The layout is
SEAL 4.x's; `view` checks the parms_id, sizes and sample coefficients against
the binding's own accessors on every call and raises LayoutError when anything
differs, in which case the evaluator falls back to plain SEAL calls.
"""

from __future__ import annotations

import ctypes

import numpy as np
import scipy.sparse as sp
from tenseal import sealapi as seal

# Offsets (in uint64 words) inside seal::Ciphertext (SEAL 4.x): parms_id[4], is_ntt_form,
# size, poly_modulus_degree, coeff_modulus_size, scale, correction_factor,
# DynArray{pool (shared_ptr, 2 words), capacity, size, data pointer}.
_PARMS, _SIZE, _N, _L, _DYN_SIZE, _DATA = 0, 5, 6, 7, 13, 14
_HEADER_WORDS = 15
_PYBIND_VALUE_OFFSET = 16  # pybind11 instance: PyObject_HEAD, then the value pointer
_SPARSE_DENSITY = 0.15  # below this, scipy int64 sparse beats dense BLAS here


class LayoutError(RuntimeError):
    """SEAL's in-memory ciphertext layout is not the one `view` expects."""


def view(ct: seal.Ciphertext) -> np.ndarray:
    """The ciphertext's coefficients as a writable uint64 array [size, limbs, N] (no copy).

    Valid while `ct` lives and is not resized; raises LayoutError if the memory
    does not match what the binding reports.
    """
    size, n, limbs = ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size()
    if size == 0 or n == 0 or limbs == 0:
        raise LayoutError("empty ciphertext")
    obj = ctypes.c_void_p.from_address(id(ct) + _PYBIND_VALUE_OFFSET).value
    if not obj:
        raise LayoutError("no SEAL object behind the Python handle")
    head = (ctypes.c_uint64 * _HEADER_WORDS).from_address(obj)
    total = size * n * limbs
    if (list(head[_PARMS:_PARMS + 4]) != list(ct.parms_id()) or head[_SIZE] != size
            or head[_N] != n or head[_L] != limbs or head[_DYN_SIZE] != total or not head[_DATA]):
        raise LayoutError("seal::Ciphertext layout differs from SEAL 4.x's")
    arr = np.ctypeslib.as_array((ctypes.c_uint64 * total).from_address(head[_DATA]))
    arr = arr.reshape(size, limbs, n)
    # data(i) is the first coefficient of polynomial i: cross-check through the binding.
    if any(int(arr[i, 0, 0]) != ct.data(i) for i in range(size)):
        raise LayoutError("coefficient memory does not match the binding's accessor")
    return arr


# seal::Plaintext (SEAL 4.x): parms_id[4], coeff_count, scale, DynArray{pool (2 words),
# capacity, size, data pointer}.
_PT_COUNT, _PT_DYN_SIZE, _PT_DATA = 4, 9, 10


def plain_view(pt: seal.Plaintext) -> np.ndarray:
    """A plaintext's coefficients as a writable uint64 array [coeff_count] (no copy);
    checked like `view`."""
    count = pt.coeff_count()
    obj = ctypes.c_void_p.from_address(id(pt) + _PYBIND_VALUE_OFFSET).value
    if not obj or count == 0:
        raise LayoutError("empty plaintext")
    head = (ctypes.c_uint64 * (_PT_DATA + 1)).from_address(obj)
    if (list(head[_PARMS:_PARMS + 4]) != list(pt.parms_id()) or head[_PT_COUNT] != count
            or head[_PT_DYN_SIZE] != count or not head[_PT_DATA]):
        raise LayoutError("seal::Plaintext layout differs from SEAL 4.x's")
    arr = np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(head[_PT_DATA]))
    if any(int(arr[i]) != pt[i] for i in (0, count // 2, count - 1)):
        raise LayoutError("plaintext memory does not match the binding's accessor")
    return arr


def seal_round(x: np.ndarray) -> np.ndarray:
    """std::round (half away from zero), as SEAL's CKKS scalar encoding uses."""
    return np.trunc(x + np.copysign(0.5, x))


def scalar_encoding(values: np.ndarray, scale: float) -> np.ndarray:
    """Signed integers SEAL's CKKS encoder puts in every coefficient for each scalar."""
    v = seal_round(np.asarray(values, dtype=np.float64) * scale)
    if np.abs(v).max(initial=0.0) >= 2.0**62:
        raise OverflowError("scalar times scale exceeds 2^62")
    return v.astype(np.int64)


def _digits(w: np.ndarray, bits: int) -> list[np.ndarray]:
    """Balanced base-2^bits digits of int64 w: w = sum_k d_k 2^(bits k), |d_k| <= 2^(bits-1)."""
    out = []
    rest = w.copy()
    base = 1 << bits
    while rest.any() or not out:
        d = ((rest + (base >> 1)) % base) - (base >> 1)
        out.append(d)
        rest = (rest - d) // base
    return out


class ModMatrix:
    """A fixed signed integer matrix W [m, k], applied as W @ X mod p to limb arrays."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = np.asarray(w, dtype=np.int64)
        m, k = self.w.shape
        nnz = int(np.count_nonzero(self.w))
        self.sparse = nnz < _SPARSE_DENSITY * m * k
        self._plans: dict[int, tuple[int, list]] = {}
        self._offsets: dict[tuple[int, int], np.ndarray] = {}

    def _plan(self, half: int) -> tuple[int, list]:
        """Digit width and digit matrices so that |partial sums| <= 2^53 (dense float64)
        or < 2^63 (sparse int64) for inputs |x| <= half. Dense digits are stacked
        into one matrix [digits * m, k]: one BLAS call per limb."""
        if half in self._plans:
            return self._plans[half]
        limit = 2.0**62 if self.sparse else 2.0**53
        row_l1 = float(np.abs(self.w).sum(axis=1).max(initial=0))
        if row_l1 * half <= limit:
            bits, mats = 0, [self.w]
        else:
            # largest digit width whose digit rows (|d| <= 2^(b-1)) keep the bound
            nz = int(np.count_nonzero(self.w, axis=1).max())
            bits = int(np.floor(np.log2(limit / (half * nz)))) + 1
            if bits < 2:
                raise OverflowError("layer too wide for exact float64 products")
            mats = _digits(self.w, bits)
        if self.sparse:
            mats = [sp.csr_matrix(d) for d in mats]
        else:
            mats = [np.concatenate(mats).astype(np.float64)]
        self._plans[half] = (bits, mats)
        return bits, mats

    @property
    def chunk(self) -> int:
        """Columns per call: sparse products stay in cache, BLAS likes them wide."""
        return 1024 if self.sparse else 8192

    def apply(self, x: np.ndarray, p: int) -> np.ndarray:
        """W @ x mod p for x uint64 [k, c] with entries in [0, p); returns uint64 [m, c]."""
        half = p // 2
        bits, mats = self._plan(half)
        m = self.w.shape[0]
        # Centre by subtracting p//2 (one pass) and add W @ (p//2) back per row at the end.
        if self.sparse:
            xs = x.view(np.int64) - half
            parts = [np.asarray(d @ xs) for d in mats]
        else:
            xs = np.subtract(x, float(half), dtype=np.float64)
            r = (mats[0] @ xs).astype(np.int64)
            parts = [r[k * m:(k + 1) * m] for k in range(len(r) // m)]
        acc = parts[0] % p
        for k in range(1, len(parts)):
            t = parts[k] % p
            t *= pow(2, bits * k, p)  # < 2^31 * 2^31
            acc += t % p
            acc %= p
        acc += self._offset(half, p)[:, None]
        acc %= p
        return acc.astype(np.uint64)

    def _offset(self, half: int, p: int) -> np.ndarray:
        """(W @ [half, ..., half]) mod p per row, int64."""
        key = (half, p)
        if key not in self._offsets:
            rows = (self.w % p).sum(axis=1) % p  # entries < 2^31, row sums < 2^63
            self._offsets[key] = (rows * (half % p)) % p
        return self._offsets[key]
