"""Other protocols between processes with a party SIGKILLed mid-protocol: Hash-Comb
training (an owner in round 2) and the 2PC argmax (a holder or the dealer inside the
2PC). The run ends within seconds, every survivor names the dead party, no process
is left, and the audit names it. (CaPC: tests/test_capc_faults.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_capc_faults import GRACE, _pids, count_events, run_and_kill

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
