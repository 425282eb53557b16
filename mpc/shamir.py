"""Shamir t-of-n secret sharing of keys, salts, seeds, integers and small integer vectors.

Built on pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` (GF(2^128),
16-byte blocks, coefficients from the OS random source); longer secrets are cut
into 16-byte blocks, each shared with its own polynomial. We chose it over
hand-written field arithmetic because everything needed can be done with it:

* any t shares reconstruct, fewer reveal nothing (perfect secrecy per block);
* linearity: in GF(2^128) addition is XOR, so ``a + b`` of two shares with the
  same index is a share of ``secret_a XOR secret_b``. That is what joint
  randomness needs (a key that is the XOR of every owner's contribution is
  uniform if any one owner is honest). Integer sums belong in
  :mod:`mpc.additive` (Z_2^64).

Keys and seeds that need no linearity (SecAgg+'s mask seeds and keys, where a server
rebuilds hundreds per round) have :func:`share_key`: one element of the prime field
GF(2^521 - 1) for a secret of up to 64 bytes, interpolated with Python integers, some 50x
faster to reconstruct than the GF(2^128) blocks above (pycryptodome multiplies in Python).

Each sharing carries a random tag; mixing shares of different sharings is
detected. Reconstruction from more than t shares cross-checks the extra ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir as _Shamir

from . import randomness

BLOCK = 16
PRIME = (1 << 521) - 1           # a Mersenne prime: the field of share_key
KEY_BYTES = 64                   # the longest share_key secret (512 bits < 521)
PRIME_BYTES = 66
MAX_SHARES = 255  # indices are one byte in the serialized form; plenty for a federation


class ShamirError(ValueError):
    """Bad parameters, or shares that do not belong together."""


@dataclass(frozen=True)
class Share:
    """One party's share: ``index`` in 1..n, the ``blocks`` (16 bytes each) and metadata.

    ``kind`` is "bytes", "int" or "ints"; ``length`` is the byte length of a
    bytes secret or the element count of an int vector. ``tag`` identifies the
    sharing (random; derived for sums), so shares of different secrets are not
    silently combined.
    """

    index: int
    t: int
    n: int
    kind: str
    length: int
    tag: bytes
    blocks: tuple[bytes, ...]

    def __add__(self, other: Share) -> Share:
        if not isinstance(other, Share):
            return NotImplemented
        if "key" in (self.kind, other.kind):
            raise ShamirError("shares of share_key are not linear (XOR); add GF(2^128) shares")
        if (self.index, self.t, self.n, self.kind, self.length, len(self.blocks)) != (
                other.index, other.t, other.n, other.kind, other.length, len(other.blocks)):
            raise ShamirError("can only add shares with the same index, threshold, n, kind "
                              f"and length (got index {self.index} vs {other.index}, "
                              f"{self.kind}/{self.length} vs {other.kind}/{other.length})")
        blocks = tuple(bytes(x ^ y for x, y in zip(a, b, strict=True))
                       for a, b in zip(self.blocks, other.blocks, strict=True))
        # XOR keeps the tag independent of the order in which shares are summed,
        # so every party's share of the same sum carries the same tag.
        tag = bytes(x ^ y for x, y in zip(self.tag, other.tag, strict=True))
        return Share(self.index, self.t, self.n, self.kind, self.length, tag, blocks)

    def to_dict(self) -> dict:
        """Wire form (for :mod:`mpc.wire`)."""
        return {"index": self.index, "t": self.t, "n": self.n, "kind": self.kind,
                "length": self.length, "tag": self.tag, "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, d: dict) -> Share:
        try:
            share = cls(int(d["index"]), int(d["t"]), int(d["n"]), str(d["kind"]),
                        int(d["length"]), bytes(d["tag"]), tuple(bytes(b) for b in d["blocks"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ShamirError(f"malformed share: {e}") from None
        size = PRIME_BYTES if share.kind == "key" else BLOCK
        if share.kind not in ("bytes", "int", "ints", "key") or any(len(b) != size for b in share.blocks):
            raise ShamirError("malformed share: unknown kind or block size")
        return share


def _check_params(n: int, t: int) -> None:
    if not isinstance(n, int) or not isinstance(t, int):
        raise ShamirError(f"n and t must be integers, got n={n!r}, t={t!r}")
    if t < 1:
        raise ShamirError(f"threshold t={t} must be at least 1")
    if t > n:
        raise ShamirError(f"threshold t={t} cannot exceed the number of shares n={n}")
    if n > MAX_SHARES:
        raise ShamirError(f"at most {MAX_SHARES} shares are supported, got n={n}")


def _to_blocks(secret: int | bytes | Sequence[int]) -> tuple[str, int, list[bytes]]:
    if isinstance(secret, bool):
        raise ShamirError("share an int or bytes, not a bool")
    if isinstance(secret, int):
        if secret < 0:
            raise ShamirError(f"integer secrets must be non-negative, got {secret}")
        nbytes = max(1, -(-secret.bit_length() // 8))
        raw = secret.to_bytes(-(-nbytes // BLOCK) * BLOCK, "big")
        return "int", 0, [raw[i:i + BLOCK] for i in range(0, len(raw), BLOCK)]
    if isinstance(secret, (bytes, bytearray)):
        if len(secret) == 0:
            raise ShamirError("cannot share an empty byte string")
        raw = bytes(secret) + b"\0" * (-len(secret) % BLOCK)
        return "bytes", len(secret), [raw[i:i + BLOCK] for i in range(0, len(raw), BLOCK)]
    try:
        values = [int(v) for v in secret]
    except (TypeError, ValueError):
        raise ShamirError(f"cannot share a {type(secret).__name__}: pass int, bytes or a "
                          "sequence of non-negative ints") from None
    if not values or any(v < 0 or v >= 2 ** 128 for v in values):
        raise ShamirError("integer vectors must be non-empty with entries in [0, 2^128)")
    return "ints", len(values), [v.to_bytes(BLOCK, "big") for v in values]


def share(secret: int | bytes | Sequence[int], n: int, t: int) -> list[Share]:
    """Split ``secret`` into ``n`` shares, any ``t`` of which reconstruct it."""
    _check_params(n, t)
    kind, length, blocks = _to_blocks(secret)
    tag = randomness.token_bytes(16)
    per_party: list[list[bytes]] = [[] for _ in range(n)]
    for block in blocks:
        if t == 1:  # a constant polynomial: every share is the block itself
            parts = [(i + 1, block) for i in range(n)]
        else:
            parts = _Shamir.split(t, n, block)
        for idx, part in parts:
            per_party[idx - 1].append(part)
    return [Share(i + 1, t, n, kind, length, tag, tuple(p)) for i, p in enumerate(per_party)]


def share_key(secret: bytes, n: int, t: int) -> list[Share]:
    """Split a key or seed of 1..64 bytes into ``n`` shares over GF(2^521 - 1), any ``t`` of
    which reconstruct it (with :func:`reconstruct`); fewer reveal nothing."""
    _check_params(n, t)
    if not isinstance(secret, (bytes, bytearray)) or not 1 <= len(secret) <= KEY_BYTES:
        raise ShamirError(f"share_key takes 1..{KEY_BYTES} bytes")
    coeffs = [int.from_bytes(secret, "big")] + [_below_prime() for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):        # Horner
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(PRIME_BYTES, "big"))
    tag = randomness.token_bytes(16)
    return [Share(i + 1, t, n, "key", len(secret), tag, (y,)) for i, y in enumerate(shares)]


def _below_prime() -> int:
    while True:                           # 2^521 - 1 excluded: rejection with chance 2^-521
        v = randomness.randbits(521)
        if v < PRIME:
            return v


def _lagrange_at_zero(points: list[tuple[int, bytes]]) -> bytes:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num, den = num * xj % PRIME, den * (xj - xi) % PRIME
        total = (total + int.from_bytes(yi, "big") * num * pow(den, -1, PRIME)) % PRIME
    return total.to_bytes(PRIME_BYTES, "big")


def _combine_block(points: list[tuple[int, bytes]], kind: str = "bytes") -> bytes:
    if kind == "key":
        return _lagrange_at_zero(points)
    return points[0][1] if len(points) == 1 else _Shamir.combine(points)


def reconstruct(shares: Sequence[Share]) -> int | bytes | list[int]:
    """Recover the secret from at least t shares with distinct indices."""
    shares = list(shares)
    if not shares:
        raise ShamirError("no shares given")
    if not all(isinstance(s, Share) for s in shares):
        raise ShamirError("reconstruct takes Share objects (see Share.from_dict)")
    first = shares[0]
    for s in shares[1:]:
        if s.tag != first.tag:
            raise ShamirError("shares come from different sharings (tags differ); "
                              "collect shares of one secret")
        if (s.t, s.n, s.kind, s.length, len(s.blocks)) != (
                first.t, first.n, first.kind, first.length, len(first.blocks)):
            raise ShamirError("shares disagree on threshold, n, kind or length")
    indices = [s.index for s in shares]
    if len(set(indices)) != len(indices):
        raise ShamirError(f"duplicate share indices {sorted(indices)}; each party's share "
                          "may be used once")
    if any(not 1 <= i <= first.n for i in indices):
        raise ShamirError(f"share indices must lie in 1..{first.n}, got {sorted(indices)}")
    if len(shares) < first.t:
        raise ShamirError(f"need at least t={first.t} shares to reconstruct, got {len(shares)}")
    base, extra = shares[:first.t], shares[first.t:]
    blocks = []
    for b in range(len(first.blocks)):
        block = _combine_block([(s.index, s.blocks[b]) for s in base], first.kind)
        for s in extra:  # each further share must lie on the same polynomial
            check = _combine_block([(x.index, x.blocks[b]) for x in base[1:]] + [(s.index, s.blocks[b])],
                                   first.kind)
            if check != block:
                raise ShamirError(f"share {s.index} is inconsistent with the others "
                                  "(corrupted, or from another secret)")
        blocks.append(block)
    if first.kind == "int":
        return int.from_bytes(b"".join(blocks), "big")
    if first.kind == "key":
        value = int.from_bytes(blocks[0], "big")
        if value >= 1 << (8 * first.length):
            raise ShamirError("the shares do not lie on one polynomial of a key this long "
                              "(corrupted, or from another secret)")
        return value.to_bytes(first.length, "big")
    if first.kind == "ints":
        return [int.from_bytes(b, "big") for b in blocks]
    return b"".join(blocks)[:first.length]
