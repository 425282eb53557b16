"""Encrypted queries and encrypted (masked) outputs, and their wire format.

Two packings (chosen by `encrypt`, packing="auto"):
- "batch": feature-major. Ciphertext i holds feature i of every query in the
  batch, one query per slot (up to N/2 queries). Linear layers are then
  scalar-times-ciphertext sums: no rotations, no Galois keys.
- "single": one query per ciphertext, the flattened input zero-padded to a power
  of two n_p and written into all N/2 slots as shifted copies (he/single.py).
  The copies let the evaluator compute dense layers without masking and with
  few plaintext products (evaluate.py). The layout does not depend on the
  answering party's model, so one ciphertext can be sent to several answering
  parties with different architectures.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import torch
from tenseal import sealapi as seal

from he import seal_io, share, single
from he.errors import ContextMismatchError, HEError, SerializationError, ShapeError
from he.keys import Keys, PublicContext
from he.layers import pow2

_VERSION = 3  # 2: shifted-copies single-query layout; 3: masked outputs say so
PACKINGS = ("batch", "single")


class EncryptedBatch:
    """An encrypted batch of queries [batch, *shape] under one key."""

    def __init__(self, context: PublicContext, packing: str, shape: tuple[int, ...], batch: int,
                 ciphertexts: list[seal.Ciphertext]) -> None:
        self.context = context
        self.key_id = context.key_id
        self.packing = packing
        self.shape = tuple(shape)
        self.batch = batch
        self.ciphertexts = ciphertexts
        self._wire: list[bytes] | None = None  # seeded bytes kept from encryption

    def serialize(self) -> bytes:
        cts = self._wire if self._wire is not None else [seal_io.to_bytes(c) for c in self.ciphertexts]
        return msgpack.packb({"v": _VERSION, "kind": "he-batch", "key_id": self.key_id,
                              "packing": self.packing, "shape": list(self.shape),
                              "batch": self.batch, "cts": cts}, use_bin_type=True)

    @classmethod
    def load(cls, context: PublicContext, data: bytes) -> EncryptedBatch:
        d = _unpack(data, "he-batch", context)
        if d["packing"] not in PACKINGS:
            raise SerializationError(f"unknown packing {d['packing']!r}")
        cts = [seal_io.load_into(seal.Ciphertext(), c, context.seal) for c in d["cts"]]
        shape = tuple(int(s) for s in d["shape"])
        batch = int(d["batch"])
        expected = int(np.prod(shape)) if d["packing"] == "batch" else 1
        if len(cts) != expected or not 1 <= batch <= context.params.slots:
            raise SerializationError(f"encrypted batch holds {len(cts)} ciphertexts for "
                                     f"{batch} queries of shape {shape}: inconsistent")
        return cls(context, d["packing"], shape, batch, cts)


class EncryptedOutput:
    """What the answering party returns: Enc(f(x)), masked (see he/mask.py) or not."""

    def __init__(self, context: PublicContext, packing: str, batch: int, n_out: int,
                 ciphertexts: list[seal.Ciphertext], masked: bool = True) -> None:
        self.context = context
        self.masked = masked
        self.key_id = context.key_id
        self.packing = packing
        self.batch = batch
        self.n_out = n_out
        self.ciphertexts = ciphertexts

    def serialize(self) -> bytes:
        return msgpack.packb({"v": _VERSION, "kind": "he-output", "key_id": self.key_id,
                              "packing": self.packing, "batch": self.batch, "n_out": self.n_out,
                              "masked": self.masked, "cts": [seal_io.to_bytes(c) for c in self.ciphertexts]},
                             use_bin_type=True)

    @classmethod
    def load(cls, context: PublicContext, data: bytes) -> EncryptedOutput:
        d = _unpack(data, "he-output", context)
        cts = [seal_io.load_into(seal.Ciphertext(), c, context.seal) for c in d["cts"]]
        expected = int(d["n_out"]) if d["packing"] == "batch" else 1
        if d["packing"] not in PACKINGS or len(cts) != expected:
            raise SerializationError("encrypted output is inconsistent (packing/ciphertext count)")
        return cls(context, d["packing"], int(d["batch"]), int(d["n_out"]), cts,
                   masked=bool(d.get("masked", True)))


def _unpack(data: bytes, kind: str, context: PublicContext) -> dict:
    if not isinstance(context, PublicContext):
        raise HEError(f"load needs the public context (he.PublicContext), got {type(context).__name__}")
    try:
        d = msgpack.unpackb(bytes(data), raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise SerializationError(f"not a serialized {kind}: {e}") from None
    if not isinstance(d, dict) or d.get("kind") != kind or d.get("v") != _VERSION:
        raise SerializationError(f"expected a serialized {kind} (version {_VERSION})")
    if bytes(d["key_id"]) != context.key_id:
        raise ContextMismatchError(f"this {kind} was encrypted under another key than the given "
                                   "context's; load it with the public context that came with it")
    return d


def encrypt(keys: PublicContext, x: torch.Tensor, packing: str = "auto") -> EncryptedBatch:
    """Encrypt x [batch, *input_shape]. auto: single-query packing for one query when
    the context has Galois keys, batch packing otherwise."""
    if not isinstance(keys, PublicContext):
        raise HEError(f"encrypt needs he.Keys or a public context, got {type(keys).__name__}")
    x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[0] < 1:
        raise ShapeError(f"x must be [batch, *input_shape] with batch >= 1, got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0)")
    a = x.detach().cpu().to(torch.float64).reshape(x.shape[0], -1).numpy()
    if not np.isfinite(a).all():
        raise ShapeError("x contains NaN or infinite values")
    batch, n = a.shape
    slots = keys.params.slots
    if packing == "auto":
        packing = "single" if batch == 1 and keys.galois_keys is not None and pow2(n) <= slots else "batch"
    if packing not in PACKINGS:
        raise HEError(f"packing must be 'auto', 'batch' or 'single', got {packing!r}")
    if packing == "batch" and batch > slots:
        raise ShapeError(f"a batch holds at most {slots} queries under these keys (N/2 slots), got "
                         f"{batch}; split the queries into batches of {slots}")
    if packing == "single":
        if batch != 1:
            raise ShapeError(f"single-query packing encrypts one query, got a batch of {batch}")
        if pow2(n) > slots:
            raise ShapeError(f"input of {n} features needs {pow2(n)} slots; these keys have {slots}")
    rows = [a[:, i] for i in range(n)] if packing == "batch" else [single.layout(a[0], slots)]
    enc = EncryptedBatch(keys, packing, tuple(x.shape[1:]), batch, [])
    wire = []
    for row in rows:
        pt = seal.Plaintext()
        keys.encoder.encode(row.tolist(), keys.params.scale, pt)
        if isinstance(keys, Keys):
            # Seeded symmetric ciphertext: half the bytes on the wire.
            wire.append(seal_io.to_bytes(keys.sym_encryptor.encrypt_symmetric(pt)))
            ct = seal_io.load_into(seal.Ciphertext(), wire[-1], keys.seal)
        else:
            ct = seal.Ciphertext()
            keys.encryptor.encrypt(pt, ct)
        enc.ciphertexts.append(ct)
    enc._wire = wire or None
    return enc


def _check_output(keys: Keys, out: EncryptedOutput) -> None:
    if not isinstance(keys, Keys):
        raise HEError("decrypting needs the secret keys (he.Keys from he.keygen), not a public context")
    if not isinstance(out, EncryptedOutput):
        raise HEError(f"decrypting takes an EncryptedOutput, got {type(out).__name__}")
    if out.key_id != keys.key_id:
        raise ContextMismatchError("this output was encrypted under another key; decrypt it with "
                                   "the keys whose public context the evaluator used")


def _slots(out: EncryptedOutput) -> tuple[np.ndarray, bool]:
    """Slots that hold results, and whether the result is [slot, ciphertext] (batch)."""
    if out.packing == "batch":
        return np.arange(out.batch), True
    return np.arange(out.n_out), False


def decrypt(keys: Keys, out: EncryptedOutput) -> torch.Tensor:
    """Decrypt an unmasked output (evaluate(mask=False)): float64 [batch, classes] = f(x)."""
    _check_output(keys, out)
    if out.masked:
        raise HEError("this output is masked: its decryption is uniformly random on its own. "
                      "he.decrypt_share(keys, out) gives your share of f(x); the evaluator "
                      "holds the other")
    vals = []
    for ct in out.ciphertexts:
        pt = seal.Plaintext()
        keys.decryptor.decrypt(ct, pt)
        vals.append(np.asarray(keys.encoder.decode_double(pt)))
    slots, batch = _slots(out)
    res = np.stack([v[slots] for v in vals], axis=1) if batch else vals[0][slots][None, :]
    return torch.from_numpy(res)


def decrypt_share(keys: Keys, out: EncryptedOutput) -> np.ndarray:
    """The key owner's additive share of f(x): uint64 [batch, classes] in Z_2^64, fixed point
    at mpc.encoding.PRECISION_BITS; it adds up with the evaluator's share (he/share.py)."""
    _check_output(keys, out)
    residues = []
    for ct in out.ciphertexts:
        pt = seal.Plaintext()
        keys.decryptor.decrypt(ct, pt)
        residues.append(share.plaintext_residues(keys, pt))
    moduli = share.primes(keys.seal, out.ciphertexts[0].parms_id())
    coeffs = share.to_integers(np.stack(residues, axis=1), moduli)
    slots, batch = _slots(out)
    mine = share.slot_shares(coeffs, math.prod(moduli), out.ciphertexts[0].scale, slots)
    return np.ascontiguousarray(mine.T if batch else mine)


def reveal(keys: Keys, out: EncryptedOutput, evaluator_share: np.ndarray | None) -> torch.Tensor:
    """f(x) for whoever holds both shares (tests, benchmarks, a model owner querying its own
    model): float64 [batch, classes]. An unmasked output (share None) is just decrypted."""
    if evaluator_share is None:
        return decrypt(keys, out)
    return torch.from_numpy(share.open_shares(decrypt_share(keys, out), evaluator_share))
