"""Envelopes: what a party actually publishes to the broker.

An envelope is the wire encoding (msgpack, :mod:`mpc.wire`) of the list
``[header_bytes, nonce, ciphertext, signature]``:

- ``header_bytes``: the canonical encoding of the header list ``[version,
  deployment, session, protocol, step, kind, sender, recipient, seq, time]``.
  The broker can read it (it needs no secret to route), nobody can change it.
- ``nonce`` (12 random bytes) and ``ciphertext``: ChaCha20-Poly1305 of the
  payload with ``header_bytes`` as associated data, under a directional key
  ``HKDF-SHA256(X25519(e_s, e_r) || X25519(sender, recipient), salt=session,
  info=deployment, sender, recipient, E_s, E_r)``, where e/E are ephemeral
  X25519 keys each party makes when its channel opens and announces, signed by
  its identity key, in its presence message. A fresh key per run of a session
  and per direction: a recorded run stays closed when identity keys leak later
  (forward secrecy), and envelopes of an earlier run under the same session id
  do not decrypt in a later one (they cannot be replayed into it).
- ``signature``: the sender's Ed25519 signature over ``"confidant/envelope/v1\\0"
  || header_bytes || SHA-256(nonce || ciphertext)``. Signing the body's
  *digest* rather than the body lets a transcript keep only the digest and
  still let an auditor check, with the sender's public key, that the sender
  really sent what a recipient recorded.

The broker is untrusted: it may read headers, drop, delay or replay. Replays
are caught by the per-sender sequence window, tampering by the signature and
the AEAD tag. :meth:`Sealer.open` raises :class:`EnvelopeError` and nothing
else for any input bytes whatsoever.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import astuple, dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpc import randomness, wire

from .identity import Deployment, DeploymentError, PrivateKeys


def introduce(*sealers: Sealer) -> None:
    """Let sealers of one process meet each other (tests, in-process simulations)."""
    for a in sealers:
        for b in sealers:
            if a is not b:
                a.meet(b.me, b.ephemeral_pub)

VERSION = 1
KINDS = ("msg", "bye")
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_SIG_DOMAIN = b"confidant/envelope/v1\x00"
_KDF_DOMAIN = b"confidant/envelope-key/v1\x00"
_MAX_SEQ = 2**63 - 1

# Every reason an envelope can be refused, for logs and transcripts.
REASONS = ("oversize", "malformed", "version", "deployment", "session", "recipient",
           "unknown-sender", "signature", "unannounced", "decrypt", "duplicate", "out-of-window")


class EnvelopeError(ValueError):
    """An envelope that was refused. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class DuplicateEnvelope(EnvelopeError):
    """The same (sender, session, seq) arrived before: QoS 1 redelivery or a
    replay. The caller drops it quietly."""

    def __init__(self, detail: str):
        super().__init__("duplicate", detail)


@dataclass(frozen=True)
class Header:
    version: int
    deployment: str
    session: str
    protocol: str
    step: str
    kind: str
    sender: str
    recipient: str
    seq: int
    time: float

    def to_bytes(self) -> bytes:
        """The canonical encoding the signature and the AEAD cover."""
        return wire.encode(list(astuple(self)))

    def as_dict(self) -> dict:
        return dict(zip(_FIELDS, astuple(self), strict=True))

    @classmethod
    def from_dict(cls, d: dict) -> Header:
        """Rebuild from :meth:`as_dict` output; raises ValueError if malformed."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            raise ValueError(f"header must have exactly the fields {_FIELDS}")
        return cls._checked([d[f] for f in _FIELDS])

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse and type-check; raises ValueError (or WireError) if malformed."""
        return cls._checked(wire.decode(data))

    @classmethod
    def _checked(cls, items: object) -> Header:
        if not isinstance(items, list) or len(items) != len(_FIELDS):
            raise ValueError(f"header must be a list of {len(_FIELDS)} fields")
        version, dep, session, proto, step, kind, sender, recipient, seq, t = items
        if type(version) is not int or type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
            raise ValueError("header version and seq must be non-negative integers")
        if not all(isinstance(s, str) for s in (dep, session, proto, step, kind, sender, recipient)):
            raise ValueError("header text fields must be strings")
        if type(t) is not float:
            raise ValueError("header time must be a float")
        return cls(version, dep, session, proto, step, kind, sender, recipient, seq, t)


_FIELDS = tuple(Header.__dataclass_fields__)


@dataclass(frozen=True)
class Sealed:
    data: bytes          # what goes on the wire
    header: Header
    digest: str          # SHA-256 hex of nonce || ciphertext
    signature: bytes
    size: int


@dataclass(frozen=True)
class Opened:
    header: Header
    payload: bytes
    digest: str
    signature: bytes
    size: int


def body_digest(nonce: bytes, ciphertext: bytes) -> str:
    return hashlib.sha256(nonce + ciphertext).hexdigest()


def signed_message(header_bytes: bytes, digest: str) -> bytes:
    """The exact bytes the sender signs."""
    return _SIG_DOMAIN + header_bytes + bytes.fromhex(digest)


def verify_signature(header: Header, digest: str, signature: bytes, sign_pub: bytes) -> bool:
    """Check a recorded (header, digest, signature) against a sender's public key,
    as the auditor does. Never raises on bad input."""
    try:
        Ed25519PublicKey.from_public_bytes(sign_pub).verify(
            signature, signed_message(header.to_bytes(), digest))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _pair_key(fresh: bytes, static: bytes, deployment: str, session: str, sender: str,
              recipient: str, sender_eph: bytes, recipient_eph: bytes) -> ChaCha20Poly1305:
    info = (_KDF_DOMAIN + f"{deployment}\x00{sender}\x00{recipient}\x00".encode()
            + sender_eph + recipient_eph)
    key = HKDF(hashes.SHA256(), 32, salt=session.encode("utf-8"), info=info).derive(fresh + static)
    return ChaCha20Poly1305(key)


def new_ephemeral() -> X25519PrivateKey:
    """A party's ephemeral key for one run of a session (OS randomness, mpc.randomness)."""
    return X25519PrivateKey.from_private_bytes(randomness.token_bytes(32))


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class Sealer:
    """Seals and opens the envelopes of one party in one session."""

    def __init__(self, deployment: Deployment, keys: PrivateKeys, session: str,
                 window: int = 4096):
        if not isinstance(session, str) or not session:
            raise ValueError("session id must be a non-empty string")
        if window < 1:
            raise ValueError("replay window must be at least 1")
        deployment.check_keys(keys)
        self.deployment, self.keys, self.session, self.window = deployment, keys, session, window
        self.me = keys.name
        self._verifiers = {n: Ed25519PublicKey.from_public_bytes(p.sign_pub)
                           for n, p in deployment.parties.items()}
        self._ephemeral = new_ephemeral()
        self.ephemeral_pub = raw_public(self._ephemeral)
        self._peer_eph: dict[str, bytes] = {}
        self._send_keys: dict[str, ChaCha20Poly1305] = {}
        self._recv_keys: dict[str, ChaCha20Poly1305] = {}
        self.meet(self.me, self.ephemeral_pub)
        self._next_seq: dict[str, int] = {}
        self._highest: dict[str, int] = {}
        self._seen: dict[str, set[int]] = {}

    def meet(self, peer: str, ephemeral_pub: bytes) -> bool:
        """Take ``peer``'s ephemeral public key for this run (from its presence message,
        whose identity signature the caller checked) and derive the pair's keys.
        Returns False if it was already known."""
        info = self.deployment.parties.get(peer)
        if info is None:
            raise DeploymentError(f"{peer!r} is not a party of deployment {self.deployment.name!r}")
        if self._peer_eph.get(peer) == ephemeral_pub:
            return False
        try:
            theirs = X25519PublicKey.from_public_bytes(bytes(ephemeral_pub))
            fresh = self._ephemeral.exchange(theirs)
            static = self.keys.box_key.exchange(X25519PublicKey.from_public_bytes(info.box_pub))
        except ValueError:  # a low-order point: a broken or hostile key
            raise DeploymentError(f"party {peer!r} announced an unusable key in deployment "
                                  f"{self.deployment.name!r}") from None
        dep, mine = self.deployment.name, self.ephemeral_pub
        self._send_keys[peer] = _pair_key(fresh, static, dep, self.session, self.me, peer,
                                          mine, bytes(ephemeral_pub))
        self._recv_keys[peer] = _pair_key(fresh, static, dep, self.session, peer, self.me,
                                          bytes(ephemeral_pub), mine)
        self._peer_eph[peer] = bytes(ephemeral_pub)
        return True

    def knows(self, peer: str) -> bool:
        return peer in self._send_keys

    def seal(self, recipient: str, protocol: str, step: str, payload: bytes,
             kind: str = "msg") -> Sealed:
        if recipient not in self.deployment.parties:
            raise DeploymentError(f"cannot send to {recipient!r}: not a party of deployment "
                                  f"{self.deployment.name!r}")
        if recipient not in self._send_keys:
            raise EnvelopeError("unannounced", f"no session key for {recipient!r} yet: it has "
                                "not announced itself in this session")
        if kind not in KINDS:
            raise ValueError(f"envelope kind must be one of {KINDS}, got {kind!r}")
        if not protocol or not step or not isinstance(protocol, str) or not isinstance(step, str):
            raise ValueError("protocol and step must be non-empty strings")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes (encode it with mpc.wire), got "
                            f"{type(payload).__name__}")
        seq = self._next_seq.get(recipient, 0)
        header = Header(VERSION, self.deployment.name, self.session, protocol, step, kind,
                        self.me, recipient, seq, time.time())
        header_bytes = header.to_bytes()
        nonce = randomness.token_bytes(NONCE_BYTES)
        ciphertext = self._send_keys[recipient].encrypt(nonce, bytes(payload), header_bytes)
        digest = body_digest(nonce, ciphertext)
        signature = self.keys.sign_key.sign(signed_message(header_bytes, digest))
        data = wire.encode([header_bytes, nonce, ciphertext, signature])
        if len(data) > self.deployment.max_message_bytes:
            raise EnvelopeError("oversize", f"a {len(data)}-byte envelope to {recipient!r} "
                                f"exceeds max_message_bytes = {self.deployment.max_message_bytes}"
                                "; send smaller pieces or raise the limit in the deployment file")
        self._next_seq[recipient] = seq + 1
        return Sealed(data, header, digest, signature, len(data))

    def open(self, data: bytes) -> Opened:
        try:
            return self._open(data)
        except EnvelopeError:
            raise
        except Exception as e:  # belt and braces: open() raises nothing else, ever
            raise EnvelopeError("malformed", f"{type(e).__name__}: {e}") from None

    def _open(self, data: bytes) -> Opened:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise EnvelopeError("malformed", f"expected bytes, got {type(data).__name__}")
        limit = self.deployment.max_message_bytes
        if len(data) > limit:
            raise EnvelopeError("oversize", f"{len(data)} bytes exceeds max_message_bytes = {limit}")
        header_bytes, nonce, ciphertext, signature = _split(bytes(data))
        try:
            header = Header.from_bytes(header_bytes)
        except ValueError as e:
            raise EnvelopeError("malformed", f"bad header: {e}") from None
        if header.to_bytes() != header_bytes:
            raise EnvelopeError("malformed", "header is not canonically encoded")
        if header.version != VERSION:
            raise EnvelopeError("version", f"version {header.version}, this party speaks {VERSION}")
        if header.kind not in KINDS:
            raise EnvelopeError("malformed", f"unknown envelope kind {header.kind!r}")
        if header.deployment != self.deployment.name:
            raise EnvelopeError("deployment", f"for deployment {header.deployment!r}, "
                                f"this is {self.deployment.name!r}")
        if header.session != self.session:
            raise EnvelopeError("session", f"for session {header.session!r}, this is {self.session!r}")
        if header.recipient != self.me:
            raise EnvelopeError("recipient", f"addressed to {header.recipient!r}, this is {self.me!r}")
        verifier = self._verifiers.get(header.sender)
        if verifier is None:
            raise EnvelopeError("unknown-sender", f"sender {header.sender!r} is not a party of "
                                f"deployment {self.deployment.name!r}")
        digest = body_digest(nonce, ciphertext)
        try:
            verifier.verify(signature, signed_message(header_bytes, digest))
        except InvalidSignature:
            raise EnvelopeError("signature", f"bad signature on a message claiming to be from "
                                f"{header.sender!r}") from None
        # Replay checks come after the signature so forged seqs cannot poison the window.
        sender, seq = header.sender, header.seq
        highest = self._highest.get(sender, -1)
        if seq + self.window <= highest:
            raise EnvelopeError("out-of-window", f"seq {seq} from {sender!r} is older than the "
                                f"replay window ({self.window} behind {highest})")
        if seq in self._seen.get(sender, ()):
            raise DuplicateEnvelope(f"seq {seq} from {sender!r} in session {self.session!r} "
                                    "was already received")
        if sender not in self._recv_keys:
            raise EnvelopeError("unannounced", f"no session key from {sender!r} yet (its "
                                "announcement has not arrived)")
        try:
            payload = self._recv_keys[sender].decrypt(nonce, ciphertext, header_bytes)
        except InvalidTag:
            raise EnvelopeError("decrypt", f"message from {sender!r} failed authentication "
                                "(encrypted for another key, or in another run of this "
                                "session)") from None
        self._remember(sender, seq)
        return Opened(header, payload, digest, signature, len(data))

    def _remember(self, sender: str, seq: int) -> None:
        seen = self._seen.setdefault(sender, set())
        seen.add(seq)
        highest = max(seq, self._highest.get(sender, -1))
        self._highest[sender] = highest
        if len(seen) > 2 * self.window:  # forget what the window already refuses
            self._seen[sender] = {s for s in seen if s + self.window > highest}

    @staticmethod
    def peek_header(data: bytes) -> Header | None:
        """Best-effort header of possibly bad bytes, unverified: for logging only."""
        try:
            return Header.from_bytes(_split(bytes(data))[0])
        except Exception:
            return None


def _split(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    try:
        items = wire.decode(data)
    except wire.WireError as e:
        raise EnvelopeError("malformed", f"not an envelope ({e})") from None
    if (not isinstance(items, list) or len(items) != 4
            or not all(isinstance(x, bytes) for x in items)):
        raise EnvelopeError("malformed", "an envelope is a list of 4 byte strings")
    header_bytes, nonce, ciphertext, signature = items
    if len(nonce) != NONCE_BYTES or len(signature) != SIGNATURE_BYTES:
        raise EnvelopeError("malformed", "wrong nonce or signature length")
    return header_bytes, nonce, ciphertext, signature
