"""Transcripts and the audit: a clean run passes, every kind of tampering or
misbehaviour is caught."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from parties.audit import audit_run
from parties.cli import main as cli_main
from parties.envelope import EnvelopeError, Sealer, introduce
from parties.identity import PrivateKeys, new_local_deployment
from parties.transcript import Transcript, canonical, line_hash, transcript_path

RULES = {"toy": {("owner", "owner", "share"), ("owner", "aggregator", "sum"),
                 ("aggregator", "owner", "result")}}
PARTIES = [("alice", "owner"), ("bob", "owner"), ("carol", "aggregator")]
SECRET = b"the-secret-payload-\x00\x01"


class Sim:
    """Parties of one session exchanging envelopes in-process, with transcripts."""

    def __init__(self, run_dir: Path, session: str = "s1", fresh: bool = True):
        if fresh:
            new_local_deployment(run_dir, PARTIES, "mqtt://127.0.0.1:1883", name="audtest")
        from parties.identity import Deployment
        self.run_dir, self.session = run_dir, session
        self.dep = Deployment.load(run_dir / "deployment.toml")
        self.keys = {n: PrivateKeys.load(run_dir / "keys" / f"{n}.key") for n in self.dep.parties}
        self.sealers = {n: Sealer(self.dep, k, session) for n, k in self.keys.items()}
        introduce(*self.sealers.values())
        self.tr = {n: Transcript(transcript_path(run_dir, n), n, k.sign_key)
                   for n, k in self.keys.items()}

    def send(self, frm: str, to: str, step: str, payload: bytes = SECRET, *, kind: str = "msg",
             protocol: str = "toy", deliver: bool = True, record_sent: bool = True):
        sealed = self.sealers[frm].seal(to, protocol, step, payload, kind=kind)
        if record_sent:
            self.tr[frm].record("sent", sealed.header, size=sealed.size, digest=sealed.digest,
                                signature=sealed.signature)
        if deliver:
            self.deliver(sealed.data, to)
        return sealed

    def deliver(self, data: bytes, to: str) -> None:
        try:
            o = self.sealers[to].open(data)
        except EnvelopeError as e:
            self.tr[to].record("rejected", Sealer.peek_header(data), size=len(data),
                               digest=None, signature=None, reason=e.reason)
            return
        self.tr[to].record("received", o.header, size=o.size, digest=o.digest,
                           signature=o.signature)

    def protocol(self) -> None:
        self.send("alice", "bob", "share")
        self.send("bob", "alice", "share")
        self.send("alice", "carol", "sum")
        self.send("bob", "carol", "sum")
        self.send("carol", "alice", "result")
        self.send("carol", "bob", "result")

    def finish(self, *, skip: tuple[str, ...] = ()) -> None:
        for frm in self.dep.parties:
            if frm in skip:
                continue
            for to in self.dep.parties:
                if to != frm:
                    self.send(frm, to, "done", b"", kind="bye", deliver=to not in skip)
        for name, t in self.tr.items():
            if name not in skip:
                t.seal(self.session)
            t.close()


def clean_run(run_dir: Path) -> Path:
    sim = Sim(run_dir)
    sim.protocol()
    sim.finish()
    return run_dir


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return clean_run(tmp_path_factory.mktemp("clean"))


@pytest.fixture
def run(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "run")
    return tmp_path / "run"


def codes(report) -> set[str]:
    return {i.code for i in report.errors}


def test_clean_run_passes(run, capsys):
    report = audit_run(run, rules=RULES)
    assert report.ok, report.issues
    assert report.messages == report.matched == 6 + 6
    assert report.sessions == ["s1"]
    assert report.parties["alice"] == {"lines": 9, "sent": 4, "received": 4, "rejected": 0,
                                       "sealed_sessions": 1}


def test_transcripts_hold_no_payload(run):
    for f in (run / "transcripts").iterdir():
        text = f.read_bytes()
        assert SECRET not in text and base64.b64encode(SECRET) not in text
        for line in text.splitlines():
            assert set(json.loads(line)) <= {"event", "party", "prev", "at", "header", "size",
                                             "digest", "signature", "reason", "session",
                                             "count", "seal_sig"}


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _edit(line: bytes) -> bytes:
    obj = json.loads(line)
    obj["at"] = obj["at"] + 1.0  # the most innocent-looking field
    return canonical(obj)


def test_every_edit_delete_reorder_insert_is_detected(template, tmp_path):
    run = tmp_path / "r"
    names = ["alice", "bob", "carol"]
    n_lines = {n: len(_lines(transcript_path(template, n))) for n in names}
    cases = 0
    for name in names:
        for i in range(n_lines[name]):
            for op in ("edit", "delete", "swap", "duplicate"):
                if op == "swap" and i + 1 >= n_lines[name]:
                    continue
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(template, run)
                path = transcript_path(run, name)
                lines = _lines(path)
                if op == "edit":
                    lines[i] = _edit(lines[i])
                elif op == "delete":
                    del lines[i]
                elif op == "swap":
                    lines[i], lines[i + 1] = lines[i + 1], lines[i]
                else:
                    lines.insert(i + 1, lines[i])
                _write(path, lines)
                report = audit_run(run, rules=RULES)
                assert not report.ok, (name, i, op)
                cases += 1
    assert cases > 60


def test_insertion_with_a_correctly_chained_line_is_detected(run):
    path = transcript_path(run, "bob")
    lines = _lines(path)
    # An attacker who recomputes `prev` for the inserted line still breaks the next one...
    fake = json.loads(lines[2])
    fake["prev"] = line_hash(lines[1])
    fake["at"] += 0.5
    _write(path, lines[:2] + [canonical(fake)] + lines[2:])
    assert "chain-broken" in codes(audit_run(run, rules=RULES))
    # ...and a line appended after the last seal is an unsealed session.
    extra = json.loads(lines[0])
    extra["prev"] = line_hash(lines[-1])
    _write(path, lines + [canonical(extra)])
    assert codes(audit_run(run, rules=RULES)) >= {"unsealed", "duplicate-record"}


def test_reseal_without_the_key_fails(run):
    path = transcript_path(run, "alice")
    lines = _lines(path)
    seal = json.loads(lines[-1])
    seal["count"] += 1
    _write(path, lines[:-1] + [canonical(seal)])
    assert codes(audit_run(run, rules=RULES)) == {"bad-seal"}
    # Dropping the seal line leaves an unsealed session.
    _write(path, lines[:-1])
    assert codes(audit_run(run, rules=RULES)) == {"unsealed"}


def test_forged_record_by_the_recipient_is_detected(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    real = sim.sealers["alice"].seal("bob", "toy", "share", b"x")
    # bob claims alice sent something else: he cannot produce alice's signature.
    sim.tr["bob"].record("received", real.header, size=real.size, digest="ab" * 32,
                         signature=real.signature)
    sim.finish()
    assert "bad-signature" in codes(audit_run(tmp_path, rules=RULES))


def test_lost_message(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    sim.send("alice", "bob", "share", deliver=False)  # the broker dropped it
    sim.finish()
    report = audit_run(tmp_path, rules=RULES)
    assert codes(report) == {"lost"}
    assert "never received" in report.errors[0].message


def test_undelivered_to_a_party_that_did_not_finish(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    sim.send("alice", "carol", "sum", deliver=False)
    sim.finish(skip=("carol",))  # carol crashed: no bye from her, no seal
    report = audit_run(tmp_path, rules=RULES)
    assert codes(report) == {"undelivered", "unsealed"}
    assert any(i.code == "bye-unreceived" for i in report.issues)  # carol never got the byes


def test_received_but_never_sent(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    sim.send("alice", "bob", "share", record_sent=False)
    sim.finish()
    # alice's later bye to bob also shows the hole in her sequence numbers.
    assert codes(audit_run(tmp_path, rules=RULES)) == {"unsent", "sequence"}


def test_sequence_gap(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    sim.sealers["alice"].seal("bob", "toy", "share", b"never sent")  # burns a seq
    sim.send("alice", "bob", "share")
    sim.finish()
    assert codes(audit_run(tmp_path, rules=RULES)) == {"sequence"}


def test_equivocation_same_seq_two_messages(tmp_path):
    sim = Sim(tmp_path)
    twin = Sealer(sim.dep, sim.keys["alice"], sim.session)
    twin.meet("bob", sim.sealers["bob"].ephemeral_pub)
    sim.sealers["bob"].meet("alice", twin.ephemeral_pub)  # a second announcement wins
    sim.send("alice", "bob", "share", deliver=False)
    sim.deliver(twin.seal("bob", "toy", "share", b"other").data, "bob")
    sim.finish()
    assert codes(audit_run(tmp_path, rules=RULES)) == {"mismatch"}


def test_nonconforming_and_undeclared_protocol(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    sim.send("carol", "alice", "share")      # aggregator may not send shares
    sim.send("alice", "bob", "share")
    sim.send("alice", "bob", "x", protocol="rogue")
    sim.finish()
    report = audit_run(tmp_path, rules=RULES)
    assert codes(report) == {"nonconforming"}
    messages = " ".join(i.message for i in report.errors)
    assert "aggregator->owner" in messages and "'rogue' is not declared" in messages
    assert len(report.errors) == 2


def test_rejected_envelopes_are_information(tmp_path):
    sim = Sim(tmp_path)
    sim.protocol()
    sim.deliver(b"garbage", "bob")
    s = sim.send("alice", "bob", "share")
    sim.deliver(s.data, "bob")  # replay
    sim.finish()
    report = audit_run(tmp_path, rules=RULES)
    assert report.ok, report.errors
    [info] = [i for i in report.issues if i.code == "rejected"]
    assert "duplicate: 1" in info.message and "malformed: 1" in info.message


def test_several_sessions_in_one_file_and_resume(tmp_path):
    clean_run(tmp_path)
    sim = Sim(tmp_path, session="s2", fresh=False)  # appends to the same files
    sim.protocol()
    sim.finish()
    report = audit_run(tmp_path, rules=RULES)
    assert report.ok, report.errors
    assert report.sessions == ["s1", "s2"]
    assert all(p["sealed_sessions"] == 2 for p in report.parties.values())


def test_torn_last_line_is_flagged(run):
    path = transcript_path(run, "bob")
    path.write_bytes(path.read_bytes() + b'{"event":"sent","par')
    assert codes(audit_run(run, rules=RULES)) >= {"torn-line", "malformed-line"}
    # A party resuming after the crash terminates the torn line and keeps chaining.
    keys = PrivateKeys.load(run / "keys" / "bob.key")
    t = Transcript(path, "bob", keys.sign_key)
    t.seal("s9")
    t.close()
    report = audit_run(run, rules=RULES)
    assert codes(report) == {"malformed-line"}


def test_missing_and_unknown_transcripts(run):
    os.rename(transcript_path(run, "carol"), transcript_path(run, "zed"))
    c = codes(audit_run(run, rules=RULES))
    # carol's messages now look unsent, and those to her undelivered.
    assert c == {"missing-transcript", "unknown-transcript", "unsent", "undelivered"}


def test_transcript_rejects_bad_records(tmp_path):
    keys = PrivateKeys.generate("alice")
    with Transcript(tmp_path / "t.jsonl", "alice", keys.sign_key) as t:
        with pytest.raises(ValueError, match="direction"):
            t.record("stolen", None, size=0, digest=None, signature=None)
        with pytest.raises(ValueError, match="needs the header"):
            t.record("sent", None, size=0, digest=None, signature=None)


def test_cli_exit_codes_and_json(run, capsys, monkeypatch):
    import parties.audit as audit_mod
    monkeypatch.setattr(audit_mod, "default_rules", lambda: RULES)
    assert cli_main(["audit", str(run)]) == 0
    assert "audit passed" in capsys.readouterr().out
    assert cli_main(["audit", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    path = transcript_path(run, "alice")
    lines = _lines(path)
    _write(path, lines[:3] + lines[4:])
    assert cli_main(["audit", str(run)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "chain-broken" in out
    assert cli_main(["audit", str(run / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
