"""The privacy guardian's budget ledger: an append-only, crash-safe record of
every PATE query it was asked to answer.

File format: one JSON object per line.  Line 0 is a header (budget, delta,
conversion, the orders grid, authentication mode); every later line is a
``charge`` (a query granted, written *before* the answer is released), a
``settle`` (whether a Confident-GNMax query actually answered) or a
``refused`` (a query turned away, kept for the audit trail).  Each line
carries ``prev``, the digest of the line before, and ``hash``, the SHA-256
(or, with a key, HMAC-SHA256) of ``prev`` and its own canonical body: a hash
chain.  Every line is written with one ``write`` to an ``O_APPEND`` file and
fsynced before the call returns.  A small side file ``<ledger>.head`` holds
the last sequence number and digest, so that cutting whole lines off the end
is noticed too.

Accounting is data-independent and worst case: a granted Confident-GNMax
query is charged as if it answered until :meth:`BudgetLedger.settle` says it
did not.  A query is refused (a normal :class:`Decision` with
``granted=False``, not an exception) when its worst-case cost would push
epsilon past the budget.

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
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.pate import (
    DEFAULT_ORDERS,
    Conversion,
    PateAccountant,
    epsilon_from_rdp,
    gnmax_rdp_data_independent,
    threshold_rdp_data_independent,
)

FORMAT_VERSION = 1
_GENESIS = "0" * 64


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


class LedgerUsageError(LedgerError):
    """The ledger was asked to do something invalid (e.g. settle twice)."""


@dataclass(frozen=True)
class Decision:
    """The guardian's answer to 'may I answer this query?'.

    ``epsilon_spent`` is the worst-case epsilon before the query and
    ``epsilon_if_granted`` after it; ``seq`` is the charge entry to settle.
    """

    granted: bool
    seq: int | None
    epsilon_spent: float
    epsilon_if_granted: float
    budget: float
    reason: str


def head_path(path: str | os.PathLike[str]) -> Path:
    """Where the head file of the ledger at ``path`` lives."""
    return Path(f"{os.fspath(path)}.head")


class BudgetLedger:
    """Open with :meth:`create` or :meth:`open`; use as a context manager."""

    def __init__(self, *, _path: Path, _fd: int, _key: bytes | None,
                 _header: dict[str, Any], _last_seq: int, _last_hash: str) -> None:
        self.path = _path
        self._fd: int | None = _fd
        self._key = _key
        self.epsilon_budget = float(_header["epsilon_budget"])
        self.delta = float(_header["delta"])
        self.conversion: Conversion = _header["conversion"]
        self._orders = np.asarray(_header["orders"], dtype=np.float64)
        self._acc = PateAccountant(self._orders)        # settled costs
        # unsettled Confident-GNMax charges: seq -> ((sigma_1, sigma_2), worst-case rdp)
        self._pending: dict[int, tuple[tuple[float, float], NDArray[np.float64]]] = {}
        self._pending_sum = np.zeros_like(self._orders)
        self._last_seq = _last_seq
        self._last_hash = _last_hash
        self.refusals = 0

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, epsilon_budget: float, delta: float,
               conversion: Conversion = "improved", orders: ArrayLike = DEFAULT_ORDERS,
               key: bytes | None = None) -> BudgetLedger:
        """Start a new ledger; refuses to touch an existing one."""
        path = Path(path)
        if path.exists() or head_path(path).exists():
            raise LedgerExists(f"{path} (or its .head file) already exists; open it with "
                               "BudgetLedger.open, or move it away deliberately")
        if not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
            raise LedgerUsageError(f"epsilon_budget must be positive, got {epsilon_budget!r}")
        if not 0 < delta < 1:
            raise LedgerUsageError(f"delta must be in (0, 1), got {delta!r}")
        if conversion not in ("classic", "improved"):
            raise LedgerUsageError(f"conversion must be 'classic' or 'improved', got {conversion!r}")
        grid = PateAccountant(orders).orders  # validates
        header = {"type": "header", "version": FORMAT_VERSION, "seq": 0, "prev": _GENESIS,
                  "time": time.time(), "epsilon_budget": float(epsilon_budget),
                  "delta": float(delta), "conversion": conversion,
                  "orders": grid.tolist(), "auth": _auth_name(key)}
        line, digest = _seal(header, key)
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
        return cls.open(path, key=key)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, key: bytes | None = None) -> BudgetLedger:
        """Open an existing ledger, verify it entirely and replay it."""
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
            entries, digests = _read_chain(fd, path, key)
            try:
                ledger = cls(_path=path, _fd=fd, _key=key, _header=entries[0],
                             _last_seq=len(entries) - 1, _last_hash=digests[-1])
            except (KeyError, TypeError, ValueError) as exc:
                raise LedgerCorrupted(f"{path}: the header is malformed ({exc!r})") from None
            for entry in entries[1:]:
                ledger._apply(entry)
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

    # ------------------------------------------------------------ queries
    def request_gnmax(self, sigma: float, query_id: str = "") -> Decision:
        """Ask to answer one GNMax query (always answers)."""
        cost = gnmax_rdp_data_independent(sigma, self._orders)
        return self._request(cost, {"mechanism": "gnmax", "sigma": float(sigma)}, query_id)

    def request_confident_gnmax(self, sigma_threshold: float, sigma_gnmax: float,
                                query_id: str = "") -> Decision:
        """Ask to answer one Confident-GNMax query; charged as if it answers
        until :meth:`settle` records the outcome."""
        cost = (threshold_rdp_data_independent(sigma_threshold, self._orders)
                + gnmax_rdp_data_independent(sigma_gnmax, self._orders))
        return self._request(cost, {"mechanism": "confident_gnmax",
                                    "sigma_threshold": float(sigma_threshold),
                                    "sigma_gnmax": float(sigma_gnmax)}, query_id)

    def settle(self, seq: int, answered: bool) -> None:
        """Record whether the Confident-GNMax query charged at ``seq``
        answered; if it abstained its GNMax step is no longer charged."""
        if seq not in self._pending:
            raise LedgerUsageError(f"entry {seq} is not an unsettled Confident-GNMax charge "
                                   f"(unsettled: {sorted(self._pending)})")
        self._append({"type": "settle", "charge": int(seq), "answered": bool(answered)})

    # ------------------------------------------------------------ reading
    def epsilon_spent(self, conversion: Conversion | None = None) -> float:
        """Worst-case data-independent epsilon spent, unsettled queries
        counted as answered."""
        return self._eps(self._worst_rdp(), conversion)

    @property
    def accountant(self) -> PateAccountant:
        """A copy of the accountant of settled queries (excludes unsettled)."""
        return self._acc.copy()

    @property
    def unsettled(self) -> list[int]:
        return sorted(self._pending)

    @property
    def entries(self) -> int:
        """Number of lines in the ledger, header included."""
        return self._last_seq + 1

    # ------------------------------------------------------------ internals
    def _worst_rdp(self) -> NDArray[np.float64]:
        return self._acc.rdp + self._pending_sum

    def _eps(self, rdp: NDArray[np.float64], conversion: Conversion | None = None) -> float:
        return epsilon_from_rdp(self._orders, rdp, self.delta, conversion or self.conversion)[0]

    def _request(self, cost: NDArray[np.float64], params: dict[str, Any],
                 query_id: str) -> Decision:
        worst = self._worst_rdp()
        before, after = self._eps(worst), self._eps(worst + cost)
        if after > self.epsilon_budget:
            self._append({"type": "refused", "query_id": str(query_id), **params,
                          "epsilon_if_granted": after})
            return Decision(False, None, before, after, self.epsilon_budget,
                            f"worst-case epsilon would reach {after:.4g} > budget "
                            f"{self.epsilon_budget:g}")
        # epsilon_if_granted is for human auditors; replay recomputes it.
        seq = self._append({"type": "charge", "query_id": str(query_id), **params,
                            "epsilon_if_granted": after})
        return Decision(True, seq, before, after, self.epsilon_budget, "within budget")

    def _append(self, body: dict[str, Any]) -> int:
        if self._fd is None:
            raise LedgerUsageError("the ledger is closed")
        entry = {"seq": self._last_seq + 1, "prev": self._last_hash, "time": time.time(), **body}
        self._apply(entry)  # validates and updates state before anything is written
        line, digest = _seal(entry, self._key)
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            # Memory and disk may now disagree: stop, and let a reopen decide.
            self.close()
            raise LedgerError(f"could not write {self.path} ({exc}); the ledger is closed. "
                              "Reopen it (a partial last line is reported as truncation "
                              "and needs manual repair)") from exc
        self._last_seq, self._last_hash = entry["seq"], digest
        _write_head(self.path, self._last_seq, digest)
        return self._last_seq

    def _apply(self, e: dict[str, Any]) -> None:
        """Replay one entry into the in-memory state (shared by load and append)."""
        kind = e.get("type")
        try:
            if kind == "charge" and e["mechanism"] == "gnmax":
                self._acc.add_gnmax(None, e["sigma"])
            elif kind == "charge" and e["mechanism"] == "confident_gnmax":
                sigmas = (e["sigma_threshold"], e["sigma_gnmax"])
                cost = (threshold_rdp_data_independent(sigmas[0], self._orders)
                        + gnmax_rdp_data_independent(sigmas[1], self._orders))
                self._pending[e["seq"]] = (sigmas, cost)
                self._pending_sum = self._pending_sum + cost
            elif kind == "settle":
                if not isinstance(e["answered"], bool):
                    raise TypeError("answered must be a boolean")
                (sigma_t, sigma_g), _ = self._pending.pop(e["charge"])
                # Recompute rather than subtract, so no rounding drift builds up.
                self._pending_sum = np.zeros_like(self._orders)
                for _, cost in self._pending.values():
                    self._pending_sum = self._pending_sum + cost
                self._acc.add_confident_gnmax(None, 0.0, sigma_t, sigma_g,
                                              answered=e["answered"])
            elif kind == "refused":
                self.refusals += 1
            else:
                raise LedgerCorrupted(f"{self.path}: entry {e.get('seq')} has unknown type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerCorrupted(f"{self.path}: entry {e.get('seq')} is malformed ({exc!r})") from None

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


def _seal(body: dict[str, Any], key: bytes | None) -> tuple[bytes, str]:
    digest = _digest(body, key)
    return _canonical({**body, "hash": digest}) + b"\n", digest


def _read_chain(fd: int, path: Path, key: bytes | None) -> tuple[list[dict[str, Any]], list[str]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise LedgerTruncated(f"{path} is empty; restore it from backup")
    if not data.endswith(b"\n"):
        raise LedgerTruncated(f"{path}: the last entry is incomplete (cut mid-line)")
    entries, digests, prev = [], [], _GENESIS
    for i, raw in enumerate(data[:-1].split(b"\n")):
        try:
            entry = json.loads(raw)
            stored = entry.pop("hash")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LedgerCorrupted(f"{path}: line {i + 1} is not a ledger entry") from None
        if not isinstance(entry, dict) or entry.get("seq") != i or entry.get("prev") != prev:
            raise LedgerCorrupted(f"{path}: line {i + 1} breaks the chain "
                                  "(entries removed, reordered or inserted)")
        if i == 0 and entry.get("auth") != _auth_name(key):
            how = "with its key" if key is None else "without a key"
            raise LedgerCorrupted(f"{path} was written with auth {entry.get('auth')!r}; "
                                  f"open it {how}")
        if not hmac.compare_digest(_digest(entry, key), str(stored)):
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
