"""Hash-Comb: quantized, keyed multi-hash tokens for values (PAPERS.md section 1).

A full binary quantization tree of depth L covers [lo - delta, hi + delta]; the
node at level k (1..L) and index i (0..2^k - 1) is the bin
[a + i w_k, a + (i + 1) w_k) with w_k = (b - a) / 2^k. Every node gets a token:

* keyed mode (``HashComb(...)``): the first 8 bytes of BLAKE2b keyed by a key
  derived from the shared secret, the tree's hyper-parameters and an optional
  context, over (level, index). Tokens are computed once per key into a table,
  so encoding is bin arithmetic plus a numpy table lookup.
* compatible mode (``HashComb.compatible(...)``): the reference library's
  tokens (``hashcomb`` 1.0.0), bit for bit: its floating-point midpoint tree,
  its node labels ``"k[min  max]"``, ``"|salt"`` suffix, SHA3-256 truncated to
  28 bits. Encoding uses the same bin edges as the reference's tree walk.

Tables are indexed in heap order: node (k, i) sits at position 2^k + i, so the
level-k ancestor of leaf j is at 2^k + (j >> (L - k)).

Aggregation needs no key: :class:`TokenHistogram` holds, per coordinate, the
sorted distinct tokens and their counts; histograms add up; a key holder decodes
the sum as the count-weighted mean of bin centres. In keyed mode the centre of
node (k, i) is a + m u with u = (b - a) / 2^(L+1) and the integer
m = (2 i + 1) 2^(L-k), so aggregated sums of m are exact integers.

Pure computation: no I/O, no network. Randomness for released levels comes from
the OS (:mod:`mpc.randomness`) unless a numpy Generator is passed explicitly (for
reproducible tests and simulations).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mpc import randomness

__all__ = [
    "AmbiguousTokenError",
    "HashComb",
    "HashCombError",
    "HashCombParams",
    "HistogramFormatError",
    "HyperParameterMismatchError",
    "InconsistentPathError",
    "OutOfRangeError",
    "ParameterError",
    "TableTooLargeError",
    "TokenCollisionError",
    "TokenHistogram",
    "UnknownTokenError",
    "aggregate_histograms",
    "expected_level",
    "level_pmf",
    "paper_expected_level",
    "sample_levels",
    "solve_selection_probability",
]

DEFAULT_MAX_TABLE_BYTES = 256 * 2**20
# Table memory per tree node: token, centre, sorted token and its position.
_BYTES_PER_NODE = 32
_MAX_LEVELS = 62  # heap positions 2^(L+1) must fit in int64
_KEY_MIN, _KEY_MAX = 16, 64  # BLAKE2b key length limits (and a sane minimum)
_PARAMS_VERSION = "confidant.hashcomb.v1"
_MAX_EXAMPLES = 5


# --------------------------------------------------------------------------- errors

class HashCombError(ValueError):
    """Base class of every error this module raises on bad input."""


class ParameterError(HashCombError):
    """A hyper-parameter (levels, range, delta, p, key, ...) is invalid."""


class OutOfRangeError(HashCombError):
    """Values to encode are NaN or outside the encodable interval."""

    def __init__(self, message: str, indices: np.ndarray) -> None:
        super().__init__(message)
        self.indices = indices


class TableTooLargeError(HashCombError):
    """The token table for this many levels would exceed the memory limit."""


class UnknownTokenError(HashCombError):
    """Tokens that are not in this encoder's table (wrong key, parameters or corruption)."""

    def __init__(self, message: str, indices: np.ndarray, tokens: np.ndarray) -> None:
        super().__init__(message)
        self.indices = indices
        self.tokens = tokens
        self.count = int(indices.size)


class AmbiguousTokenError(HashCombError):
    """Compatible mode only: a 28-bit token that names more than one tree node."""


class TokenCollisionError(HashCombError):
    """Two nodes got the same 64-bit keyed token (astronomically rare): use another key."""


class InconsistentPathError(HashCombError):
    """A path of tokens is not a root-to-node chain of the tree."""


class HyperParameterMismatchError(HashCombError):
    """Histograms or parameters come from parties with different hyper-parameters or keys."""


class HistogramFormatError(HashCombError):
    """A token histogram (e.g. received from the wire) is malformed."""


def _examples(indices: np.ndarray, values: np.ndarray) -> str:
    shown = ", ".join(f"{int(v)} at index {int(i)}" for i, v in
                      zip(indices[:_MAX_EXAMPLES], values[:_MAX_EXAMPLES], strict=True))
    more = "" if indices.size <= _MAX_EXAMPLES else f", ... ({indices.size - _MAX_EXAMPLES} more)"
    return shown + more


# --------------------------------------------------------------------------- randomized level

def _check_levels(levels: Any) -> int:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
        raise ParameterError(f"levels must be an integer, got {levels!r}")
    if not 1 <= int(levels) <= _MAX_LEVELS:
        raise ParameterError(f"levels must be in 1..{_MAX_LEVELS}, got {levels}")
    return int(levels)


def _check_p(p: Any) -> float:
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ParameterError(f"selection probability p must be a number, got {p!r}") from None
    if not (0.0 < pf <= 1.0) or math.isnan(pf):
        raise ParameterError(f"selection probability p must be in (0, 1], got {p!r}")
    return pf


def level_pmf(levels: int, p: float) -> np.ndarray:
    """P(K = k) for k = 1..L under the last-head rule with re-toss when no head.

    Toss L coins with heads probability p; K is the position of the last head.
    K = k needs a head at k and tails after it: p (1-p)^(L-k); conditioning on
    at least one head divides by 1 - (1-p)^L.
    """
    L, p = _check_levels(levels), _check_p(p)
    q = 1.0 - p
    k = np.arange(1, L + 1, dtype=np.float64)
    w = p * q ** (L - k)
    return w / w.sum()  # w.sum() == 1 - q^L up to rounding


def expected_level(levels: int, p: float) -> float:
    """E[K] of the released level: the conditional mean given at least one head."""
    pmf = level_pmf(levels, p)
    return float(np.dot(np.arange(1, len(pmf) + 1), pmf))


def paper_expected_level(levels: int, p: float) -> float:
    """The reference library's Eq. (14), sum_{i<L} (L-i) p (1-p)^i, which ignores the re-toss.

    Kept only to show the discrepancy: the true mean is this divided by 1 - (1-p)^L.
    """
    L, p = _check_levels(levels), _check_p(p)
    return float(sum((L - i) * p * (1.0 - p) ** i for i in range(L)))


def solve_selection_probability(levels: int, target_level: float, tol: float = 1e-12) -> float:
    """The p whose expected released level (conditional mean) equals ``target_level``.

    E[K] increases with p from (L + 1) / 2 (p -> 0: uniform level) to L (p = 1),
    so targets must lie in the open-closed interval ((L + 1) / 2, L].
    """
    L = _check_levels(levels)
    t = float(target_level)
    lo_t = (L + 1) / 2.0
    if not (lo_t < t <= L):
        raise ParameterError(
            f"target level {target_level!r} is not reachable with {L} levels: the expected "
            f"released level lies in ({lo_t}, {L}] (p -> 0 gives a uniform level, p = 1 gives {L})")
    if t == L:
        return 1.0
    lo_p, hi_p = 0.0, 1.0
    for _ in range(200):  # bisection on a monotone function; 200 halvings exhaust float64
        mid = 0.5 * (lo_p + hi_p)
        if mid <= 0.0:
            break
        if expected_level(L, mid) < t:
            lo_p = mid
        else:
            hi_p = mid
        if hi_p - lo_p <= tol:
            break
    return 0.5 * (lo_p + hi_p)


def _uniforms(n: int, rng: np.random.Generator | None) -> np.ndarray:
    """n uniforms in [0, 1): from the OS CSPRNG by default, from ``rng`` only if given."""
    if rng is None:
        return randomness.uniform(n)
    if not isinstance(rng, np.random.Generator):
        raise ParameterError("rng must be a numpy Generator (e.g. np.random.default_rng(seed)) "
                             "for reproducible runs, or None for OS randomness")
    return rng.random(n)


def sample_levels(n: int, levels: int, p: float,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """n independent released levels (1..L, uint8) by inverse CDF of :func:`level_pmf`."""
    cdf = np.cumsum(level_pmf(levels, p))[:-1]
    return (np.searchsorted(cdf, _uniforms(int(n), rng), side="right") + 1).astype(np.uint8)


# --------------------------------------------------------------------------- parameters

def _finite(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ParameterError(f"{name} must be finite, got {v!r}")
    return f


@dataclass(frozen=True)
class HashCombParams:
    """The public hyper-parameters owners must agree on (the key is separate).

    ``p`` is the selection probability of the randomized release (None: only
    deterministic encodings). Use :meth:`with_target_level` to set p from a
    desired expected released level.
    """

    levels: int
    lo: float
    hi: float
    delta: float = 0.0
    p: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", _check_levels(self.levels))
        lo, hi = _finite("lo", self.lo), _finite("hi", self.hi)
        delta = _finite("delta", self.delta)
        if hi <= lo:
            raise ParameterError(f"hi must be greater than lo, got lo={lo}, hi={hi}")
        if delta < 0:
            raise ParameterError(f"delta must be >= 0, got {delta}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "delta", delta)
        if self.p is not None:
            object.__setattr__(self, "p", _check_p(self.p))

    @classmethod
    def with_target_level(cls, levels: int, lo: float, hi: float, delta: float,
                          target_level: float) -> HashCombParams:
        return cls(levels, lo, hi, delta, solve_selection_probability(levels, target_level))

    def as_dict(self) -> dict[str, Any]:
        """Keyword arguments for :class:`HashComb`; also wire-safe."""
        return asdict(self)

    def canonical(self) -> bytes:
        """Exact, order-independent encoding (floats as hex) used for fingerprints and keys."""
        d = {"v": _PARAMS_VERSION, "levels": self.levels, "lo": self.lo.hex(),
             "hi": self.hi.hex(), "delta": self.delta.hex(),
             "p": None if self.p is None else self.p.hex()}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def tree_canonical(self) -> bytes:
        """As :meth:`canonical` without p: what the token table depends on."""
        d = {"v": _PARAMS_VERSION, "levels": self.levels, "lo": self.lo.hex(),
             "hi": self.hi.hex(), "delta": self.delta.hex()}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def fingerprint(self) -> str:
        """Stable public fingerprint (hex) of these hyper-parameters."""
        return hashlib.sha256(self.canonical()).hexdigest()[:32]

    def check_matches(self, other: HashCombParams | str) -> None:
        """Raise :class:`HyperParameterMismatchError` unless ``other`` (params or fingerprint) matches."""
        if isinstance(other, HashCombParams):
            diff = [f"{f}: {getattr(self, f)!r} vs {getattr(other, f)!r}"
                    for f in ("levels", "lo", "hi", "delta", "p")
                    if getattr(self, f) != getattr(other, f)]
            if diff:
                raise HyperParameterMismatchError(
                    "Hash-Comb hyper-parameters differ between parties (" + "; ".join(diff) +
                    "); all owners must use the parameters agreed in the setup")
        elif other != self.fingerprint():
            raise HyperParameterMismatchError(
                f"Hash-Comb parameter fingerprint {other!r} does not match ours "
                f"({self.fingerprint()!r}); all owners must use the parameters agreed in the setup")


# --------------------------------------------------------------------------- histograms

def _min_uint(maxval: int) -> np.dtype:
    for t in (np.uint8, np.uint16, np.uint32):
        if maxval <= np.iinfo(t).max:
            return np.dtype(t)
    return np.dtype(np.uint64)


@dataclass(frozen=True, eq=False)
class TokenHistogram:
    """Per-coordinate token counts, sparse: what the aggregator sums without the key.

    Coordinate c owns entries ``offsets[c]:offsets[c+1]`` of ``tokens`` (sorted,
    distinct) and ``counts`` (> 0). ``fingerprint`` is the encoder's keyed
    fingerprint, so an aggregator can refuse to mix histograms of parties with
    different keys or hyper-parameters without being able to decode either.
    """

    dim: int
    offsets: np.ndarray  # int64, dim + 1
    tokens: np.ndarray  # uint64
    counts: np.ndarray  # int64
    fingerprint: str

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, fingerprint: str) -> TokenHistogram:
        """One contribution per coordinate (1-D), or one row per contribution (2-D)."""
        t = np.asarray(tokens)
        if t.dtype != np.uint64:
            raise HistogramFormatError(f"tokens must be uint64, got {t.dtype}")
        if t.ndim == 1:
            d = t.size
            return cls(d, np.arange(d + 1, dtype=np.int64), t.copy(),
                       np.ones(d, dtype=np.int64), fingerprint)
        if t.ndim != 2:
            raise HistogramFormatError(f"tokens must be 1-D or 2-D, got shape {t.shape}")
        rows, d = t.shape
        coords = np.broadcast_to(np.arange(d, dtype=np.int64), (rows, d)).ravel()
        return cls._reduce(d, coords, t.ravel(), np.ones(rows * d, dtype=np.int64), fingerprint)

    @staticmethod
    def _reduce(d: int, coords: np.ndarray, toks: np.ndarray, counts: np.ndarray,
                fingerprint: str) -> TokenHistogram:
        order = _coord_token_order(d, coords, toks)
        c, t, n = coords[order], toks[order], counts[order]
        if c.size == 0:
            return TokenHistogram(d, np.zeros(d + 1, dtype=np.int64), t, n, fingerprint)
        start = np.ones(c.size, dtype=bool)
        start[1:] = (c[1:] != c[:-1]) | (t[1:] != t[:-1])
        idx = np.flatnonzero(start)
        c, t, n = c[idx], t[idx], np.add.reduceat(n, idx)
        offsets = np.zeros(d + 1, dtype=np.int64)
        np.cumsum(np.bincount(c, minlength=d), out=offsets[1:])
        return TokenHistogram(d, offsets, t, n, fingerprint)

    def coordinate_totals(self) -> np.ndarray:
        """Number of contributions per coordinate."""
        cs = np.zeros(self.counts.size + 1, dtype=np.int64)
        np.cumsum(self.counts, out=cs[1:])
        return cs[self.offsets[1:]] - cs[self.offsets[:-1]]

    def __add__(self, other: TokenHistogram) -> TokenHistogram:
        if not isinstance(other, TokenHistogram):
            return NotImplemented
        return aggregate_histograms([self, other])

    def to_wire(self) -> dict[str, Any]:
        """A dict of str keys, ints and small-dtype numpy arrays for :mod:`mpc.wire`.

        One contribution per coordinate (an owner's upload) sends tokens only.
        """
        lengths = np.diff(self.offsets)
        out: dict[str, Any] = {"v": 1, "fingerprint": self.fingerprint, "dim": self.dim,
                               "tokens": self.tokens}
        if not (np.all(lengths == 1) and np.all(self.counts == 1)):
            out["lengths"] = lengths.astype(_min_uint(int(lengths.max(initial=0))))
            out["counts"] = self.counts.astype(_min_uint(int(self.counts.max(initial=0))))
        return out

    @classmethod
    def from_wire(cls, msg: Any) -> TokenHistogram:
        """Parse and validate what :meth:`to_wire` produced (e.g. after crossing a broker)."""
        try:
            if not isinstance(msg, dict) or msg.get("v") != 1:
                raise ValueError("not a version-1 token histogram")
            fp, d, toks = msg["fingerprint"], msg["dim"], msg["tokens"]
            if not isinstance(fp, str) or not isinstance(d, int) or d < 0:
                raise ValueError("bad fingerprint or dim")
            if not isinstance(toks, np.ndarray) or toks.dtype != np.uint64 or toks.ndim != 1:
                raise ValueError("tokens must be a 1-D uint64 array")
            if "lengths" in msg:
                lengths, counts = msg["lengths"], msg["counts"]
                for name, a in (("lengths", lengths), ("counts", counts)):
                    if not isinstance(a, np.ndarray) or a.dtype.kind != "u" or a.ndim != 1:
                        raise ValueError(f"{name} must be a 1-D unsigned integer array")
                if lengths.size != d or counts.size != toks.size:
                    raise ValueError("array sizes do not match dim and token count")
                offsets = np.zeros(d + 1, dtype=np.int64)
                np.cumsum(lengths.astype(np.int64), out=offsets[1:])
                if offsets[-1] != toks.size:
                    raise ValueError("lengths do not add up to the token count")
                counts = counts.astype(np.int64)
                if np.any(counts == 0):
                    raise ValueError("zero counts")
                # per coordinate, tokens strictly increasing
                inc = toks[1:] > toks[:-1]
                boundary = np.zeros(toks.size, dtype=bool)
                boundary[offsets[1:-1][offsets[1:-1] < toks.size]] = True
                if not np.all(inc | boundary[1:]):
                    raise ValueError("tokens within a coordinate are not sorted and distinct")
            else:
                if toks.size != d:
                    raise ValueError("dense form needs one token per coordinate")
                offsets = np.arange(d + 1, dtype=np.int64)
                counts = np.ones(d, dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise HistogramFormatError(f"malformed token histogram: {e}") from None
        return cls(d, offsets, toks, counts, fp)


def _coord_token_order(d: int, coords: np.ndarray, toks: np.ndarray) -> np.ndarray:
    """Order sorting entries by (coordinate, token).

    One stable argsort of a 64-bit key (coordinate in the high bits, the
    token's top bits below) is several times faster than a two-key lexsort,
    since each input histogram is already a sorted run of keys. The key is exact
    when the tokens fit in the bits left; otherwise the result is checked and
    lexsort is used if two tokens of one coordinate shared their top bits.
    """
    cb = (d - 1).bit_length() if d > 1 else 0
    keep = 64 - cb
    tbits = int(toks.max()).bit_length() if toks.size else 0
    shift = max(0, tbits - keep)
    key = toks >> np.uint64(shift)
    if cb:
        key = key | (coords.astype(np.uint64) << np.uint64(keep))
    order = np.argsort(key, kind="stable")  # timsort: inputs are runs already sorted by key
    if shift == 0:
        return order
    c, t = coords[order], toks[order]
    if np.all((c[1:] != c[:-1]) | (t[1:] >= t[:-1])):
        return order
    return np.lexsort((toks, coords))


def aggregate_histograms(hists: Sequence[TokenHistogram]) -> TokenHistogram:
    """Sum histograms coordinate by coordinate. Needs no key: tokens are only compared."""
    if not hists:
        raise HistogramFormatError("nothing to aggregate: got no histograms")
    fps = {h.fingerprint for h in hists}
    if len(fps) != 1:
        raise HyperParameterMismatchError(
            f"histograms come from {len(fps)} different Hash-Comb configurations (fingerprints "
            f"{sorted(fps)}); every owner must use the same key and hyper-parameters")
    dims = {h.dim for h in hists}
    if len(dims) != 1:
        raise HistogramFormatError(f"histograms have different dimensions {sorted(dims)}")
    d = hists[0].dim
    coords = np.concatenate([np.repeat(np.arange(d, dtype=np.int64), np.diff(h.offsets))
                             for h in hists])
    toks = np.concatenate([h.tokens for h in hists])
    counts = np.concatenate([h.counts for h in hists])
    return TokenHistogram._reduce(d, coords, toks, counts, hists[0].fingerprint)


# --------------------------------------------------------------------------- the encoder

def _table_bytes(levels: int) -> int:
    return _BYTES_PER_NODE * 2 ** (levels + 1)


def _check_table(levels: int, max_table_bytes: int) -> None:
    need = _table_bytes(levels)
    if need > max_table_bytes:
        fits = max(0, (max_table_bytes // _BYTES_PER_NODE).bit_length() - 2)
        raise TableTooLargeError(
            f"levels={levels} needs a token table of {2 ** (levels + 1)} nodes "
            f"(~{need / 2**20:.0f} MiB), above the limit of {max_table_bytes / 2**20:.0f} MiB; "
            f"use at most {fits} levels or raise max_table_bytes")


class HashComb:
    """Vectorized Hash-Comb encoder/decoder. Build with ``HashComb(levels, lo, hi, delta, key=...)``
    (keyed tokens) or :meth:`compatible` (the reference library's tokens).

    ``key``: the shared secret, 16..64 bytes. ``context``: optional bytes mixed
    into the token key (e.g. a round number) so tables of different contexts are
    unrelated. The raw key is not stored.
    """

    def __init__(self, levels: int, lo: float, hi: float, delta: float = 0.0, *,
                 key: bytes, p: float | None = None, context: bytes = b"",
                 max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES) -> None:
        self.params = HashCombParams(levels, lo, hi, delta, p)
        if not isinstance(key, (bytes, bytearray)):
            raise ParameterError(f"key must be bytes, got {type(key).__name__}")
        if not _KEY_MIN <= len(key) <= _KEY_MAX:
            raise ParameterError(f"key must be {_KEY_MIN}..{_KEY_MAX} bytes long, got {len(key)}; "
                                 "use 32 random bytes (secrets.token_bytes(32))")
        if not isinstance(context, (bytes, bytearray)):
            raise ParameterError(f"context must be bytes, got {type(context).__name__}")
        _check_table(self.params.levels, max_table_bytes)
        self.mode = "keyed"
        ctx = bytes(context)
        token_key = hashlib.blake2b(
            len(ctx).to_bytes(4, "big") + ctx + self.params.tree_canonical(),
            key=bytes(key), digest_size=32, person=b"hcomb-tokenkey").digest()
        self.fingerprint = hashlib.blake2b(
            len(ctx).to_bytes(4, "big") + ctx + self.params.canonical(),
            key=bytes(key), digest_size=16, person=b"hcomb-fingerpr").hexdigest()
        self._init_geometry()
        self._tokens = self._keyed_table(token_key)
        self._centres = self._a + self._u * self._numerators_of(
            np.arange(self._tokens.size, dtype=np.int64)).astype(np.float64)
        self._finish_table(allow_duplicates=False)

    @classmethod
    def from_params(cls, params: HashCombParams, *, key: bytes, context: bytes = b"",
                    max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES) -> HashComb:
        return cls(**params.as_dict(), key=key, context=context, max_table_bytes=max_table_bytes)

    @classmethod
    def compatible(cls, levels: int, lo: float, hi: float, delta: float | None = 0.0,
                   salt: str | None = None, *, p: float | None = None,
                   max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES) -> HashComb:
        """The reference library's tree and 28-bit tokens for (levels, min, max, delta, salt).

        Equivalent to ``hashcomb.Encoder(levels, hi, lo, delta=delta, salt=salt,
        includeInternal=True)``; tokens are returned as uint64 integers (the
        reference gives them as decimal strings).
        """
        self = cls.__new__(cls)
        self.params = HashCombParams(levels, lo, hi, 0.0 if delta is None else delta, p)
        if self.params.levels > 30:
            raise ParameterError(f"the reference library allows at most 30 levels, got {levels}")
        if salt is not None and not isinstance(salt, str):
            raise ParameterError(f"salt must be a str or None, got {type(salt).__name__}")
        _check_table(self.params.levels, max_table_bytes)
        self.mode = "compatible"
        self._salt = salt
        self.fingerprint = hashlib.blake2b(
            self.params.canonical() + b"|" + ("" if salt is None else "s" + salt).encode(),
            digest_size=16, person=b"hcomb-compat-fp").hexdigest()
        self._init_geometry()
        self._tokens, self._centres, mids = self._reference_tree(salt)
        self._mids = mids
        self._finish_table(allow_duplicates=True)
        return self

    # ----------------------------------------------------------------- construction helpers

    def _init_geometry(self) -> None:
        prm = self.params
        self.levels = prm.levels
        # Same float operations as the reference: min - delta, max + delta.
        self._a = prm.lo - prm.delta
        self._b = prm.hi + prm.delta
        if not (math.isfinite(self._a) and math.isfinite(self._b) and self._b > self._a):
            raise ParameterError("lo - delta and hi + delta must be finite and distinct")
        self._u = (self._b - self._a) / 2.0 ** (self.levels + 1)
        self._inv_w = 2.0 ** self.levels / (self._b - self._a)
        self._mids: list[np.ndarray] | None = None  # compatible mode: reference split points
        self._edges: np.ndarray | None = None  # compatible mode: sorted leaf edges
        self._lookups: dict[int | None, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _keyed_table(self, token_key: bytes) -> np.ndarray:
        # One keyed BLAKE2b per node: ~1 us each, 0.5 ms for L = 8, 2 s for L = 20.
        L = self.levels
        base = hashlib.blake2b(key=token_key, digest_size=8, person=b"hcomb-node")
        chunks = [b"\0" * 16]  # positions 0 and 1 (no level-0 token)
        for k in range(1, L + 1):
            prefix = k.to_bytes(1, "big")
            digests = []
            for i in range(1 << k):
                h = base.copy()
                h.update(prefix + i.to_bytes(8, "big"))
                digests.append(h.digest())
            chunks.append(b"".join(digests))
        return np.frombuffer(b"".join(chunks), dtype=">u8").astype(np.uint64)

    def _reference_tree(self, salt: str | None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        # The reference builds nodes recursively: children of [mn, mx] are
        # [mn, c] and [c, mx] with c = mn + (mx - mn) / 2.0. numpy float64 does
        # the same IEEE operations, so edges, labels and centres match bit for bit.
        L = self.levels
        n = 1 << (L + 1)
        tokens = np.zeros(n, dtype=np.uint64)
        centres = np.zeros(n, dtype=np.float64)
        mins, maxs = np.array([self._a]), np.array([self._b])
        mids: list[np.ndarray] = []
        suffix = "" if salt is None else f"|{salt}"
        for k in range(1, L + 1):
            c = mins + (maxs - mins) / 2.0
            mids.append(c)
            mins, maxs = np.stack([mins, c], 1).ravel(), np.stack([c, maxs], 1).ravel()
            labels = [f"{k}[{mn}  {mx}]{suffix}" for mn, mx in zip(mins.tolist(), maxs.tolist(),
                                                                    strict=True)]
            toks = [int.from_bytes(hashlib.sha3_256(s.encode()).digest()[:8], "big") & 0x0FFFFFFF
                    for s in labels]
            tokens[1 << k:2 << k] = toks
            centres[1 << k:2 << k] = mins + (maxs - mins) / 2.0
        return tokens, centres, mids

    def _finish_table(self, allow_duplicates: bool) -> None:
        L = self.levels
        if self._mids is not None:
            # Leaf edges of the reference tree; if strictly increasing (always, short of
            # degenerate float ranges) a binary search equals the reference's tree walk.
            edges = np.empty((1 << L) - 1)
            for k, c in enumerate(self._mids, start=1):
                edges[((2 * np.arange(c.size) + 1) << (L - k)) - 1] = c
            self._edges = edges if np.all(np.diff(edges) > 0) else None
        sorted_tok, _, dup = self._lookup(None)
        if dup.any() and not allow_duplicates:
            raise TokenCollisionError(
                "two tree nodes got the same 64-bit token under this key (probability about "
                f"2^-{65 - 2 * (L + 1)}); derive a fresh key or context")

    def _lookup(self, level: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted tokens, their heap positions, duplicate flags) for one level or all."""
        if level not in self._lookups:
            lo_pos, hi_pos = (2, 2 << self.levels) if level is None else (1 << level, 2 << level)
            pos = np.arange(lo_pos, hi_pos, dtype=np.int64)
            order = np.argsort(self._tokens[lo_pos:hi_pos], kind="stable")
            st, sp = self._tokens[lo_pos:hi_pos][order], pos[order]
            dup = np.zeros(st.size, dtype=bool)
            same = st[1:] == st[:-1]
            dup[1:] |= same
            dup[:-1] |= same
            self._lookups[level] = (st, sp, dup)
        return self._lookups[level]

    def _numerators_of(self, pos: np.ndarray) -> np.ndarray:
        """Integer m with centre = a + m u, for heap positions (level >= 1)."""
        level = self._levels_of(pos)
        index = pos - (np.int64(1) << level)
        return (2 * index + 1) << (self.levels - level)

    @staticmethod
    def _levels_of(pos: np.ndarray) -> np.ndarray:
        _, e = np.frexp(np.maximum(pos, 1).astype(np.float64))
        return (e - 1).astype(np.int64)

    # ----------------------------------------------------------------- geometry

    @property
    def interval(self) -> tuple[float, float]:
        """The encodable interval [lo - delta, hi + delta]."""
        return self._a, self._b

    def bin_width(self, level: int | None = None) -> float:
        """Width of a bin at ``level`` (default: leaves)."""
        k = self.levels if level is None else self._check_level(level)
        return (self._b - self._a) / 2.0 ** k

    def _check_level(self, level: int) -> int:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) \
                or not 1 <= int(level) <= self.levels:
            raise ParameterError(f"level must be an integer in 1..{self.levels}, got {level!r}")
        return int(level)

    def _prepare(self, x: Any, clip: bool) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        nan = np.isnan(v)
        if nan.any():
            idx = np.flatnonzero(nan)
            raise OutOfRangeError(f"{idx.size} value(s) are NaN (first at flat index "
                                  f"{int(idx[0])}); NaN cannot be encoded", idx)
        if clip:
            return np.clip(v, self._a, self._b)
        bad = (v < self._a) | (v > self._b)
        if bad.any():
            idx = np.flatnonzero(bad)
            ex = ", ".join(f"{v.flat[i]!r} at index {i}" for i in idx[:_MAX_EXAMPLES].tolist())
            raise OutOfRangeError(
                f"{idx.size} of {v.size} value(s) lie outside the encodable interval "
                f"[{self._a}, {self._b}] (e.g. {ex}); pass clip=True to clip them, or use a "
                "wider range or larger delta", idx)
        return v

    def bin_index(self, x: Any, *, clip: bool = False) -> np.ndarray:
        """Leaf bin index (int64, 0..2^L - 1) of each value."""
        v = self._prepare(x, clip)
        L = self.levels
        if self.mode == "keyed":
            i = np.floor((v - self._a) * self._inv_w).astype(np.int64)
            return np.clip(i, 0, (1 << L) - 1, out=i)
        if self._edges is not None:
            return np.searchsorted(self._edges, v, side="right").astype(np.int64)
        i = np.zeros(v.shape, dtype=np.int64)  # fallback: the reference's walk, level by level
        for c in self._mids:
            i = 2 * i + (v >= c[i])
        return i

    # ----------------------------------------------------------------- encoding

    def encode(self, x: Any, *, clip: bool = False) -> np.ndarray:
        """Leaf tokens (uint64), same shape as ``x``."""
        return self._tokens[(np.int64(1) << self.levels) + self.bin_index(x, clip=clip)]

    def encode_level(self, x: Any, level: int, *, clip: bool = False) -> np.ndarray:
        """Tokens of the level-``level`` ancestors of the values' leaves."""
        k = self._check_level(level)
        return self._tokens[(np.int64(1) << k) + (self.bin_index(x, clip=clip) >> (self.levels - k))]

    def encode_prefix(self, x: Any, length: int, *, clip: bool = False) -> np.ndarray:
        """The first ``length`` tokens of each root-to-leaf path: shape x.shape + (length,)."""
        k = self._check_level(length)
        leaf = self.bin_index(x, clip=clip)[..., None]
        lv = np.arange(1, k + 1, dtype=np.int64)
        return self._tokens[(np.int64(1) << lv) + (leaf >> (self.levels - lv))]

    def encode_path(self, x: Any, *, clip: bool = False) -> np.ndarray:
        """Whole paths, levels 1..L: shape x.shape + (L,)."""
        return self.encode_prefix(x, self.levels, clip=clip)

    def encode_randomized(self, x: Any, *, p: float | None = None,
                          rng: np.random.Generator | None = None, clip: bool = False,
                          return_levels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """One token per value at an independent random level (the last-head rule).

        ``p`` defaults to the parameters' selection probability. Levels come from
        the OS CSPRNG unless an explicit numpy Generator is given.
        """
        pp = self.params.p if p is None else p
        if pp is None:
            raise ParameterError("no selection probability: pass p=..., or build the encoder "
                                 "with p (or HashCombParams.with_target_level)")
        leaf = self.bin_index(x, clip=clip)
        lv = sample_levels(leaf.size, self.levels, pp, rng).reshape(leaf.shape).astype(np.int64)
        toks = self._tokens[(np.int64(1) << lv) + (leaf >> (self.levels - lv))]
        return (toks, lv.astype(np.uint8)) if return_levels else toks

    def expected_level(self, p: float | None = None) -> float:
        pp = self.params.p if p is None else p
        if pp is None:
            raise ParameterError("no selection probability set")
        return expected_level(self.levels, pp)

    # ----------------------------------------------------------------- decoding

    def _as_tokens(self, tokens: Any) -> np.ndarray:
        t = np.asarray(tokens)
        if t.dtype == np.uint64:
            return t
        if t.dtype.kind in "iu":
            if t.size and int(t.min()) < 0:
                raise ParameterError("tokens must be non-negative integers")
            return t.astype(np.uint64)
        if t.dtype.kind in "UO":  # the reference library's decimal strings
            try:
                return np.array([int(s) for s in t.ravel().tolist()],
                                dtype=np.uint64).reshape(t.shape)
            except (TypeError, ValueError, OverflowError):
                raise ParameterError("token strings must be decimal integers") from None
        raise ParameterError(f"tokens must be uint64 integers, got dtype {t.dtype}")

    def node_positions(self, tokens: Any, *, level: int | None = None) -> np.ndarray:
        """Heap positions 2^k + i of the tokens' nodes; raise on unknown or ambiguous tokens."""
        t = self._as_tokens(tokens)
        st, sp, dup = self._lookup(None if level is None else self._check_level(level))
        j = np.searchsorted(st, t)
        jc = np.minimum(j, st.size - 1)
        found = st[jc] == t
        if not found.all():
            idx = np.flatnonzero(~found)
            where = "this encoder's table" if level is None else f"level {level} of the table"
            raise UnknownTokenError(
                f"{idx.size} of {t.size} token(s) are not in {where} (e.g. "
                f"{_examples(idx, t.ravel()[idx])}); they were made under a different key, "
                "context or hyper-parameters, or corrupted in transit", idx, t.ravel()[idx])
        if dup[jc].any():
            idx = np.flatnonzero(dup[jc])
            raise AmbiguousTokenError(
                f"{idx.size} token(s) name more than one node of the reference tree (28-bit "
                f"collision, e.g. {_examples(idx, t.ravel()[idx])}); decode with level=... to "
                "disambiguate, or use another salt")
        return sp[jc]

    def levels_of(self, tokens: Any) -> np.ndarray:
        """The level (1..L) of each token's node."""
        return self._levels_of(self.node_positions(tokens)).astype(np.uint8)

    def decode(self, tokens: Any, *, level: int | None = None) -> np.ndarray:
        """Bin centres of the tokens' nodes, each at its own level (leaf, prefix or random).

        ``level`` restricts the lookup to one level (e.g. ``level=L`` accepts only leaves).
        """
        return self._centres[self.node_positions(tokens, level=level)]

    def decode_path(self, paths: Any) -> np.ndarray:
        """Centres of the last node of each path (rows of consecutive tokens from level 1).

        The path is checked: token j must be at level j + 1 and the parent of token j + 1.
        """
        t = self._as_tokens(paths)
        if t.ndim < 1 or t.shape[-1] < 1 or t.shape[-1] > self.levels:
            raise ParameterError(f"paths must have a last axis of length 1..{self.levels}, "
                                 f"got shape {t.shape}")
        pos = self.node_positions(t)
        k = t.shape[-1]
        expect = np.arange(1, k + 1)
        bad_level = np.any(self._levels_of(pos) != expect, axis=-1)
        bad_chain = np.any(pos[..., 1:] >> 1 != pos[..., :-1], axis=-1) if k > 1 else \
            np.zeros(bad_level.shape, dtype=bool)
        bad = np.flatnonzero(bad_level | bad_chain)
        if bad.size:
            raise InconsistentPathError(
                f"{bad.size} path(s) are not root-to-node chains of the tree (first at row "
                f"{int(bad[0])}); send paths exactly as encode_path/encode_prefix produced them")
        return self._centres[pos[..., -1]]

    # ----------------------------------------------------------------- aggregation

    def histogram(self, tokens: np.ndarray) -> TokenHistogram:
        """An owner's histogram of its tokens (one per coordinate, or rows of contributions)."""
        return TokenHistogram.from_tokens(self._as_tokens(tokens), self.fingerprint)

    def _check_hist(self, hist: TokenHistogram) -> None:
        if not isinstance(hist, TokenHistogram):
            raise HistogramFormatError(f"expected a TokenHistogram, got {type(hist).__name__}")
        if hist.fingerprint != self.fingerprint:
            raise HyperParameterMismatchError(
                f"histogram fingerprint {hist.fingerprint!r} is not this encoder's "
                f"({self.fingerprint!r}): it was made under another key, context or "
                "hyper-parameters")
        if np.any(np.diff(hist.offsets) == 0):
            raise HistogramFormatError("some coordinates have no contributions; cannot decode a mean")

    def histogram_sums(self, hist: TokenHistogram) -> tuple[np.ndarray, np.ndarray]:
        """Keyed mode: exact integer sums S_c of centre numerators and counts n_c per coordinate.

        The decoded mean of coordinate c is a + u S_c / n_c, with u = (b - a) / 2^(L+1).
        """
        if self.mode != "keyed":
            raise ParameterError("exact integer sums are defined for keyed mode only "
                                 "(compatible mode uses the reference's float centres)")
        self._check_hist(hist)
        m = self._numerators_of(self.node_positions(hist.tokens)) * hist.counts
        starts = hist.offsets[:-1]
        return np.add.reduceat(m, starts), np.add.reduceat(hist.counts, starts)

    def decode_histogram(self, hist: TokenHistogram) -> np.ndarray:
        """Per-coordinate mean of the contributed bin centres (float64)."""
        if self.mode == "keyed":
            s, n = self.histogram_sums(hist)
            return self._a + self._u * (s / n)
        self._check_hist(hist)
        c = self._centres[self.node_positions(hist.tokens)] * hist.counts
        starts = hist.offsets[:-1]
        return np.add.reduceat(c, starts) / np.add.reduceat(hist.counts, starts)

    # ----------------------------------------------------------------- federated helpers

    def encode_update(self, update: Any, *, clip: bool, randomized: bool = False,
                      rng: np.random.Generator | None = None) -> TokenHistogram:
        """An owner's flat update vector as a histogram ready to send (``to_wire()``).

        ``clip`` is explicit: True clips to the encodable interval, False raises
        on values outside it. ``randomized`` releases each coordinate at a random level.
        """
        v = np.asarray(update)
        if v.ndim != 1:
            raise ParameterError(f"update must be a flat vector, got shape {v.shape}")
        toks = self.encode_randomized(v, rng=rng, clip=clip) if randomized else \
            self.encode(v, clip=clip)
        return self.histogram(toks)

    def decode_update(self, aggregate: TokenHistogram | dict[str, Any]) -> np.ndarray:
        """The aggregate (histogram or its wire dict) back to a float32 mean vector."""
        hist = aggregate if isinstance(aggregate, TokenHistogram) else \
            TokenHistogram.from_wire(aggregate)
        return self.decode_histogram(hist).astype(np.float32)

    def __repr__(self) -> str:
        p = self.params
        return (f"HashComb(mode={self.mode}, levels={p.levels}, lo={p.lo}, hi={p.hi}, "
                f"delta={p.delta}, p={p.p}, fingerprint={self.fingerprint})")
