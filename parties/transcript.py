"""Transcripts: each party's append-only, hash-chained record of its envelopes.

One file per party, ``run_dir/transcripts/<party>.jsonl``, appended to across
sessions. Every line is one JSON object (sorted keys, no spaces) and carries
``prev``, the SHA-256 of the previous line's bytes (the first line chains to a
genesis value derived from the party's name). Entry lines::

    {"event": "sent"|"received"|"rejected", "party", "prev", "at",
     "header": {version, deployment, session, protocol, step, kind, sender,
                recipient, seq, time} | null,
     "size", "digest", "signature" (base64, the sender's), "reason"}

``digest`` is SHA-256 of the envelope's nonce || ciphertext and ``signature``
the sender's Ed25519 signature over header and digest (see
:mod:`parties.envelope`), so an auditor can check every sent and received
line against the sender's public key. No payload is ever written.

At the end of a session the party appends a seal line::

    {"event": "seal", "party", "prev", "at", "session", "count", "seal_sig"}

A privacy guardian also records its budget ledger's head before the seal::

    {"event": "ledger", "party", "prev", "at", "seq", "hash"}

so a ledger later cut back to an earlier entry (head file rewritten too)
disagrees with a signed transcript (parties/ledger.py).

In a seal line, ``count`` is the number of lines since the previous seal and
``seal_sig`` the party's Ed25519 signature over the line without
``seal_sig``. Since ``prev`` chains back to the first line, the seal covers
every line before it: editing, deleting, reordering or inserting a line
breaks the chain or the seal, and lines after the last seal show up as an
unsealed (unfinished) session.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .envelope import Header

EVENTS = ("sent", "received", "rejected")
SEAL = "seal"
LEDGER = "ledger"
_SEAL_DOMAIN = b"confidant/transcript-seal/v1\x00"


def transcript_path(run_dir: str | os.PathLike[str], party: str) -> Path:
    return Path(run_dir) / "transcripts" / f"{party}.jsonl"


def genesis(party: str) -> str:
    """``prev`` of a transcript's first line: binds the file to its party."""
    return hashlib.sha256(b"confidant/transcript/v1\x00" + party.encode()).hexdigest()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def seal_message(seal_line: dict[str, Any]) -> bytes:
    """The bytes a seal signature covers: the seal line without its signature."""
    return _SEAL_DOMAIN + canonical({k: v for k, v in seal_line.items() if k != "seal_sig"})


class Transcript:
    """Appends a party's lines to its transcript file, one flushed line per call."""

    def __init__(self, path: str | os.PathLike[str], party: str, sign_key: Ed25519PrivateKey):
        self.path, self.party, self._key = Path(path), party, sign_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._prev, self._count = genesis(party), 0
        if self.path.exists():
            self._resume()
        self._file = open(self.path, "ab")

    def _resume(self) -> None:
        """Continue the chain of an existing file (a later session, or a restart)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A torn last line (crash mid-write) stays as evidence; the audit flags it.
            with open(self.path, "ab") as f:
                f.write(b"\n")
            data += b"\n"
        for line in data.splitlines():
            self._prev = line_hash(line)
            try:
                is_seal = json.loads(line).get("event") == SEAL
            except (ValueError, AttributeError):
                is_seal = False
            self._count = 0 if is_seal else self._count + 1

    def _append(self, obj: dict[str, Any]) -> None:
        line = canonical(obj)
        self._file.write(line + b"\n")
        self._file.flush()
        self._prev = line_hash(line)

    def record(self, direction: str, header: Header | None, *, size: int,
               digest: str | None, signature: bytes | None, reason: str | None = None) -> None:
        """Append one line for an envelope sent, received or rejected (never its payload)."""
        if direction not in EVENTS:
            raise ValueError(f"direction must be one of {EVENTS}, got {direction!r}")
        if direction != "rejected" and (header is None or digest is None or signature is None):
            raise ValueError(f"a {direction} line needs the header, digest and signature")
        with self._lock:
            self._append({
                "event": direction, "party": self.party, "prev": self._prev, "at": time.time(),
                "header": header.as_dict() if header is not None else None,
                "size": int(size), "digest": digest,
                "signature": base64.b64encode(signature).decode() if signature is not None else None,
                "reason": reason,
            })
            self._count += 1

    def record_ledger(self, seq: int, digest: str) -> None:
        """Append the budget ledger's head (its last entry's seq and hash)."""
        with self._lock:
            self._append({"event": LEDGER, "party": self.party, "prev": self._prev,
                          "at": time.time(), "seq": int(seq), "hash": str(digest)})
            self._count += 1

    def seal(self, session: str) -> None:
        """Close a session: a line signed by the party over the chain so far."""
        with self._lock:
            line: dict[str, Any] = {"event": SEAL, "party": self.party, "prev": self._prev,
                                    "at": time.time(), "session": session, "count": self._count}
            line["seal_sig"] = base64.b64encode(self._key.sign(seal_message(line))).decode()
            self._append(line)
            os.fsync(self._file.fileno())
            self._count = 0

    def last_ledger_head(self) -> tuple[int, str] | None:
        """The ledger head this transcript recorded last, if any."""
        return last_ledger_head(self.path)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def last_ledger_head(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(seq, hash) of the last ``ledger`` line of a transcript file, or None."""
    head = None
    try:
        lines = Path(path).read_bytes().splitlines()
    except FileNotFoundError:
        return None
    for raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == LEDGER:
            head = (int(line["seq"]), str(line["hash"]))
    return head


def sealed_sessions(path: str | os.PathLike[str]) -> set[str]:
    """Sessions a transcript file has sealed (completed)."""
    sessions = set()
    try:
        lines = Path(path).read_bytes().splitlines()
    except FileNotFoundError:
        return sessions
    for raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == SEAL:
            sessions.add(str(line.get("session")))
    return sessions
