"""The auditor's trust anchor and the guardian's budget ledger, played as the adversary:
whoever can write a run directory (or the guardian's disk) after the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from parties.audit import audit_run
from parties.cli import main as cli_main
from parties.identity import Deployment, PrivateKeys, new_local_deployment
from parties.ledger import BudgetLedger, LedgerTruncated, head_path
from parties.transcript import Transcript, transcript_path
from tests.test_transcript_audit import PARTIES, RULES, Sim, clean_run


@pytest.fixture
def run(tmp_path) -> Path:
    return clean_run(tmp_path / "run")


def fabricate(real: Path, where: Path) -> Path:
    """A run with the same party names and fresh keys, freshly and validly signed."""
    shutil.copytree(real, where)
    shutil.rmtree(where / "transcripts")
    new_local_deployment(where / "fresh", PARTIES, "mqtt://127.0.0.1:1883", name="audtest")
    for item in ("deployment.toml", "keys"):
        target = where / item
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(where / "fresh" / item), str(target))
    shutil.rmtree(where / "fresh")
    sim = Sim(where, fresh=False)
    sim.protocol()
    sim.finish()
    return where


def test_a_fabricated_run_fails_against_the_pinned_deployment(run, tmp_path):
    real = Deployment.load(run / "deployment.toml")
    fake = fabricate(run, tmp_path / "fake")
    assert audit_run(fake, rules=RULES).ok  # self-consistent: only a trust anchor tells
    for pinned in ({"fingerprint": real.fingerprint()}, {"fingerprint": real.fingerprint()[:16]},
                   {"trusted": real}):
        report = audit_run(fake, rules=RULES, **pinned)
        assert not report.ok and {i.code for i in report.errors} == {"untrusted-deployment"}
        assert report.matched == 0  # nothing of the fake run was taken as verified
    good = audit_run(run, rules=RULES, fingerprint=real.fingerprint())
    assert good.ok and good.pinned and good.fingerprint == real.fingerprint()


def test_cli_prints_and_pins_the_fingerprint(run, tmp_path, capsys, monkeypatch):
    import parties.audit as audit_mod
    monkeypatch.setattr(audit_mod, "default_rules", lambda: RULES)
    fp = Deployment.load(run / "deployment.toml").fingerprint()
    assert cli_main(["audit", str(run)]) == 0
    assert fp in capsys.readouterr().out
    fake = fabricate(run, tmp_path / "fake")
    assert cli_main(["audit", str(fake), "--fingerprint", fp]) == 1
    assert "untrusted-deployment" in capsys.readouterr().out
    assert cli_main(["audit", str(fake), "--deployment", str(run / "deployment.toml")]) == 1
    capsys.readouterr()
    assert cli_main(["audit", str(run), "--fingerprint", "xyz"]) == 2
    assert "hex digits" in capsys.readouterr().err


def test_cli_bad_inputs_are_one_line_errors(run, capsys):
    assert cli_main(["audit", str(run / "deployment.toml")]) == 2
    assert "is a file" in capsys.readouterr().err
    (run / "deployment.toml").write_bytes(bytes(range(256)) * 4)
    assert cli_main(["audit", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and "Traceback" not in err


# -- the guardian's ledger ---------------------------------------------------------

def guardian_run(run_dir: Path, charges: int = 5) -> tuple[Path, PrivateKeys]:
    """alice acts as a guardian: a signed ledger, its head recorded in her transcript."""
    sim = Sim(run_dir)
    sim.protocol()
    keys = sim.keys["alice"]
    ledger_file = run_dir / "ledger" / "alice.jsonl"
    ledger_file.parent.mkdir()
    with BudgetLedger.create(ledger_file, epsilon_budget=50.0, delta=1e-5,
                             signer=keys.sign_key) as ledger:
        for i in range(charges):
            assert ledger.request_gnmax(2.0, f"q{i}").granted
        sim.tr["alice"].record_ledger(*ledger.head)
    sim.finish()
    return ledger_file, keys


def _cut_back(ledger_file: Path, keep: int) -> None:
    """Drop the last entries and rewrite the head file to match: unnoticed by the ledger."""
    lines = ledger_file.read_bytes().splitlines()[:keep]
    ledger_file.write_bytes(b"".join(line + b"\n" for line in lines))
    last = json.loads(lines[-1])
    head_path(ledger_file).write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))


def test_a_ledger_cut_back_after_the_run_is_caught(tmp_path):
    ledger_file, keys = guardian_run(tmp_path / "run")
    report = audit_run(tmp_path / "run", rules=RULES)
    assert report.ok, report.errors
    assert any(i.code == "ledger" and "5 charges" in i.message for i in report.issues)
    _cut_back(ledger_file, keep=3)
    BudgetLedger.open(ledger_file, signer=keys.sign_key).close()  # consistent on its own
    report = audit_run(tmp_path / "run", rules=RULES)
    assert {i.code for i in report.errors} == {"ledger-rolled-back"}
    # and the guardian refuses to go on with it
    recorded = Transcript(transcript_path(tmp_path / "run", "alice"), "alice",
                          keys.sign_key).last_ledger_head()
    with BudgetLedger.open(ledger_file, signer=keys.sign_key) as ledger, \
            pytest.raises(LedgerTruncated, match="cut off"):
        ledger.check_head(*recorded, where="alice's transcript")


def test_a_rewritten_ledger_entry_is_caught(tmp_path):
    ledger_file, keys = guardian_run(tmp_path / "run")
    # Lower a charge and recompute the whole SHA-256 chain and head, as anyone could
    # for an unkeyed chain.
    import hashlib
    lines = [json.loads(x) for x in ledger_file.read_bytes().splitlines()]
    lines[2]["sigma"] = 200.0
    prev = "0" * 64
    out = []
    for entry in lines:
        entry.pop("hash"), entry.pop("sig", None)
        entry["prev"] = prev
        body = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        prev = hashlib.sha256(body).hexdigest()
        out.append(json.dumps({**entry, "hash": prev}, sort_keys=True, separators=(",", ":")))
    ledger_file.write_text("\n".join(out) + "\n")
    head_path(ledger_file).write_text(json.dumps({"seq": len(out) - 1, "hash": prev}))
    report = audit_run(tmp_path / "run", rules=RULES)
    assert "ledger" in {i.code for i in report.errors}
    with pytest.raises(Exception, match="not signed by the ledger's signer"):
        BudgetLedger.open(ledger_file, signer=keys.sign_key)
