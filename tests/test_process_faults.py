"""Other protocols between processes with a party SIGKILLed mid-protocol: Hash-Comb
training (an owner in round 2) and the 2PC argmax (a holder or the dealer inside the
2PC). The run ends within seconds, every survivor names the dead party, no process
is left, and the audit names it. (CaPC: tests/test_capc_faults.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_capc_faults import GRACE, _pids, run_and_kill

ROOT = Path(__file__).resolve().parents[1]


def _sent(run_dir: Path, party: str, protocol: str, to: str = "aggregator") -> int:
    path = run_dir / "transcripts" / f"{party}.jsonl"
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        header = rec.get("header", {})
        n += rec.get("event") == "sent" and header.get("protocol") == protocol \
            and header.get("recipient") == to
    return n


def test_hashcomb_fl_owner_killed_mid_round(tmp_path):
    victim = "owner2"
    cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path),
           "--timeout", "300", "hashcomb-fl", "--owners", "3", "--rounds", "4",
           "--model", "logreg", "--no-baseline"]
    # kill it once its round-2 upload is out
    out, _, killed_at, ended = run_and_kill(cmd, tmp_path, victim,
                                            lambda run_dir: _sent(run_dir, victim, "hcfl") >= 2)
    assert ended - killed_at < GRACE
    run_dir = Path(out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    hcfl = next(s for s in results["sessions"] if s["protocol"] == "hcfl")
    for name, rec in hcfl["parties"].items():
        assert not rec["ok"], (name, rec)
        if name != victim:
            assert victim in rec["error"] and rec["fault"] == f"peer:{victim}", (name, rec)
    assert victim in json.dumps(hcfl["audit"]["issues"])
    assert _pids(tmp_path) == [], "a party process was left behind"


@pytest.mark.parametrize("victim", ["bob", "dealer"])
def test_argmax2pc_party_killed_inside_the_2pc(tmp_path, victim):
    cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path),
           "--timeout", "300", "argmax2pc", "--batch", "64"]
    # alice's tenth CrypTen message to bob: the 2PC is under way (it takes ~57 rounds)
    out, _, killed_at, ended = run_and_kill(
        cmd, tmp_path, victim, lambda run_dir: _sent(run_dir, "alice", "argmax2pc", "bob") >= 10)
    assert ended - killed_at < GRACE
    results = json.loads((Path(out.strip().splitlines()[-1]) / "results.json").read_text())
    for name, rec in results["parties"].items():
        assert not rec["ok"], (name, rec)
        if name != victim:
            assert victim in rec["error"] and rec["fault"] == f"peer:{victim}", (name, rec)
    assert victim in json.dumps(results["audit"]["issues"])
    assert _pids(tmp_path) == [], "a party process was left behind"
