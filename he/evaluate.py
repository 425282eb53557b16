"""The answering party's evaluation of a plan on ciphertexts (public context only).

Scale bookkeeping: a plaintext multiplier is encoded at scale q_l, the prime the
next rescale drops, so affine maps keep the ciphertext scale exactly; a
degree-2 activation maps scale S to S^2 / q_l. All ciphertexts of one layer
share one scale, so SEAL's exact-scale checks on addition always pass.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING

import numpy as np
from tenseal import sealapi as seal

from he import batch, single
from he import mask as M
from he.cipher import EncryptedBatch, EncryptedOutput
from he.errors import ContextMismatchError, DepthError, HEError, ShapeError
from he.keys import PublicContext
from he.params import OUTPUT_PRIMES
from he.share import primes, slot_shares, to_integers

if TYPE_CHECKING:
    from he.plan import Plan
from he.layers import Activation, Affine


class _Ops:
    """Thin helpers over one SEAL context."""

    def __init__(self, ctx: PublicContext) -> None:
        self.c = ctx
        self.ev = ctx.evaluator
        self.ce = ctx.encoder
        self.slots = ctx.params.slots

    def data(self, ct: seal.Ciphertext):
        return self.c.seal.get_context_data(ct.parms_id())

    def last_prime(self, ct: seal.Ciphertext) -> float:
        return float(self.data(ct).parms().coeff_modulus()[-1].value())

    def levels_left(self, ct: seal.Ciphertext) -> int:
        # SEAL's chain goes down to a single prime; ours stops at the output primes.
        return self.data(ct).chain_index() - (OUTPUT_PRIMES - 1)

    def encode(self, value, ct: seal.Ciphertext, scale: float) -> seal.Plaintext:
        pt = seal.Plaintext()
        if isinstance(value, np.ndarray):
            value = value.tolist()
        self.ce.encode(value, ct.parms_id(), scale, pt)
        return pt

    def mul_plain(self, ct: seal.Ciphertext, pt: seal.Plaintext) -> seal.Ciphertext:
        out = seal.Ciphertext()
        self.ev.multiply_plain(ct, pt, out)
        return out

    def rotate(self, ct: seal.Ciphertext, step: int) -> seal.Ciphertext:
        out = seal.Ciphertext()
        self.ev.rotate_vector(ct, step, self.c.galois_keys, out)
        return out

    def copy_at(self, ct: seal.Ciphertext, levels: int) -> seal.Ciphertext:
        data = self.c.seal.first_context_data()
        while data.chain_index() > levels + OUTPUT_PRIMES - 1:
            data = data.next_context_data()
        out = seal.Ciphertext()
        self.ev.mod_switch_to(ct, data.parms_id(), out)
        return out

    def drop_to(self, ct: seal.Ciphertext, levels: int) -> None:
        while self.levels_left(ct) > levels:
            self.ev.mod_switch_to_next_inplace(ct)

    def activation_raw(self, ct: seal.Ciphertext, beta: float) -> seal.Ciphertext:
        """ct * (ct + beta) as a 3-component ciphertext: no relinearization, no rescale."""
        out = seal.Ciphertext()
        if beta == 0.0:
            self.ev.square(ct, out)
        else:
            shifted = seal.Ciphertext()
            self.ev.add_plain(ct, self.encode(beta, ct, ct.scale), shifted)
            self.ev.multiply(ct, shifted, out)
        return out

    def activation(self, ct: seal.Ciphertext, beta: float) -> seal.Ciphertext:
        out = self.activation_raw(ct, beta)
        self.ev.relinearize_inplace(out, self.c.relin_keys)
        self.ev.rescale_to_next_inplace(out)
        return out


def _affine_batch(o: _Ops, cts: list[seal.Ciphertext], step: Affine) -> list[seal.Ciphertext]:
    q = o.last_prime(cts[0])
    scale = cts[0].scale
    out = []
    for j in range(step.W.shape[0]):
        acc = None
        # A weight that encodes to 0 at scale q (e.g. shrunk by weight decay on a dead
        # input) would make SEAL's result "transparent": skip it, its term is < 2^-40.
        for i in np.flatnonzero(np.abs(step.W[j]) * q >= 1.0):
            t = o.mul_plain(cts[i], o.encode(float(step.W[j, i]), cts[i], q))
            if acc is None:
                acc = t
            else:
                o.ev.add_inplace(acc, t)
        if acc is None:  # all-zero row: a fresh encryption of the bias at the right level
            nxt = seal.Ciphertext()
            o.ev.mod_switch_to_next(cts[0], nxt)
            acc = seal.Ciphertext()
            o.c.encryptor.encrypt(o.encode(float(step.b[j]), nxt, scale * q / q), acc)
        else:
            o.ev.rescale_to_next_inplace(acc)
            o.ev.add_plain_inplace(acc, o.encode(float(step.b[j]), acc, acc.scale))
        out.append(acc)
    return out


# Encoded diagonals are cached per (layer, CKKS parameters): they depend on the
# weights and the primes only, not on any key, so every query after the first (from
# any querying party with the same preset) skips the encoding. Budget in bytes.
PLAINTEXT_CACHE_BYTES = 1 << 30
_cache_used = 0


def _diagonal_plaintexts(o: _Ops, v: seal.Ciphertext, step: Affine, kind: str,
                         diagonals, count: int, B: int) -> list[list[seal.Plaintext | None]]:
    """Plaintexts rot(d_{gB+b}, -gB) at scale q for the BSGS sum, grouped by g (None: zero)."""
    global _cache_used
    q = o.last_prime(v)
    key = (kind, o.slots, tuple(v.parms_id()))
    cache = step.__dict__.setdefault("_pt_cache", {})
    if key in cache:
        return cache[key]

    def group(g: int) -> list[seal.Plaintext | None]:
        out = []
        for b in range(min(B, count - g * B)):
            d = diagonals(g * B + b)
            # A diagonal that encodes to zero would make SEAL's product transparent.
            out.append(o.encode(np.roll(d, g * B), v, q) if (np.abs(d) * q >= 1.0).any() else None)
        return out

    groups = batch.run_all(group, range((count + B - 1) // B))
    size = sum(pt is not None for g in groups for pt in g) * v.coeff_modulus_size() * 8 * o.slots * 2
    if _cache_used + size <= PLAINTEXT_CACHE_BYTES:
        cache[key] = groups
        _cache_used += size
        weakref.finalize(step, _release, size)  # the budget frees up with the plan
    return groups


def _release(size: int) -> None:
    global _cache_used
    _cache_used -= size


def _bsgs(o: _Ops, v: seal.Ciphertext, groups: list[list[seal.Plaintext | None]],
          B: int, source: str) -> seal.Ciphertext:
    """sum_g rot(sum_b pt_{g,b} * rot(v, b), gB), the inner sums on every core."""
    baby = [v]
    for _ in range(1, max(len(g) for g in groups)):
        baby.append(o.rotate(baby[-1], 1))

    def inner(pts: list[seal.Plaintext | None]) -> seal.Ciphertext | None:
        acc = None
        for b, pt in enumerate(pts):
            if pt is None:
                continue
            t = o.mul_plain(baby[b], pt)
            if acc is None:
                acc = t
            else:
                o.ev.add_inplace(acc, t)
        return acc

    inners = batch.run_all(inner, groups)
    acc = None
    for part in reversed(inners):  # Horner: rotations by B only
        if acc is not None:
            acc = o.rotate(acc, B)
            if part is not None:
                o.ev.add_inplace(acc, part)
        else:
            acc = part
    if acc is None:
        raise HEError(f"affine layer {source} has an all-zero weight matrix; remove it")
    return acc


def _affine_single(o: _Ops, v: seal.Ciphertext, step: Affine) -> seal.Ciphertext:
    """W v + b for v repeated with period n_p over all slots; result repeats with period m_p.

    Extended diagonals d_k[i] = W[i mod m_p, (i + k) mod n_p] for k < min(m_p, n_p), summed
    baby-step giant-step: sum_g rot(sum_b rot(d_{gB+b}, -gB) * rot(v, b), gB); when
    n_p > m_p the n_p/m_p partial blocks are then added by log2(n_p/m_p) rotations.
    """
    m, n = step.W.shape
    m_p, n_p = step.padded
    K, B = min(m_p, n_p), step.baby
    Wp = np.zeros((m_p, n_p))
    Wp[:m, :n] = step.W
    i = np.arange(o.slots)
    groups = _diagonal_plaintexts(o, v, step, "replicated",
                                  lambda k: Wp[i % m_p, (i + k) % n_p], K, B)
    acc = _bsgs(o, v, groups, B, step.source)
    s = m_p
    while s < n_p:
        o.ev.add_inplace(acc, o.rotate(acc, s))
        s *= 2
    o.ev.rescale_to_next_inplace(acc)
    bias = np.zeros(m_p)
    bias[:m] = step.b
    o.ev.add_plain_inplace(acc, o.encode(np.tile(bias, o.slots // m_p), acc, acc.scale))
    return acc


def _affine_single_first(o: _Ops, v: seal.Ciphertext, step: Affine) -> seal.Ciphertext:
    """The first affine layer on the shifted-blocks query layout (he/single.py):
    sum_g rot(sum_b rot(p_{gB+b}, -gB) * rot(v, b), gB), then rotate-and-add by
    m_p, 2 m_p, ... so the result repeats with period m_p."""
    fl = single.first_layer(step, o.slots)
    groups = _diagonal_plaintexts(o, v, step, "first", lambda k: fl.diagonals[k], fl.count, fl.baby)
    acc = _bsgs(o, v, groups, fl.baby, step.source)
    s = fl.m_p
    while s < o.slots:
        o.ev.add_inplace(acc, o.rotate(acc, s))
        s *= 2
    o.ev.rescale_to_next_inplace(acc)
    bias = np.zeros(fl.m_p)
    bias[: len(step.b)] = step.b
    o.ev.add_plain_inplace(acc, o.encode(np.tile(bias, o.slots // fl.m_p), acc, acc.scale))
    return acc


def evaluate(plan: Plan, enc: EncryptedBatch, *, mask: bool = True,
             context: PublicContext | None = None) -> tuple[EncryptedOutput, np.ndarray | None]:
    if not isinstance(enc, EncryptedBatch):
        raise HEError(f"evaluate takes an he.EncryptedBatch, got {type(enc).__name__}")
    ctx = enc.context
    if context is not None and context.key_id != enc.key_id:
        raise ContextMismatchError("the encrypted batch was made under another key than the given "
                                   "public context; use the context sent with this batch")
    if enc.shape != plan.input_shape:
        raise ShapeError(f"the plan expects inputs of shape {plan.input_shape}, the encrypted batch "
                         f"holds shape {enc.shape}")
    plan.check_context(ctx)
    o = _Ops(ctx)
    if any(isinstance(s, Activation) for s in plan.steps):
        ctx.require_relin()
    if enc.packing == "single":
        ctx.require_rotations(plan.rotation_steps_for(o.slots))
        if plan.single_slots > o.slots:
            raise ShapeError(f"single-query packing of this plan needs {plan.single_slots} slots, the "
                             f"key has {o.slots}; send the query batch-packed")

    if o.levels_left(enc.ciphertexts[0]) < plan.depth:
        raise DepthError(f"the ciphertext has {o.levels_left(enc.ciphertexts[0])} levels left, the "
                         f"plan needs {plan.depth}; encrypt fresh queries under keys of that depth")
    # Start exactly `depth` levels above the output modulus: fewer limbs, faster ops.
    cts = [o.copy_at(ct, plan.depth) for ct in enc.ciphertexts]

    fast = enc.packing == "batch" and batch.available(cts[0])
    for i, step in enumerate(plan.steps):
        if enc.packing == "batch":
            if isinstance(step, Affine):
                cts = batch.affine(o, cts, step) if fast else _affine_batch(o, cts, step)
            elif fast and i + 1 < len(plan.steps) and isinstance(plan.steps[i + 1], Affine):
                # deferred relinearization: the next layer takes 3-component ciphertexts
                cts = batch.run_all(lambda c, b=step.beta: o.activation_raw(c, b), cts)
            else:
                cts = batch.run_all(lambda c, b=step.beta: o.activation(c, b), cts)
        else:
            if isinstance(step, Affine):
                first = not any(isinstance(s, Affine) for s in plan.steps[:i])
                cts = [(_affine_single_first if first else _affine_single)(o, cts[0], step)]
            else:
                cts = [o.activation(cts[0], step.beta)]

    for ct in cts:
        o.drop_to(ct, 0)
    if enc.packing == "batch":
        slots = np.arange(enc.batch)
    else:
        slots = np.arange(plan.n_out)
    out = EncryptedOutput(ctx, enc.packing, enc.batch, plan.n_out, cts, masked=mask)
    if not mask:
        return out, None
    # Every slot of every output is masked: unused slots would otherwise reveal f(0),
    # padding and evaluation noise.
    u = np.stack([M.mask_and_rerandomize(ctx, ct) for ct in cts], axis=1)   # [limbs, cts, N]
    moduli = primes(ctx.seal, cts[0].parms_id())
    share = slot_shares(to_integers(u, moduli), math.prod(moduli), cts[0].scale, slots)
    share = np.uint64(0) - share  # the AP holds -u
    return out, np.ascontiguousarray(share.T if enc.packing == "batch" else share)

