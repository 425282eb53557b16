"""DSSGD between real processes over the embedded broker (run_parties.py): a private run
whose participants' ledgers the audit verifies, and an asynchronous run in which a
participant is SIGKILLed mid-run: the others finish, the server names it, the audit too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_capc_faults import _pids, count_events, run_and_kill

ROOT = Path(__file__).resolve().parents[1]


def test_private_dssgd_between_processes_charges_signed_ledgers(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path), "--timeout", "300",
         "dssgd", "--parties", "3", "--rounds", "3", "--dp-epsilon", "1", "--budget", "2.5",
         "--hidden", "16"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["audit"]["ok"], results["audit"]
    summary = results["summary"]
    assert summary["participants"] == 3 and 0 < summary["centralized"] <= 1
    assert summary["privacy"]["rounds_charged"] == 2 and summary["privacy"]["rounds_refused"] == 1
    ledgers = {i["party"]: i["message"] for i in results["audit"]["issues"] if i["code"] == "ledger"}
    for i in (1, 2, 3):   # each participant's own ledger: two charges, one refusal, signed
        name = f"participant{i}"
        assert "signed" in ledgers[name] and "(2 charges)" in ledgers[name], ledgers
        lines = (run_dir / "ledger" / f"{name}.jsonl").read_text().splitlines()
        assert [json.loads(x).get("type") for x in lines[1:]] == ["charge", "charge", "refused"]
    assert (run_dir / "dssgd.png").stat().st_size > 10_000
    said = " ".join(done.stdout.split())   # the console wraps long lines
    assert "basic composition" in said and "centralized (data pooled)" in said


def test_async_dssgd_survives_a_participant_killed_mid_run(tmp_path):
    cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path),
           "--timeout", "300", "dssgd", "--parties", "4", "--rounds", "40", "--epochs", "2",
           "--order", "async", "--lr", "0.02", "--no-baselines"]

    def third_upload_out(run_dir: Path) -> bool:
        return count_events(run_dir, "participant3", "sent", protocol="dssgd", step="push") >= 3

    out, returncode, _, _ = run_and_kill(cmd, tmp_path, "participant3", third_upload_out)
    assert returncode != 0      # a party failed: the one that was killed
    results = json.loads((Path(out.strip().splitlines()[-1]) / "results.json").read_text())
    parties = results["parties"]
    assert not parties["participant3"]["ok"]
    assert all(parties[n]["ok"] for n in parties if n != "participant3"), parties
    server = parties["server"]["result"]
    assert list(server["dropped"]) == ["participant3"] and "offline" in server["dropped"]["participant3"]
    assert all(len(parties[f"participant{i}"]["result"]["rounds"]) == 40 for i in (1, 2, 4))
    assert server["traffic"]["participant3"]["uploads"] < 40
    assert "participant3" in json.dumps(results["audit"]["issues"])
    assert _pids(tmp_path) == [], "a party process was left behind"
