"""The answering party's evaluation of a plan on ciphertexts (public context only).

Scale bookkeeping: a plaintext multiplier is encoded at scale q_l, the prime the
next rescale drops, so affine maps keep the ciphertext scale exactly; a
degree-2 activation maps scale S to S^2 / q_l. All ciphertexts of one layer
share one scale, so SEAL's exact-scale checks on addition always pass.
"""

from __future__ import annotations

import numpy as np
import torch
from tenseal import sealapi as seal

from he import batch
from he import mask as M
from he.cipher import EncryptedBatch, EncryptedOutput
from he.errors import ContextMismatchError, DepthError, HEError, ShapeError
from he.keys import PublicContext
from he.params import OUTPUT_PRIMES
from he.plan import Activation, Affine, Plan


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
    q = o.last_prime(v)
    baby = [v]
    for _ in range(1, min(B, K)):
        baby.append(o.rotate(baby[-1], 1))
    acc = None
    for g in reversed(range((K + B - 1) // B)):
        inner = None
        for b in range(min(B, K - g * B)):
            k = g * B + b
            d = Wp[i % m_p, (i + k) % n_p]
            if not (np.abs(d) * q >= 1.0).any():  # encodes to zero: see _affine_batch
                continue
            t = o.mul_plain(baby[b], o.encode(np.roll(d, g * B), v, q))
            if inner is None:
                inner = t
            else:
                o.ev.add_inplace(inner, t)
        if acc is not None:
            acc = o.rotate(acc, B)
            if inner is not None:
                o.ev.add_inplace(acc, inner)
        else:
            acc = inner
    if acc is None:
        raise HEError(f"affine layer {step.source} has an all-zero weight matrix; remove it")
    s = m_p
    while s < n_p:
        o.ev.add_inplace(acc, o.rotate(acc, s))
        s *= 2
    o.ev.rescale_to_next_inplace(acc)
    bias = np.zeros(m_p)
    bias[:m] = step.b
    o.ev.add_plain_inplace(acc, o.encode(np.tile(bias, o.slots // m_p), acc, acc.scale))
    return acc


def evaluate(plan: Plan, enc: EncryptedBatch, *, mask: bool = True, flood: float | None = None,
             context: PublicContext | None = None) -> tuple[EncryptedOutput, torch.Tensor]:
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
        ctx.require_rotations(plan.rotation_steps)
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
            cts = [_affine_single(o, cts[0], step) if isinstance(step, Affine)
                   else o.activation(cts[0], step.beta)]

    r_full = M.uniform_mask((len(cts), o.slots)) if mask else np.zeros((len(cts), o.slots))
    for ct, r in zip(cts, r_full, strict=True):
        o.drop_to(ct, 0)
        if mask:  # every slot: unused slots would otherwise reveal f(0) or padding
            o.ev.sub_plain_inplace(ct, o.encode(r, ct, ct.scale))
        if flood:
            noise = seal.Plaintext()
            o.ce.encode(M.gaussian_complex(o.slots, flood), ct.parms_id(), ct.scale, noise)
            fresh = seal.Ciphertext()
            ctx.encryptor.encrypt(noise, fresh)
            o.ev.add_inplace(ct, fresh)
    if enc.packing == "batch":
        r = r_full[:, : enc.batch].T
    else:
        r = r_full[:1, : plan.n_out]
    out = EncryptedOutput(ctx, enc.packing, enc.batch, plan.n_out, cts)
    return out, torch.from_numpy(np.ascontiguousarray(r))
