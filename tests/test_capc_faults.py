"""CaPC in crypto mode with a party SIGKILLed at a given step of a batch, between real
processes over the embedded broker (run_parties.py).

Each run must end within seconds of the kill (plus the liveness grace), name the
dead party in every survivor's error, keep what finished (the querying party's
labels of earlier batches, the guardian's signed ledger), leave no process behind,
and audit with the dead party named. An answering party's death is survivable:
the querying party goes on with the others.

By default four cases run (one per role, each at a different step, including the
answering party dying inside its argmax 2PC, which used to hang the dealer);
``CONFIDANT_FAULT_MATRIX=full`` runs every role at every step (20 runs, ~20 min).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QP, AP, PG, DEALER = "party1", "party2", "guardian", "dealer"
APS = 2
# Per batch the QP sends one query and one 2PC schedule per AP, then the final
# 2PC's schedule; the PG receives one vote share per AP. The kill comes in the
# second batch, so the first batch's labels exist.
STEPS = {  # step -> (whose transcript, event, step name, count that triggers the kill)
    "query sent": (QP, "sent", "query", APS + 1),
    "argmax 2PC": (QP, "sent", "schedule", (APS + 1) + 1),
    "vote shares sent": (PG, "received", "vote_share", APS + 1),
    "final 2PC": (QP, "sent", "schedule", 2 * (APS + 1)),
    "answers in": (QP, "received", "answer", APS + 1),
}
DEFAULT = [(AP, "argmax 2PC"), (PG, "vote shares sent"), (DEALER, "final 2PC"),
           (QP, "query sent")]
FULL = [(victim, step) for victim in (QP, AP, PG, DEALER) for step in STEPS]
CASES = FULL if os.environ.get("CONFIDANT_FAULT_MATRIX") == "full" else DEFAULT
GRACE = 45.0  # seconds from the kill to the end of the run: liveness grace plus audit


def _count(run_dir: Path, party: str, event: str, step: str) -> int:
    path = run_dir / "transcripts" / f"{party}.jsonl"
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # being written
        if rec.get("event") == event and rec.get("header", {}).get("step") == step:
            n += 1
    return n


def _pids(tmp_path: Path, name: str | None = None) -> list[int]:
    pattern = f"{tmp_path}.*--name {name} " if name else str(tmp_path)
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


@pytest.mark.parametrize("victim,step", CASES, ids=[f"{v}-{s.replace(' ', '_')}" for v, s in CASES])
def test_capc_crypto_party_killed(tmp_path, victim, step):
    cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path),
           "--timeout", "300", "capc", "--parties", str(APS + 1), "--queries", "4",
           "--batch-size", "2", "--epochs", "2", "--budget", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    watch, event, name, count = STEPS[step]
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
            run_dirs = [d for d in tmp_path.iterdir() if d.is_dir()]
            if run_dirs and _count(run_dirs[0], watch, event, name) >= count:
                for pid in _pids(tmp_path, victim):
                    os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=GRACE + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    assert killed_at is not None, f"never reached '{step}'"
    run_dir = Path(out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    parties = results["parties"]
    assert not parties[victim]["ok"] and proc.returncode != 0

    survivable = victim == AP
    if survivable:  # the QP finished with the other AP; only the dead AP failed
        qp = parties[QP]["result"]
        assert qp["answering_parties_at_end"] == APS - 1 and qp["queries"] == 4
        assert all(r["ok"] for n, r in parties.items() if n != AP), parties
    else:
        assert ended - killed_at < GRACE, f"the run took {ended - killed_at:.0f} s after the kill"
        # every survivor that could not finish its part names the dead party; one whose
        # part was over (an AP after its last vote share) ends normally
        failed = {n: r for n, r in parties.items() if n != victim and not r["ok"]}
        assert QP in failed or victim == QP, parties[QP]
        for name, rec in failed.items():
            assert victim in rec["error"] and rec.get("fault") == f"peer:{victim}", (name, rec)
        if victim != QP:  # what finished stays: the first batch's labels
            assert len(parties[QP]["partial"]["labels"]) >= 1, parties[QP]
    # the guardian's ledger is intact and signed (the audit verifies it), and the
    # audit names the dead party
    assert not results["audit"]["ok"]
    issues = json.dumps(results["audit"]["issues"])
    assert victim in issues
    ledger = [i for i in results["audit"]["issues"] if i["code"].startswith("ledger")]
    assert [i["code"] for i in ledger] == ["ledger"] and "signed" in ledger[0]["message"], ledger
    assert _pids(tmp_path) == [], "a party process was left behind"
