"""The answering party's mask: what makes its answer reveal nothing to the key owner.

`mask_and_rerandomize(ctx, ct)` adds to the output ciphertext a fresh public-key
encryption of a polynomial u whose coefficients are uniform modulo the output
modulus Q0 (independently uniform residues per RNS prime, by the CRT):

- the decryption becomes P + u mod Q0, uniform whatever P holds: every slot, real
  and imaginary, used and unused, and the evaluation noise in P, which is a
  function of the AP's weights (a uniform mask is noise flooding taken to the
  whole ring: statistical distance 0, no noise bound needed);
- the fresh encryption of zero (pk * v + e) makes the second component
  pseudorandom under RLWE; without it c1 is a deterministic function of the
  AP's weights and the QP's own ciphertexts.

The AP keeps -u as its share (he/share.py turns it into shares of the logits).
"""

from __future__ import annotations

import numpy as np
from tenseal import sealapi as seal

from he import rns
from he.keys import PublicContext
from he.share import primes
from mpc import randomness


def mask_and_rerandomize(ctx: PublicContext, ct: seal.Ciphertext) -> np.ndarray:
    """Add Enc_pk(u) to `ct` in place; return u as coefficient residues uint64 [limbs, N]."""
    moduli = primes(ctx.seal, ct.parms_id())
    n = ct.poly_modulus_degree()
    u = np.stack([randomness.below(p, n) for p in moduli])
    fresh = seal.Ciphertext()
    ctx.encryptor.encrypt_zero(ct.parms_id(), fresh)
    ctx.evaluator.transform_from_ntt_inplace(fresh)
    c0 = rns.view(fresh)[0]
    for limb, p in enumerate(moduli):
        c0[limb] = (c0[limb] + u[limb]) % np.uint64(p)  # both < p < 2^61: no overflow
    ctx.evaluator.transform_to_ntt_inplace(fresh)
    fresh.scale = ct.scale
    ctx.evaluator.add_inplace(ct, fresh)
    return u
