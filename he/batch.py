"""Batch-packed affine layers as modular matrix products (see he/rns.py).

One affine layer W x + b on feature-major ciphertexts becomes, per RNS limb, an
exact integer matrix product on the ciphertexts' NTT coefficients, written into
fresh SEAL ciphertexts that SEAL then rescales.

Deferred relinearization: an activation followed by an affine layer hands over
3-component ciphertexts (ct * (ct + beta), neither relinearized nor rescaled).
Relinearization and rescaling are linear, so they commute with the affine map:
the layer is applied to all three components and only its m outputs are
relinearized and rescaled twice (activation prime, then the layer's prime),
instead of relinearizing and rescaling every one of its n inputs. Weights are
then encoded at the second-to-last prime, the one the layer's own rescale
drops, so every scale comes out exactly as on the plain SEAL path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from tenseal import sealapi as seal

from he import rns
from he.layers import Affine

if TYPE_CHECKING:
    from he.evaluate import _Ops

_WORKERS = max(1, min(4, os.cpu_count() or 1))
_available: bool | None = None


def available(ct: seal.Ciphertext) -> bool:
    """Whether the coefficient view works with this SEAL build (checked once)."""
    global _available
    if _available is None:
        try:
            rns.view(ct)
            _available = True
        except rns.LayoutError:
            _available = False
    return _available


def _matrix(step: Affine, q: int) -> tuple[rns.ModMatrix, np.ndarray]:
    """ModMatrix of the weights encoded at scale q (cached on the step per prime)."""
    cache = step.__dict__.setdefault("_rns_cache", {})
    if q not in cache:
        w = step.W
        # Weights the SEAL path skips (|w| q < 1, see _affine_batch) are zero here too.
        wq = np.where(np.abs(w) * q >= 1.0, rns.scalar_encoding(w, float(q)), 0)
        cache[q] = (rns.ModMatrix(wq), ~wq.any(axis=1))
    return cache[q]


def affine(o: _Ops, cts: list[seal.Ciphertext], step: Affine) -> list[seal.Ciphertext]:
    """W x + b on batch-packed ciphertexts of size 2 (fresh) or 3 (deferred activation)."""
    size = cts[0].size()
    primes = [m.value() for m in o.data(cts[0]).parms().coeff_modulus()]
    q = primes[-2] if size == 3 else primes[-1]  # the prime this layer's rescale drops
    mm, zero_rows = _matrix(step, q)
    views = [rns.view(c) for c in cts]
    m = step.W.shape[0]
    outs, out_views = [], []
    for _ in range(m):
        ct = seal.Ciphertext()
        o.ev.negate(cts[0], ct)  # right parms, size and NTT form; data overwritten below
        ct.scale = cts[0].scale * q
        outs.append(ct)
        out_views.append(rns.view(ct))
    n, ch = views[0].shape[2], mm.chunk

    def block(task: tuple[int, int, int]) -> None:
        comp, limb, c0 = task
        x = np.stack([v[comp, limb, c0:c0 + ch] for v in views])
        y = mm.apply(x, primes[limb])
        for j, ov in enumerate(out_views):
            ov[comp, limb, c0:c0 + ch] = y[j]

    tasks = [(c, li, c0) for c in range(size) for li in range(len(primes)) for c0 in range(0, n, ch)]
    # scipy's sparse product is single-threaded; BLAS already uses every core
    run_all(block, tasks, threads=mm.sparse)

    def finish(j: int) -> seal.Ciphertext:
        ct = outs[j]
        if zero_rows[j]:  # all weights zero: a fresh encryption of the bias at the output level
            return _encrypt_bias(o, cts[0], step.b[j], size)
        if size == 3:
            o.ev.relinearize_inplace(ct, o.c.relin_keys)
            o.ev.rescale_to_next_inplace(ct)
        o.ev.rescale_to_next_inplace(ct)
        add_scalar(o, ct, float(step.b[j]))
        return ct

    return run_all(finish, range(m))


def add_scalar(o: _Ops, ct: seal.Ciphertext, value: float) -> None:
    """add_plain of SEAL's CKKS encoding of a scalar at the ciphertext's scale, in numpy:
    the encoding is round(value * scale) mod p_l in every NTT coefficient of limb l."""
    c = int(rns.scalar_encoding(np.array([value]), ct.scale)[0])
    primes = [m.value() for m in o.data(ct).parms().coeff_modulus()]
    v = rns.view(ct)
    for limb, p in enumerate(primes):
        v[0, limb] += np.uint64(c % p)
        v[0, limb] %= np.uint64(p)


def run_all(fn, items, threads: bool = True) -> list:
    """fn over items, on every core when `threads` (SEAL and scipy release the GIL)."""
    items = list(items)
    if not threads or len(items) < 2:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=_WORKERS) as ex:
        return list(ex.map(fn, items))


def _encrypt_bias(o: _Ops, like: seal.Ciphertext, b: float, size: int) -> seal.Ciphertext:
    ref = seal.Ciphertext()
    o.ev.mod_switch_to_next(like, ref)
    scale = like.scale
    if size == 3:  # the output scale of a deferred layer is the activation's, rescaled once
        scale = like.scale / float(o.data(like).parms().coeff_modulus()[-1].value())
        o.ev.mod_switch_to_next_inplace(ref)
    out = seal.Ciphertext()
    o.c.encryptor.encrypt(o.encode(float(b), ref, scale), out)
    return out
