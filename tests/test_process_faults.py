"""Other protocols between processes with a party SIGKILLed mid-protocol: Hash-Comb
training (an owner in round 2) and the 2PC argmax (a holder or the dealer inside the
2PC), Hash-Comb's setup and recovery (a crash injected at an exact message). The run
ends within seconds, every survivor names the dead party, no process is left, and the
audit names it. (CaPC: tests/test_capc_faults.py.)"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from parties.audit import audit_run
from tests import test_parties_e2e as e2e
from tests.test_capc_faults import GRACE, _pids, count_events, run_and_kill
from tests.test_parties_e2e import Session, check_hcsetup, owners, run_ok

broker_factory = e2e.broker_factory

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, args: list[str], victim: str, reached) -> list[dict]:
    """run_parties.py ARGS with ``victim`` killed once ``reached(run_dir)``; the run ends within
    seconds and leaves no process. Returns its sessions (each with parties and audit)."""
    cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path),
           "--timeout", "300", *args]
    out, _, killed_at, ended = run_and_kill(cmd, tmp_path, victim, reached)
    assert ended - killed_at < GRACE
    assert _pids(tmp_path) == [], "a party process was left behind"
    results = json.loads((Path(out.strip().splitlines()[-1]) / "results.json").read_text())
    return results.get("sessions", [results])


def _everyone_names(session: dict, victim: str) -> None:
    for name, rec in session["parties"].items():
        assert not rec["ok"], (name, rec)
        if name != victim:
            assert victim in rec["error"] and rec["fault"] == f"peer:{victim}", (name, rec)
    assert victim in json.dumps(session["audit"]["issues"])


def test_hashcomb_fl_owner_killed_mid_round(tmp_path):
    def round_two_upload_out(run_dir: Path) -> bool:
        return count_events(run_dir, "owner2", "sent", protocol="hcfl",
                            recipient="aggregator") >= 2

    sessions = _run(tmp_path, ["hashcomb-fl", "--owners", "3", "--rounds", "4", "--model",
                               "logreg", "--no-baseline"], "owner2", round_two_upload_out)
    _everyone_names(next(s for s in sessions if s["protocol"] == "hcfl"), "owner2")


@pytest.mark.parametrize("victim", ["bob", "dealer"])
def test_argmax2pc_party_killed_inside_the_2pc(tmp_path, victim):
    def under_way(run_dir: Path) -> bool:  # alice's tenth message to bob, of ~57 rounds
        return count_events(run_dir, "alice", "sent", protocol="argmax2pc", recipient="bob") >= 10

    (session,) = _run(tmp_path, ["argmax2pc", "--batch", "64"], victim, under_way)
    _everyone_names(session, victim)


# -- Hash-Comb setup and recovery: crashes at an exact message (confidant party --crash-before) --

SETUP_CRASHES = {  # victim dies instead of sending this message
    "owner-during-shares": ("owner2", "hcsetup.share", 2),
    "owner-during-opening": ("owner3", "hcsetup.open", 1),
    "aggregator-during-agreement": ("aggregator", "hcsetup.agreed", 2),
}
NO_TIMEOUT = 600  # the protocol's own timeout: far beyond the wait, so only death detection ends it


def _crash(victim: str, kind: str, n: int) -> dict[str, list[str]]:
    return {victim: ["--crash-before", f"{kind}:{n}"]}


def _audit_names(run_dir: Path, victim: str) -> None:
    report = audit_run(run_dir)
    assert not report.ok and victim in json.dumps([asdict(i) for i in report.issues]), report


@pytest.mark.parametrize("case", SETUP_CRASHES)
def test_hcsetup_party_crashes_mid_protocol(broker_factory, case):
    victim, kind, n = SETUP_CRASHES[case]
    b = broker_factory("amqtt", owners(4))
    names = list(b.deployment.parties)
    results = Session(b.run_dir, "hcsetup", {"levels": 6, "timeout": NO_TIMEOUT}, names,
                      extra=_crash(victim, kind, n)).wait(45)
    assert results[victim]["exit"] == -signal.SIGKILL
    finished = {n for n, r in results.items() if r["ok"]}
    # only an owner that had its 'agreed' before the aggregator died finishes
    assert finished == ({"owner1"} if victim == "aggregator" else set()), results
    for name, rec in results.items():
        if name not in finished | {victim}:
            assert victim in rec["error"] and rec["fault"] == f"peer:{victim}", (name, rec["error"])
    _audit_names(b.run_dir, victim)


@pytest.mark.parametrize("threshold", [2, 3])
def test_hcrecover_helper_crashes(broker_factory, threshold):
    """owner3 dies instead of handing owner2 its share: with t = 2 the two other shares
    recover the secret; with t = 3 they cannot, and owner2's error names owner3."""
    b = broker_factory("amqtt", owners(4))
    names = list(b.deployment.parties)
    kc = check_hcsetup(run_ok(b.run_dir, "hcsetup", {"levels": 6, "threshold": threshold}, names),
                       dict.fromkeys(names, b.run_dir))
    (b.run_dir / "state" / "owner2.state").unlink()
    results = Session(b.run_dir, "hcrecover", {"recovering": "owner2", "timeout": NO_TIMEOUT},
                      names, extra=_crash("owner3", "hcrecover.share", 1)).wait(45)
    assert results["owner3"]["exit"] == -signal.SIGKILL
    assert all(results[n]["ok"] for n in ("owner1", "owner4", "aggregator")), results
    owner2 = results["owner2"]
    if threshold == 2:
        assert owner2["ok"], owner2["error"]
        assert owner2["result"]["key_check"] == kc and owner2["result"]["unreachable"] == ["owner3"]
    else:
        assert not owner2["ok"] and "owner3" in owner2["error"], owner2["error"]
    _audit_names(b.run_dir, "owner3")
