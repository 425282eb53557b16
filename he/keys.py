"""Key owner's secret keys and the public evaluation context answering parties get.

The querying party (QP) runs `keygen`; it keeps `Keys` (secret key inside) and
sends `keys.public().serialize()` to every answering party (AP). A public
context holds the public key (to re-randomize/flood outputs), relinearization
keys (for the degree-2 activations) and Galois keys for exactly the rotation
steps that single-query packing needs: never the secret key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgpack
from tenseal import sealapi as seal

from he import params as P
from he import seal_io
from he.errors import HEError, MissingKeyError, SerializationError
from mpc import randomness

if TYPE_CHECKING:
    from he.plan import Plan

_VERSION = 1


def galois_elt(step: int, poly_degree: int) -> int:
    """SEAL's Galois element for a left rotation of the CKKS slot vector by `step`."""
    return pow(3, step % (poly_degree // 2), 2 * poly_degree)


class PublicContext:
    """What an answering party holds: enough to evaluate, nothing to decrypt."""

    def __init__(self, key_id: bytes, params: P.Params, ctx: seal.SEALContext,
                 public_key: seal.PublicKey, relin_keys: seal.RelinKeys | None,
                 galois_keys: seal.GaloisKeys | None, galois_steps: Iterable[int]) -> None:
        self.key_id = key_id
        self.params = params
        self.seal = ctx
        self.public_key = public_key
        self.relin_keys = relin_keys
        self.galois_keys = galois_keys
        self.galois_steps = frozenset(int(s) for s in galois_steps) if galois_keys else frozenset()
        self.evaluator = seal.Evaluator(ctx)
        self.encoder = seal.CKKSEncoder(ctx)
        self.encryptor = seal.Encryptor(ctx, public_key)

    @property
    def is_private(self) -> bool:
        return False

    # -- checks used by the evaluator ------------------------------------------------
    def require_relin(self) -> seal.RelinKeys:
        if self.relin_keys is None:
            raise MissingKeyError("the public context has no relinearization keys, needed by "
                                  "activation layers; the key owner must send keys.public() "
                                  "with relin=True")
        return self.relin_keys

    def require_rotations(self, steps: Iterable[int]) -> seal.GaloisKeys:
        missing = sorted(set(steps) - self.galois_steps)
        if missing:
            raise MissingKeyError(
                f"the public context lacks Galois keys for rotation steps {missing}, needed by "
                "single-query packing of this plan; the key owner must run he.keygen with this "
                "plan (or he.keygen(depth=...) for all power-of-two steps), or send batch-packed "
                "queries instead")
        return self.galois_keys

    # -- serialization -----------------------------------------------------------------
    def _fields(self) -> dict:
        return {
            "v": _VERSION, "key_id": self.key_id, "params": self.params.to_dict(),
            "pk": seal_io.to_bytes(self.public_key),
            "rk": seal_io.to_bytes(self.relin_keys) if self.relin_keys is not None else None,
            "gk": seal_io.to_bytes(self.galois_keys) if self.galois_keys is not None else None,
            "steps": sorted(self.galois_steps),
        }

    def serialize(self) -> bytes:
        return msgpack.packb({"kind": "he-public", **self._fields()}, use_bin_type=True)

    def sizes(self) -> dict[str, int]:
        """Serialized bytes of each key kind (for reports)."""
        f = self._fields()
        return {k: len(f[k] or b"") for k in ("pk", "rk", "gk")}

    @classmethod
    def load(cls, data: bytes) -> PublicContext:
        d = _unpack(data, "he-public")
        return cls(*_load_common(d))


class Keys(PublicContext):
    """The key owner's side: everything in the public context plus the secret key."""

    def __init__(self, key_id: bytes, params: P.Params, ctx: seal.SEALContext,
                 public_key: seal.PublicKey, relin_keys: seal.RelinKeys | None,
                 galois_keys: seal.GaloisKeys | None, galois_steps: Iterable[int],
                 secret_key: seal.SecretKey) -> None:
        super().__init__(key_id, params, ctx, public_key, relin_keys, galois_keys, galois_steps)
        self.secret_key = secret_key
        self.decryptor = seal.Decryptor(ctx, secret_key)
        # Symmetric encryption lets SEAL send a seed instead of half the ciphertext.
        self.sym_encryptor = seal.Encryptor(ctx, public_key, secret_key)

    @property
    def is_private(self) -> bool:
        return True

    def public(self, *, galois: bool = True, relin: bool = True) -> PublicContext:
        """The context to hand to answering parties (no secret key)."""
        return PublicContext(self.key_id, self.params, self.seal, self.public_key,
                             self.relin_keys if relin else None,
                             self.galois_keys if galois else None,
                             self.galois_steps if galois else ())

    def serialize(self) -> bytes:
        """Secret context (keep it private: it decrypts everything)."""
        return msgpack.packb({"kind": "he-secret", **self._fields(),
                              "sk": seal_io.to_bytes(self.secret_key)}, use_bin_type=True)

    @classmethod
    def load(cls, data: bytes) -> Keys:
        d = _unpack(data, "he-secret")
        common = _load_common(d)
        sk = seal_io.load_into(seal.SecretKey(), d["sk"], common[2])
        return cls(*common, sk)


def _unpack(data: bytes, kind: str) -> dict:
    try:
        d = msgpack.unpackb(bytes(data), raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise SerializationError(f"not a serialized he context: {e}") from None
    if not isinstance(d, dict) or d.get("kind") != kind or d.get("v") != _VERSION:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise SerializationError(f"expected a serialized {kind} (version {_VERSION}), got {got!r}")
    return d


def _load_common(d: dict) -> tuple:
    params = P.Params.from_dict(d["params"])
    ctx = params.seal_context()
    pk = seal_io.load_into(seal.PublicKey(), d["pk"], ctx)
    rk = seal_io.load_into(seal.RelinKeys(), d["rk"], ctx) if d["rk"] is not None else None
    gk = seal_io.load_into(seal.GaloisKeys(), d["gk"], ctx) if d["gk"] is not None else None
    return bytes(d["key_id"]), params, ctx, pk, rk, gk, d["steps"]


def keygen(plans: Plan | Iterable[Plan] | None = None, *, depth: int | None = None,
           single_query: bool = True) -> Keys:
    """Generate the querying party's CKKS keys.

    plans: one plan or several (answering parties with different models can share
        one key). The depth is the maximum over plans and `depth`; Galois keys are
        the union of the rotation steps the plans need in single-query packing.
    depth: key for any plan up to this depth. Without plans, Galois keys are made
        for every power-of-two step, which covers any plan that fits the slots.
    single_query: False makes no Galois keys at all (batch packing needs none).
    """
    if hasattr(plans, "rotation_steps_for"):   # one plan (duck-typed: plan imports keys)
        plans = [plans]
    plans = list(plans or [])
    if not plans and depth is None:
        raise HEError("keygen needs a plan, a list of plans or depth=...")
    need = max([p.depth for p in plans] + [depth or 0])
    min_slots = max([p.single_slots for p in plans] + [1]) if single_query else 1
    params = P.choose(need, min_slots)
    if single_query:
        if plans and depth is None:
            steps = set().union(*(p.rotation_steps_for(params.slots) for p in plans))
        else:
            steps = {1 << k for k in range(params.slots.bit_length() - 1)}
    else:
        steps = set()

    ctx = params.seal_context()
    kg = seal.KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = seal.PublicKey()
    kg.create_public_key(pk)
    rk = seal.RelinKeys()
    kg.create_relin_keys(rk)
    gk = None
    if steps:
        gk = seal.GaloisKeys()
        kg.create_galois_keys(sorted({galois_elt(s, params.poly_degree) for s in steps}), gk)
    return Keys(randomness.token_bytes(16), params, ctx, pk, rk, gk, steps, sk)
