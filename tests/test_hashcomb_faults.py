"""Hash-Comb federated training between processes with an owner SIGKILLed in round 2:
the run ends within seconds, every survivor names the dead owner, no process is left,
and the audit names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.test_capc_faults import GRACE, _pids, run_and_kill

ROOT = Path(__file__).resolve().parents[1]


def _sent(run_dir: Path, party: str, protocol: str) -> int:
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
            and header.get("recipient") == "aggregator"
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
