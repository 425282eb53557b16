"""The maths of secure aggregation (Bonawitz et al., CCS 2017) over a sparse neighbour graph
(Bell et al., CCS 2020, "SecAgg+"), without I/O: the roles are in protocols/fedavg.py.

Client u sends y_u = x_u + PRG(b_u) + sum over neighbours v of +-PRG(s_uv) (mod 2^k), where
x_u is its quantized, weighted update, b_u a fresh self-mask seed and s_uv the key both
ends of an edge derive from their per-round X25519 keys. Pairwise masks cancel in the
sum; the server removes self masks of survivors (b_u rebuilt from t neighbours' Shamir
shares) and the pairwise masks of clients that dropped after masking others (their
mask key rebuilt the same way). Every seed is 256 bits from the OS; masks are ChaCha20
keystreams under the full seed. The modulus 2^k is chosen so that the sum of every
client's largest possible input cannot wrap.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import bitpack

SEED_BYTES = 32


class SecAggError(ValueError):
    """Settings the maths cannot satisfy, or inputs that do not fit; the message says which."""


# --------------------------------------------------------------------------- quantization

@dataclass(frozen=True)
class Quantizer:
    """Values clipped to [-clip, clip] and stochastically rounded to ``bits`` bits; each
    client's vector is its quantized update times its weight (sample count, at most
    ``max_weight``), followed by the weight, so the sum decodes to the weighted mean."""

    clip: float
    bits: int
    max_weight: int

    def __post_init__(self) -> None:
        if not (self.clip > 0 and 1 <= self.bits <= 32 and self.max_weight >= 1):
            raise SecAggError(f"need clip > 0, 1 <= bits <= 32, max_weight >= 1; got "
                              f"{self.clip}, {self.bits}, {self.max_weight}")

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def modulus_bits(self, clients: int) -> int:
        """The smallest k with clients * max_weight * (2^bits - 1) < 2^k: no sum can wrap."""
        largest = clients * self.max_weight * self.levels
        k = largest.bit_length()
        if k > 64:
            raise SecAggError(f"{clients} clients x weight {self.max_weight} x {self.bits}-bit "
                              f"values need a {k}-bit modulus; at most 64: use fewer bits or a "
                              "smaller max_weight")
        return max(k, 1)

    def encode(self, update: np.ndarray, weight: int, rng: np.random.Generator) -> np.ndarray:
        """uint64 vector: weight * stochastic_round(scaled clipped update), then the weight."""
        if not 1 <= weight <= self.max_weight:
            raise SecAggError(f"weight {weight} is outside 1..{self.max_weight} (max_weight)")
        x = (np.clip(np.asarray(update, np.float64), -self.clip, self.clip) + self.clip) \
            * (self.levels / (2 * self.clip))
        low = np.floor(x)
        q = low + (rng.random(x.shape) < (x - low))     # E[q] = x: unbiased
        q = np.clip(q, 0, self.levels).astype(np.uint64)
        return np.concatenate([q * np.uint64(weight), np.array([weight], dtype=np.uint64)])

    def decode_sum(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """(weighted mean update, total weight) from the unmasked sum."""
        weight = int(total[-1])
        if weight < 1:
            raise SecAggError("the aggregate holds no weight: no client's input is in it")
        mean_q = total[:-1].astype(np.float64) / weight
        return mean_q * (2 * self.clip / self.levels) - self.clip, weight


# --------------------------------------------------------------------------- masks

def modulus_mask(k: int) -> np.uint64:
    return np.uint64((1 << k) - 1) if k < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)


def expand(seed: bytes, dim: int, k: int) -> np.ndarray:
    """``dim`` elements of Z_2^k from a ChaCha20 keystream keyed by the whole 256-bit seed."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"a mask seed has {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    # the keystream is ChaCha20 of zeros (cryptography >= 47 refuses to encrypt in place)
    out = np.frombuffer(stream.update(bytes(8 * dim)), dtype="<u8")
    return np.bitwise_and(out, modulus_mask(k))


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()   # OpenSSL's generator: the OS source


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def pair_seed(mine: X25519PrivateKey | bytes, theirs: bytes, context: bytes, a: str, b: str) -> bytes:
    """The 256-bit seed of the edge (a, b), equal at both ends: HKDF over the X25519 secret,
    bound to the round's context and the (ordered) pair of names."""
    key = mine if isinstance(mine, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(mine)
    secret = key.exchange(X25519PublicKey.from_public_bytes(theirs))
    lo, hi = sorted((a, b))
    info = b"confidant/secagg/pair/v1|" + context + b"|" + lo.encode() + b"|" + hi.encode()
    return HKDF(hashes.SHA256(), SEED_BYTES, salt=None, info=info).derive(secret)


def pair_sign(me: str, other: str) -> int:
    """+1 for the smaller name of the edge, -1 for the larger: the two masks cancel."""
    return 1 if me < other else -1


def masked_input(x: np.ndarray, k: int, self_seed: bytes, pairs: dict[str, tuple[bytes, int]]
                 ) -> np.ndarray:
    """y = x + PRG(b) + sum_v sign_v PRG(s_v) (mod 2^k)."""
    if np.any(x > modulus_mask(k)):
        raise SecAggError(f"an input element does not fit in Z_2^{k}")
    y = x.astype(np.uint64) + expand(self_seed, x.size, k)
    for seed, sign in pairs.values():   # in place: d = 10^6 is 8 MB per vector
        (np.add if sign > 0 else np.subtract)(y, expand(seed, x.size, k), out=y)
    return np.bitwise_and(y, modulus_mask(k), out=y)


def unmask(total: np.ndarray, k: int, self_seeds: list[bytes],
           dropped_pairs: list[tuple[bytes, int]]) -> np.ndarray:
    """The sum of the survivors' inputs from the sum of their masked inputs: minus each
    survivor's self mask, minus each mask a survivor added toward a dropped client
    (``(seed, sign)`` as the survivor added it)."""
    out = total.astype(np.uint64)   # a copy: the caller's total stays
    for seed in self_seeds:
        np.subtract(out, expand(seed, total.size, k), out=out)
    for seed, sign in dropped_pairs:
        (np.subtract if sign > 0 else np.add)(out, expand(seed, total.size, k), out=out)
    return np.bitwise_and(out, modulus_mask(k), out=out)


def to_signed(total: np.ndarray, k: int) -> np.ndarray:
    """Elements of Z_2^k read as two's complement integers in [-2^(k-1), 2^(k-1)), k <= 62."""
    if not 1 <= k <= 62:
        raise SecAggError(f"signed decoding needs 1 <= k <= 62, got {k}")
    signed = total.astype(np.int64)
    signed[total >= np.uint64(1 << (k - 1))] -= np.int64(1 << k)
    return signed


def pack(y: np.ndarray, k: int) -> bytes:
    """Elements of Z_2^k, k bits each (little-endian bit order): the upload is d*k/8 bytes,
    not 8*d."""
    return bitpack.pack(y, k)


def unpack(data: bytes, k: int, dim: int) -> np.ndarray:
    """The inverse of :func:`pack`; a wrong length is a malformed upload."""
    try:
        return bitpack.unpack(data, k, dim)
    except bitpack.BitPackError as e:
        raise SecAggError(f"a packed vector of {dim} {k}-bit elements: {e}") from None


# --------------------------------------------------------------------------- graph

def neighbours(names: list[str], degree: int, seed: bytes) -> dict[str, list[str]]:
    """A random Harary graph (Bell et al.): the clients in a public random order on a ring,
    each joined to degree/2 on either side; the complete graph when degree >= n - 1."""
    n = len(names)
    if degree >= n - 1:
        return {u: [v for v in names if v != u] for u in names}
    order = sorted(names, key=lambda s: hashlib.sha256(seed + s.encode()).digest())
    half = degree // 2
    out: dict[str, set[str]] = {u: set() for u in names}
    for i, u in enumerate(order):
        for j in range(1, half + 1):
            v = order[(i + j) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(vs) for u, vs in out.items()}


@dataclass(frozen=True)
class GraphChoice:
    degree: int
    threshold: int
    how: str            # why these values: which bound decided


@functools.lru_cache(maxsize=256)   # pure, and asked by every party every round
def choose_graph(n: int, dropout: float, corrupt: float, security_bits: int = 40,
                 failure_bits: int = 20) -> GraphChoice:
    """The smallest degree k and a Shamir threshold t (of k neighbours) such that:

    - failure: a client has fewer than t surviving neighbours with probability
      n * P[Binomial(k, dropout) > k - t] <= 2^-failure_bits;
    - security: some client has t corrupt neighbours (who could rebuild both its
      seeds) with probability n * P[Binomial(k, corrupt) >= t] <= 2^-security_bits.

    Those tails model dropouts and corruptions as independent per client (Bell et
    al.'s analysis). When no sparse graph meets both, the complete graph with the
    worst-case counts: t > corrupt * n and t <= (n - 1) - dropout * n.
    """
    from scipy.stats import binom

    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 clients")
    if not (0 <= dropout < 1 and 0 <= corrupt < 1):
        raise SecAggError(f"dropout and corrupt fractions must be in [0, 1), got {dropout}, {corrupt}")
    for k in range(4, n - 1, 2):
        for t in range(1, k + 1):
            fail = n * binom.sf(k - t, k, dropout)          # P[X > k - t]
            leak = n * binom.sf(t - 1, k, corrupt)          # P[X >= t]
            if fail <= 2.0 ** -failure_bits and leak <= 2.0 ** -security_bits:
                return GraphChoice(k, t, f"sparse: failure {fail:.1e}, leak {leak:.1e} (union bounds)")
    k = n - 1
    worst_corrupt, worst_drop = math.floor(corrupt * n), math.ceil(dropout * n)
    t = worst_corrupt + 1
    if t > k - worst_drop or t < 1:
        raise SecAggError(f"{n} clients cannot tolerate {worst_drop} dropouts and {worst_corrupt} "
                          "corrupt clients together; use more clients or smaller fractions")
    t = max(t, (k - worst_drop + worst_corrupt + 1) // 2 + (k - worst_drop + worst_corrupt + 1) % 2)
    t = min(t, k - worst_drop)
    return GraphChoice(k, t, f"complete graph: worst case of {worst_corrupt} corrupt, "
                             f"{worst_drop} dropped")


def consistency_quorum(n: int, corrupt: float) -> int:
    """How many clients of the round must confirm the same survivor set: more than
    (n + corrupt clients) / 2, so two different sets can never both reach it (any two
    quorums share an honest client, who confirms only one set)."""
    return (n + math.floor(corrupt * n)) // 2 + 1
