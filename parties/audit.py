"""Audit a run: check every party's transcript and that they agree with each other.

For ``run_dir`` holding ``deployment.toml`` and ``transcripts/<party>.jsonl``:

1. Chain: every line's ``prev`` is the hash of the line before (the first
   chains to the party's genesis value), so editing, deleting, reordering or
   inserting a line is caught at the line after it.
2. Seals: each seal line is signed by the party (key from the deployment) and
   counts the lines since the previous seal; lines after the last seal are an
   unsealed session (the party did not finish, or its seal was removed).
3. Records: every sent and received line carries the *sender's* signature over
   header and ciphertext digest, checked against the sender's public key, so
   nobody can write a record of a message its sender never signed.
4. Matching: each message a party says it sent was received by its recipient
   with the same header and digest; a message that was not is *lost* (the
   recipient finished the session or got later messages from the sender) or
   *undelivered* (the recipient never finished). A message received but
   absent from the sender's transcript is flagged too. A "bye" that arrives
   after its recipient has finished is normal and only noted.
5. Order: a sender's sequence numbers to each recipient run 0, 1, 2, ... in
   its transcript.
6. Conformance: every message's (sender role, recipient role, step) must be
   declared by its protocol in ``protocols.conformance_rules()``.
7. Budget ledgers: where a privacy guardian's transcript records its ledger's
   head (seq, hash), the ledger (``ledger/<party>.jsonl`` or as given) must be
   signed line by line by that party and still reach that entry with that
   hash: a ledger cut back or rewritten after the run fails the audit.

Trust anchor: the public keys come from ``RUN_DIR/deployment.toml`` unless the
auditor gives its own deployment file or pins the fingerprint it expects
(:meth:`Deployment.fingerprint`); whoever can write RUN_DIR could otherwise
replace the keys along with a fabricated, freshly signed run.

Envelopes a party *rejected* (garbage, bad signatures, replays ...) are
reported as information, not failures: refusing them is the system working,
and their headers are unverified claims by whoever sent them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .envelope import Header, verify_signature
from .identity import Deployment, DeploymentError
from .transcript import EVENTS, LEDGER, SEAL, genesis, line_hash, seal_message

Rules = dict[str, set[tuple[str, str, str]]]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Issue:
    severity: str        # "error" fails the audit, "info" does not
    code: str
    party: str | None
    line: int | None
    message: str


@dataclass
class AuditReport:
    run_dir: str
    deployment: str
    fingerprint: str = ""
    pinned: bool = False  # the deployment was checked against one the auditor trusts
    issues: list[Issue] = field(default_factory=list)
    parties: dict[str, dict[str, int]] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)
    messages: int = 0    # distinct messages seen (sent or received)
    matched: int = 0     # of which both sides recorded identically

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "run_dir": self.run_dir, "deployment": self.deployment,
                "fingerprint": self.fingerprint, "pinned": self.pinned, "errors": len(self.errors), "sessions": self.sessions,
                "messages": self.messages, "matched": self.matched,
                "parties": self.parties, "issues": [asdict(i) for i in self.issues]}


@dataclass
class _Entry:
    party: str       # whose transcript
    line: int
    event: str
    header: Header
    digest: str
    signature: bytes


MsgKey = tuple[str, str, str, int]   # session, sender, recipient, seq


class _Auditor:
    def __init__(self, run_dir: Path, deployment: Deployment, rules: Rules):
        self.dep, self.rules = deployment, rules
        self.report = AuditReport(str(run_dir), deployment.name)
        self.sent: dict[MsgKey, _Entry] = {}
        self.received: dict[MsgKey, _Entry] = {}
        self.sent_order: dict[tuple[str, str, str], list[_Entry]] = defaultdict(list)
        self.sealed: dict[str, set[str]] = defaultdict(set)   # party -> sessions it sealed
        self.sessions: set[str] = set()
        self.ledger_heads: dict[str, tuple[int, str, int]] = {}  # party -> seq, hash, line

    def issue(self, severity: str, code: str, party: str | None, line: int | None,
              message: str) -> None:
        self.report.issues.append(Issue(severity, code, party, line, message))

    # -- one transcript --------------------------------------------------------
    def read_transcript(self, party: str, path: Path) -> None:
        stats = {"lines": 0, "sent": 0, "received": 0, "rejected": 0, "sealed_sessions": 0}
        self.report.parties[party] = stats
        verifier = Ed25519PublicKey.from_public_bytes(self.dep.parties[party].sign_pub)
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.issue("error", "torn-line", party, data.count(b"\n") + 1,
                       "the last line is incomplete (the party crashed while writing, or the "
                       "file was truncated)")
        prev, segment = genesis(party), []
        rejected: Counter[str] = Counter()
        for lineno, raw in enumerate(data.splitlines(), 1):
            stats["lines"] += 1
            this = line_hash(raw)
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                self.issue("error", "malformed-line", party, lineno, f"not a transcript line ({e})")
                prev = this
                segment.append(lineno)  # seals count every line, readable or not
                continue
            if obj.get("prev") != prev:
                what = "first line does not start" if lineno == 1 else \
                    f"line does not follow line {lineno - 1}"
                self.issue("error", "chain-broken", party, lineno,
                           f"hash chain broken: {what} the chain; a line was edited, deleted, "
                           "inserted or reordered at or before this point")
            prev = this
            if obj.get("party") != party:
                self.issue("error", "wrong-party", party, lineno,
                           f"line claims party {obj.get('party')!r} in {party}'s transcript")
            event = obj.get("event")
            if event == SEAL:
                self._check_seal(party, verifier, obj, lineno, segment)
                segment = []
                stats["sealed_sessions"] += 1
            elif event == LEDGER:
                segment.append(lineno)
                if isinstance(obj.get("seq"), int) and isinstance(obj.get("hash"), str):
                    self.ledger_heads[party] = (obj["seq"], obj["hash"], lineno)
                else:
                    self.issue("error", "malformed-line", party, lineno, "bad ledger record")
            elif event in EVENTS:
                segment.append(lineno)
                stats[event] += 1
                if event == "rejected":
                    rejected[str(obj.get("reason"))] += 1
                else:
                    self._read_entry(party, obj, lineno)
            else:
                segment.append(lineno)
                self.issue("error", "malformed-line", party, lineno, f"unknown event {event!r}")
        if segment:
            self.issue("error", "unsealed", party, segment[0],
                       f"{len(segment)} line(s) from line {segment[0]} on are not sealed: the "
                       "party did not finish its session, or its seal line was removed")
        if rejected:
            detail = ", ".join(f"{r}: {n}" for r, n in sorted(rejected.items()))
            self.issue("info", "rejected", party, None,
                       f"refused {sum(rejected.values())} envelope(s) ({detail})")

    def _check_seal(self, party: str, verifier: Ed25519PublicKey, obj: dict, lineno: int,
                    segment: list[int]) -> None:
        try:
            verifier.verify(base64.b64decode(obj.get("seal_sig", ""), validate=True),
                            seal_message(obj))
        except (InvalidSignature, binascii.Error, TypeError, ValueError):
            self.issue("error", "bad-seal", party, lineno,
                       f"seal signature does not verify with {party}'s public key: the seal "
                       "or a field of it was edited, or it was not written by the party")
            return
        if obj.get("count") != len(segment):
            self.issue("error", "seal-count", party, lineno,
                       f"seal counts {obj.get('count')} line(s) but {len(segment)} precede it: "
                       "lines were deleted or inserted")
        session = obj.get("session")
        if isinstance(session, str):
            self.sealed[party].add(session)
            self.sessions.add(session)

    def _read_entry(self, party: str, obj: dict, lineno: int) -> None:
        event = obj["event"]
        try:
            header = Header.from_dict(obj.get("header"))
            digest, sig_b64 = obj.get("digest"), obj.get("signature")
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise ValueError("digest is not 64 hex digits")
            signature = base64.b64decode(sig_b64, validate=True)
        except (ValueError, TypeError, binascii.Error) as e:
            self.issue("error", "malformed-line", party, lineno, f"bad {event} record ({e})")
            return
        me = header.sender if event == "sent" else header.recipient
        if me != party:
            self.issue("error", "misfiled", party, lineno,
                       f"a {event} record for {me!r} in {party}'s transcript")
            return
        if header.deployment != self.dep.name:
            self.issue("error", "wrong-deployment", party, lineno,
                       f"record is for deployment {header.deployment!r}")
            return
        sender = self.dep.parties.get(header.sender)
        if sender is None or header.recipient not in self.dep.parties:
            self.issue("error", "unknown-party", party, lineno,
                       f"record names a party outside the deployment "
                       f"({header.sender!r} -> {header.recipient!r})")
            return
        if not verify_signature(header, digest, signature, sender.sign_pub):
            self.issue("error", "bad-signature", party, lineno,
                       f"{event} record {_describe(header)} is not signed by {header.sender}: "
                       "the record was edited or forged")
            return
        entry = _Entry(party, lineno, event, header, digest, signature)
        key = (header.session, header.sender, header.recipient, header.seq)
        self.sessions.add(header.session)
        table = self.sent if event == "sent" else self.received
        if key in table:
            self.issue("error", "duplicate-record", party, lineno,
                       f"{_describe(header)} already recorded as {event} at line "
                       f"{table[key].line}")
            return
        table[key] = entry
        if event == "sent":
            self.sent_order[(header.session, header.sender, header.recipient)].append(entry)

    # -- across transcripts --------------------------------------------------
    def cross_check(self) -> None:
        keys = set(self.sent) | set(self.received)
        self.report.messages = len(keys)
        highest_received: dict[tuple[str, str, str], int] = {}
        for (session, sender, recipient, seq) in self.received:
            k = (session, sender, recipient)
            highest_received[k] = max(seq, highest_received.get(k, -1))
        for key in sorted(keys):
            session, sender, recipient, seq = key
            s, r = self.sent.get(key), self.received.get(key)
            if s and r:
                if (s.header, s.digest, s.signature) != (r.header, r.digest, r.signature):
                    self.issue("error", "mismatch", recipient, r.line,
                               f"{_describe(r.header)} differs from what {sender} recorded "
                               f"sending (line {s.line}): the sender signed two different "
                               "messages with the same sequence number")
                else:
                    self.report.matched += 1
            elif s:
                finished = session in self.sealed[recipient]
                later = highest_received.get((session, sender, recipient), -1) > seq
                if s.header.kind == "bye":
                    self.issue("info", "bye-unreceived", sender, s.line,
                               f"{recipient} did not receive {sender}'s end-of-session marker "
                               f"in session {session} (it had already stopped)")
                elif finished or later:
                    self.issue("error", "lost", sender, s.line,
                               f"{_describe(s.header)} was never received although {recipient} "
                               + ("got later messages from it" if later else "finished the session")
                               + ": dropped in transit, or the recipient's record was deleted")
                else:
                    self.issue("error", "undelivered", sender, s.line,
                               f"{_describe(s.header)} was never received: {recipient} did not "
                               f"finish session {session} (crashed or stopped)")
            elif r:
                self.issue("error", "unsent", recipient, r.line,
                           f"{_describe(r.header)} is signed by {sender} but missing from its "
                           "transcript: the sender's record was deleted, or it crashed between "
                           "sending and recording")

    def check_order(self) -> None:
        for (session, sender, recipient), entries in self.sent_order.items():
            expected = 0
            for e in entries:  # file order
                if e.header.seq != expected:
                    self.issue("error", "sequence", sender, e.line,
                               f"to {recipient} in session {session}: seq {e.header.seq} where "
                               f"{expected} was expected (messages missing or reordered)")
                expected = e.header.seq + 1

    def check_conformance(self) -> None:
        bad: dict[tuple[str, str, str, str, str], list[_Entry]] = defaultdict(list)
        for key in set(self.sent) | set(self.received):
            e = self.sent.get(key) or self.received[key]
            h = e.header
            if h.kind != "msg":
                continue
            allowed = self.rules.get(h.protocol)
            roles = (self.dep.role_of(h.sender), self.dep.role_of(h.recipient), h.step)
            if allowed is None or roles not in allowed:
                bad[(h.protocol, h.step, h.sender, h.recipient, roles[0] + "->" + roles[1])].append(e)
        for (proto, step, sender, recipient, roles), entries in sorted(bad.items()):
            first = min(entries, key=lambda e: (e.party, e.line))
            why = (f"protocol {proto!r} is not declared" if proto not in self.rules
                   else f"protocol {proto!r} does not allow {roles} messages of step {step!r}")
            self.issue("error", "nonconforming", first.party, first.line,
                       f"{len(entries)} message(s) {proto}.{step} from {sender} to {recipient}: "
                       f"{why}")


    def check_ledgers(self, run_dir: Path, paths: dict[str, Path]) -> None:
        from .ledger import LedgerError, verify  # scipy: only when a ledger is recorded

        # Every ledger a transcript recorded, and every one the auditor names (its owner
        # may have died before recording a head: its signatures still say whether
        # anyone else wrote or changed a charge).
        named = {p for p, path in paths.items() if p in self.dep.parties and path.exists()}
        for party in sorted(set(self.ledger_heads) | named):
            head = self.ledger_heads.get(party)
            lineno = head[2] if head else 0
            path = paths.get(party, run_dir / "ledger" / f"{party}.jsonl")
            if not path.exists():
                self.issue("error", "ledger-missing", party, lineno,
                           f"{party}'s transcript records a budget ledger, not found at {path}; "
                           f"pass --ledger {party}=FILE if it lives elsewhere")
                continue
            try:
                entries, digests = verify(path, self.dep.parties[party].sign_pub)
            except LedgerError as e:
                self.issue("error", "ledger", party, lineno, f"budget ledger {path}: {e}")
                continue
            if head is not None and head[0] >= len(digests):
                self.issue("error", "ledger-rolled-back", party, lineno,
                           f"{path} ends at entry {len(digests) - 1}, but {party}'s transcript "
                           f"recorded entry {head[0]}: charges were cut off after the run")
            elif head is not None and digests[head[0]] != head[1]:
                self.issue("error", "ledger-rewritten", party, lineno,
                           f"{path}: entry {head[0]} differs from the one {party}'s transcript "
                           "recorded")
            else:
                charges = sum(1 for e in entries if e.get("type") == "charge")
                reach = (f"reaching the recorded entry {head[0]}" if head is not None else
                         f"no head recorded ({party} did not finish this session)")
                self.issue("info", "ledger", party, lineno,
                           f"budget ledger {path.name}: {len(entries)} entries ({charges} "
                           f"charges), signed, {reach}")


def _describe(h: Header) -> str:
    return f"'{h.protocol}.{h.step}' {h.sender}->{h.recipient} seq {h.seq} (session {h.session})"


def default_rules() -> Rules:
    from protocols import conformance_rules  # protocols/ declares its own message flows
    return conformance_rules()


def audit_run(run_dir: str | os.PathLike[str], rules: Rules | None = None, *,
              trusted: Deployment | None = None, fingerprint: str | None = None,
              ledgers: dict[str, Path] | None = None) -> AuditReport:
    """Audit a run directory; raises DeploymentError if a deployment file is unusable.

    trusted: the deployment the auditor trusts (its keys are used, and the run's own
    deployment.toml must match it); fingerprint: the fingerprint the run's deployment
    must have. Without either, the run's deployment is taken on trust (and says so).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DeploymentError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise DeploymentError(f"{run_dir} is a file; pass the run directory (the one holding "
                              "deployment.toml and transcripts/)")
    deployment = Deployment.load(run_dir / "deployment.toml")
    found = deployment.fingerprint()
    pin = trusted.fingerprint() if trusted is not None else fingerprint
    report = AuditReport(str(run_dir), deployment.name, found, pinned=pin is not None)
    if pin is not None and not found.startswith(pin.lower()):
        report.issues.append(Issue("error", "untrusted-deployment", None, None,
                                   f"the run's deployment has fingerprint {found}, not the "
                                   f"trusted {pin}: its keys (and so every signature) cannot "
                                   "be trusted; nothing else was checked"))
        return report
    auditor = _Auditor(run_dir, trusted or deployment, default_rules() if rules is None else rules)
    auditor.report = report
    tdir = run_dir / "transcripts"
    files = {p.stem: p for p in sorted(tdir.glob("*.jsonl"))} if tdir.is_dir() else {}
    for stem in sorted(set(files) - set(deployment.parties)):
        auditor.issue("error", "unknown-transcript", stem, None,
                      f"transcripts/{stem}.jsonl belongs to no party of the deployment")
    for party in deployment.parties:
        if party in files:
            auditor.read_transcript(party, files[party])
        else:
            auditor.issue("error", "missing-transcript", party, None,
                          f"no transcript transcripts/{party}.jsonl (the party never ran, or "
                          "its transcript was deleted)")
    auditor.cross_check()
    auditor.check_order()
    auditor.check_conformance()
    auditor.check_ledgers(run_dir, ledgers or {})
    auditor.report.sessions = sorted(auditor.sessions)
    return auditor.report
