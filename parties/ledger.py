"""The privacy guardian's budget ledger: an append-only, crash-safe record of
every PATE query it was asked to answer.

File format: one JSON object per line.  Line 0 is a header (budget, delta,
conversion, the orders grid, authentication mode); every later line is a
``charge`` (a query granted, written *before* the answer is released), a
``settle`` (whether a Confident-GNMax query actually answered) or a
``refused`` (a query turned away, kept for the audit trail).  Each line
carries ``prev``, the digest of the line before, and ``hash``, the SHA-256
(or, with a key, HMAC-SHA256) of ``prev`` and its own canonical body: a hash
chain.  With a ``signer`` (the guardian's Ed25519 identity key; the header
names its public key) every line also carries ``sig``, the signature over the
line without it, so anyone holding the deployment can check every entry
(:func:`verify`) and nobody without the key can rewrite one.  Every line is
written with one ``write`` to an ``O_APPEND`` file and fsynced before the call
returns.  A small side file ``<ledger>.head`` holds
the last sequence number and digest, so that cutting whole lines off the end
is noticed too.  A writer who cuts lines *and* rewrites the head is caught by
the guardian's transcript, which records the ledger's head (seq, hash) at the
end of every session under the party's signed seal: the guardian checks it when
it opens the ledger, and ``confidant audit`` checks it for every run.

The policy (what is charged, what is refused) is :class:`privacy.budget.PrivacyBudget`;
this module only makes each of its entries durable before the decision is used.

Loading replays the chain into a fresh accountant.  Any damage (unparsable
line, broken chain, edited entry, missing or disagreeing head file, partial
last line) raises :class:`LedgerCorrupted` or its subclass
:class:`LedgerTruncated`; a ledger is never silently reset, and
:meth:`BudgetLedger.create` refuses to overwrite one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from numpy.typing import ArrayLike

from privacy.budget import BadEntry, BudgetError, Decision, PrivacyBudget
from privacy.pate import DEFAULT_ORDERS, Conversion

__all__ = ["BudgetLedger", "Decision", "LedgerCorrupted", "LedgerError", "LedgerExists",
           "LedgerLocked", "LedgerNotFound", "LedgerTruncated", "LedgerUsageError", "verify"]

FORMAT_VERSION = 1
_GENESIS = "0" * 64
_SIG_DOMAIN = b"confidant/ledger-line/v1\x00"


class LedgerError(Exception):
    """Base class of budget-ledger errors."""


class LedgerCorrupted(LedgerError):
    """The ledger file or its head file is damaged or was edited."""


class LedgerTruncated(LedgerCorrupted):
    """Entries are missing from the end of the ledger."""


class LedgerNotFound(LedgerError):
    """No ledger at the given path."""


class LedgerExists(LedgerError):
    """create() was asked to start a ledger where one already exists."""


class LedgerLocked(LedgerError):
    """Another process (or handle) has the ledger open."""


class LedgerUsageError(LedgerError, BudgetError):
    """The ledger was asked to do something invalid (e.g. settle twice)."""


def head_path(path: str | os.PathLike[str]) -> Path:
    """Where the head file of the ledger at ``path`` lives."""
    return Path(f"{os.fspath(path)}.head")


class BudgetLedger(PrivacyBudget):
    """A :class:`PrivacyBudget` whose every entry is on disk before it takes effect.

    Open with :meth:`create` or :meth:`open`; use as a context manager.
    """

    def __init__(self, *, _path: Path, _fd: int, _key: bytes | None,
                 _signer: Ed25519PrivateKey | None, _header: dict[str, Any],
                 _last_hash: str) -> None:
        super().__init__(float(_header["epsilon_budget"]), float(_header["delta"]),
                         _header["conversion"], _header["orders"])
        self.path = _path
        self._fd: int | None = _fd
        self._key = _key
        self._signer = _signer
        self._last_hash = _last_hash
        self._digests: list[str] = []  # every entry's hash, by seq (filled by open)

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry: what the guardian's transcript records."""
        return self._last_seq, self._last_hash

    def check_head(self, seq: int, digest: str, where: str) -> None:
        """Raise if this ledger does not reach entry ``seq`` with hash ``digest``, which
        ``where`` (e.g. the guardian's transcript) recorded."""
        if seq > self._last_seq:
            raise LedgerTruncated(f"{self.path} ends at entry {self._last_seq}, but {where} "
                                  f"recorded entry {seq}: charges were cut off. Restore the "
                                  "ledger from backup; never run on a rolled-back ledger")
        if self._digests[seq] != digest:
            raise LedgerCorrupted(f"{self.path}: entry {seq} differs from the one {where} "
                                  "recorded: the ledger was rewritten")

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, epsilon_budget: float, delta: float,
               conversion: Conversion = "improved", orders: ArrayLike = DEFAULT_ORDERS,
               key: bytes | None = None, signer: Ed25519PrivateKey | None = None
               ) -> BudgetLedger:
        """Start a new ledger; refuses to touch an existing one."""
        path = Path(path)
        if path.exists() or head_path(path).exists():
            raise LedgerExists(f"{path} (or its .head file) already exists; open it with "
                               "BudgetLedger.open, or move it away deliberately")
        try:
            policy = PrivacyBudget(epsilon_budget, delta, conversion, orders)  # validates
        except (BudgetError, ValueError) as exc:
            raise LedgerUsageError(str(exc)) from None
        header = {"type": "header", "version": FORMAT_VERSION, "seq": 0, "prev": _GENESIS,
                  "time": time.time(), "epsilon_budget": policy.epsilon_budget,
                  "delta": policy.delta, "conversion": conversion,
                  "orders": policy.accountant.orders.tolist(), "auth": _auth_name(key),
                  "signer": _public_hex(signer.public_key()) if signer else None}
        line, digest = _seal(header, key, signer)
        # Build under a temporary name and rename last, so a crash leaves
        # either no ledger or a complete one with its head.
        tmp = path.with_name(path.name + ".creating")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_head(path, 0, digest)
        os.replace(tmp, path)
        _fsync_dir(path)
        return cls.open(path, key=key, signer=signer)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, key: bytes | None = None,
             signer: Ed25519PrivateKey | None = None) -> BudgetLedger:
        """Open an existing ledger, verify it entirely and replay it. A signed ledger
        opens only with its signer's key (a ledger whose lines are signed cannot be
        continued unsigned, nor an unsigned one signed)."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            raise LedgerNotFound(f"no budget ledger at {path}; create one with "
                                 "BudgetLedger.create (never recreate a lost one: "
                                 "restore it from backup)") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LedgerLocked(f"{path} is open elsewhere; one guardian per ledger") from None
            entries, digests = _read_chain(_read_all(fd), path, key)
            _check_signer(entries[0], signer, path)
            try:
                ledger = cls(_path=path, _fd=fd, _key=key, _signer=signer, _header=entries[0],
                             _last_hash=digests[-1])
            except (KeyError, TypeError, ValueError) as exc:
                raise LedgerCorrupted(f"{path}: the header is malformed ({exc!r})") from None
            try:
                for entry in entries[1:]:
                    ledger.apply(entry)
            except BadEntry as exc:
                raise LedgerCorrupted(f"{path}: {exc}") from None
            ledger._digests = digests
            ledger._check_head(digests)
        except BaseException:
            os.close(fd)
            raise
        return ledger

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None

    def __enter__(self) -> BudgetLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settle(self, seq: int, answered: bool) -> None:
        try:
            super().settle(seq, answered)
        except LedgerError:
            raise
        except BudgetError as exc:
            raise LedgerUsageError(str(exc)) from None

    # ------------------------------------------------------------ persistence
    def _record(self, body: dict[str, Any]) -> int:
        if self._fd is None:
            raise LedgerUsageError("the ledger is closed")
        entry = {"seq": self._last_seq + 1, "prev": self._last_hash, "time": time.time(), **body}
        self.apply(entry)  # validates and updates state before anything is written
        line, digest = _seal(entry, self._key, self._signer)
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            # Memory and disk may now disagree: stop, and let a reopen decide.
            self.close()
            raise LedgerError(f"could not write {self.path} ({exc}); the ledger is closed. "
                              "Reopen it (a partial last line is reported as truncation "
                              "and needs manual repair)") from exc
        self._last_hash = digest
        self._digests.append(digest)
        _write_head(self.path, entry["seq"], digest)
        return entry["seq"]

    def _check_head(self, digests: list[str]) -> None:
        hp = head_path(self.path)
        try:
            head = json.loads(hp.read_text())
            seq, digest = int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            raise LedgerCorrupted(f"{hp} is missing; the ledger cannot be checked for "
                                  "truncation. Restore it from backup.") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerCorrupted(f"{hp} is unreadable ({exc!r})") from None
        last = len(digests) - 1
        if seq > last:
            raise LedgerTruncated(f"{self.path} ends at entry {last} but its head file "
                                  f"records entry {seq}: entries were cut off the end")
        if digests[seq] != digest:
            raise LedgerCorrupted(f"{self.path}: entry {seq} does not match the head file")
        if seq == last - 1:
            # Crash between appending the last line and updating the head.
            _write_head(self.path, last, digests[-1])
        elif seq != last:
            raise LedgerCorrupted(f"{hp} records entry {seq} but {self.path} has {last}: "
                                  "entries were appended behind the guardian's back")

# ---------------------------------------------------------------- file helpers

def _auth_name(key: bytes | None) -> str:
    return "sha256" if key is None else "hmac-sha256"


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _digest(body: dict[str, Any], key: bytes | None) -> str:
    data = _canonical(body)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _public_hex(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _seal(body: dict[str, Any], key: bytes | None,
          signer: Ed25519PrivateKey | None) -> tuple[bytes, str]:
    digest = _digest(body, key)
    line = {**body, "hash": digest}
    if signer is not None:
        line["sig"] = signer.sign(_SIG_DOMAIN + _canonical(line)).hex()
    return _canonical(line) + b"\n", digest


def _check_signer(header: dict[str, Any], signer: Ed25519PrivateKey | None, path: Path) -> None:
    recorded = header.get("signer")
    given = _public_hex(signer.public_key()) if signer is not None else None
    if recorded != given:
        if recorded is None:
            raise LedgerCorrupted(f"{path} is not signed; open it without a signing key")
        raise LedgerCorrupted(f"{path} is signed by key {recorded[:16]}...; open it with that "
                              "key (the guardian's identity key)")


def verify(path: str | os.PathLike[str], public_key: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """Check a signed ledger read-only, as an auditor with the deployment can: every
    line's signature by ``public_key`` (raw Ed25519) and the chain. Returns the entries
    and their hashes. (An HMAC-keyed ledger's digests need the key; the signatures do not.)"""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LedgerNotFound(f"no budget ledger at {path}") from None
    entries, digests = _read_chain(data, path, None, trust_digests=True)
    if entries[0].get("signer") != public_key.hex():
        raise LedgerCorrupted(f"{path} is not signed by the guardian's key "
                              f"(header names {str(entries[0].get('signer'))[:16]}...)")
    return entries, digests


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_chain(data: bytes, path: Path, key: bytes | None, trust_digests: bool = False
                ) -> tuple[list[dict[str, Any]], list[str]]:
    if not data:
        raise LedgerTruncated(f"{path} is empty; restore it from backup")
    if not data.endswith(b"\n"):
        raise LedgerTruncated(f"{path}: the last entry is incomplete (cut mid-line)")
    entries, digests, prev = [], [], _GENESIS
    for i, raw in enumerate(data[:-1].split(b"\n")):
        try:
            entry = json.loads(raw)
            sig = entry.pop("sig", None)
            signed = _canonical(entry)
            stored = entry.pop("hash")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LedgerCorrupted(f"{path}: line {i + 1} is not a ledger entry") from None
        signer = (entries[0] if entries else entry).get("signer")
        if signer is not None:
            try:
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer)).verify(
                    bytes.fromhex(str(sig)), _SIG_DOMAIN + signed)
            except (InvalidSignature, ValueError, TypeError):
                raise LedgerCorrupted(f"{path}: line {i + 1} is not signed by the ledger's "
                                      "signer (edited, or written without its key)") from None
        if not isinstance(entry, dict) or entry.get("seq") != i or entry.get("prev") != prev:
            raise LedgerCorrupted(f"{path}: line {i + 1} breaks the chain "
                                  "(entries removed, reordered or inserted)")
        if i == 0 and not trust_digests and entry.get("auth") != _auth_name(key):
            how = "with its key" if key is None else "without a key"
            raise LedgerCorrupted(f"{path} was written with auth {entry.get('auth')!r}; "
                                  f"open it {how}")
        if not trust_digests and not hmac.compare_digest(_digest(entry, key), str(stored)):
            hint = " (or the wrong key was given)" if key is not None else ""
            raise LedgerCorrupted(f"{path}: line {i + 1} was altered{hint}")
        entries.append(entry)
        digests.append(stored)
        prev = stored
    header = entries[0]
    if header.get("type") != "header" or header.get("version") != FORMAT_VERSION:
        raise LedgerCorrupted(f"{path}: first line is not a version-{FORMAT_VERSION} header")
    return entries, digests


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_head(path: Path, seq: int, digest: str) -> None:
    hp = head_path(path)
    tmp = hp.with_name(hp.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, json.dumps({"seq": seq, "hash": digest}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, hp)
    _fsync_dir(hp)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
