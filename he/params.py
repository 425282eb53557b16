"""CKKS parameter presets that meet 128-bit security, chosen from depth.

Coefficient modulus layout: [output primes] + [scale prime] * depth + [special prime].
- The output primes are what remains after the last rescale. Their product Q0
  bounds the decrypted values: |value| < Q0 / (2 * scale). The mask (mask.py) is
  uniform modulo Q0 and hides perfectly whatever Q0 is; Q0 / scale >= 2^HEADROOM_BITS
  keeps the masked sum from wrapping (a wrong vote, never a leak; share.py):
  probability <= |f| / 2^HEADROOM_BITS per coefficient for logits |f|.
- Each multiplicative level (one fused affine map, or one degree-2 activation)
  consumes one scale prime.
- The special prime is used only for key switching (relinearization, rotations);
  it takes the bits left over, up to 60.
Totals stay within SEAL's CoeffModulus.MaxBitCount(N, tc128), i.e. the
HomomorphicEncryption.org standard table for 128-bit classical security.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenseal import sealapi as seal

from he.errors import DepthError, HEError

# Output-modulus bits per ring size: two primes so no ciphertext limb exceeds 40 bits.
_OUTPUT_BITS = {8192: (30, 30), 16384: (40, 40), 32768: (50, 50)}
OUTPUT_PRIMES = 2
MIN_SCALE_BITS = 25  # below this CKKS rounding error reaches ~1e-3 on logits
MAX_SCALE_BITS = 40
HEADROOM_BITS = 34  # Q0 / scale: see the module docstring


@dataclass(frozen=True)
class Params:
    poly_degree: int
    scale_bits: int
    coeff_bits: tuple[int, ...] = field(default=())

    @property
    def depth(self) -> int:
        """Multiplicative levels available (scale primes between output and special)."""
        return len(self.coeff_bits) - 3

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    def seal_context(self) -> seal.SEALContext:
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.poly_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(self.poly_degree, list(self.coeff_bits)))
        ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not ctx.parameters_set():
            raise HEError(f"invalid CKKS parameters {self}: {ctx.parameters_error_message()}")
        return ctx

    def to_dict(self) -> dict:
        return {"N": self.poly_degree, "scale_bits": self.scale_bits, "coeff_bits": list(self.coeff_bits)}

    @classmethod
    def from_dict(cls, d: dict) -> Params:
        return cls(int(d["N"]), int(d["scale_bits"]), tuple(int(b) for b in d["coeff_bits"]))


def _fit(n: int, depth: int) -> Params | None:
    out = _OUTPUT_BITS[n]
    max_bits = seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128)
    s_top = min(MAX_SCALE_BITS, sum(out) - HEADROOM_BITS)
    for s in range(s_top, MIN_SCALE_BITS - 1, -1):
        # Spare bits go to the special prime: key-switching noise (rotations of
        # ciphertexts at scale 2^s in single-query packing) shrinks as 1/P.
        special = min(60, max_bits - sum(out) - s * depth)
        if special >= max(max(out), s):
            return Params(n, s, tuple(out) + (s,) * depth + (special,))
    return None


def max_depth() -> int:
    """Largest depth any preset supports."""
    n = max(_OUTPUT_BITS)
    d = 1
    while _fit(n, d + 1) is not None:
        d += 1
    return d


def choose(depth: int, min_slots: int = 1) -> Params:
    """Smallest ring (fastest) meeting 128-bit security with `depth` levels and `min_slots`."""
    if depth < 1:
        raise DepthError(f"depth must be >= 1, got {depth}")
    for n in sorted(_OUTPUT_BITS):
        if n // 2 < min_slots:
            continue
        p = _fit(n, depth)
        if p is not None:
            return p
    raise DepthError(
        f"no 128-bit-secure CKKS preset offers depth {depth} with {min_slots} slots "
        f"(maximum depth is {max_depth()}, maximum slots {max(_OUTPUT_BITS) // 2}); "
        "use fewer activation layers or smaller layers")
