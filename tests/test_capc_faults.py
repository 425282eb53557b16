"""CaPC in crypto mode with a party SIGKILLed at a given step of a batch, between real
processes over the embedded broker (run_parties.py).

Each run must end within seconds of the kill (plus the liveness grace), name the
dead party in every survivor's error, keep what finished (the querying party's
labels of earlier batches, the guardian's signed ledger), leave no process behind,
and audit with the dead party named. An answering party's death is survivable:
the querying party goes on with the others.

By default six cases run: one per role on the embedded amqtt broker, each at a
different step (including the answering party dying inside its argmax 2PC, which
used to hang the dealer), and two on Mosquitto. ``CONFIDANT_FAULT_MATRIX=full``
runs every role at every step on both brokers (40 runs, ~25 min).
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

from tests.mosquitto_fixture import HAVE_MOSQUITTO, SKIP_REASON, start_mosquitto, stop_mosquitto

ROOT = Path(__file__).resolve().parents[1]
QP, AP, PG, DEALER = "party1", "party2", "guardian", "dealer"
APS = 2
# Per batch the QP sends one query and one 2PC schedule per AP, then the final
# 2PC's schedule; the PG receives one vote share per AP. The kill comes in the
# second of three batches: the first batch's labels exist, and every role still
# has work to do after any step of it.
STEPS = {  # step -> (whose transcript, event, step name, count that triggers the kill)
    "query sent": (QP, "sent", "query", APS + 1),
    "argmax 2PC": (QP, "sent", "schedule", (APS + 1) + 1),
    "vote shares sent": (PG, "received", "vote_share", APS + 1),
    "final 2PC": (QP, "sent", "schedule", 2 * (APS + 1)),
    "answers in": (QP, "received", "answer", APS + 1),
}
DEFAULT = [("amqtt", AP, "argmax 2PC"), ("amqtt", PG, "vote shares sent"),
           ("amqtt", DEALER, "final 2PC"), ("amqtt", QP, "query sent"),
           ("mosquitto", AP, "vote shares sent"), ("mosquitto", DEALER, "argmax 2PC")]
FULL = [(broker, victim, step) for broker in ("amqtt", "mosquitto")
        for victim in (QP, AP, PG, DEALER) for step in STEPS]
CASES = FULL if os.environ.get("CONFIDANT_FAULT_MATRIX") == "full" else DEFAULT
GRACE = 45.0  # seconds from the kill to the end of the run: liveness grace plus audit


def count_events(run_dir: Path, party: str, event: str, **header: str) -> int:
    """How many ``event`` lines (sent/received) of ``party``'s transcript have these header fields."""
    path = run_dir / "transcripts" / f"{party}.jsonl"
    if not path.exists():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # being written
        got = rec.get("header", {})
        n += rec.get("event") == event and all(got.get(k) == v for k, v in header.items())
    return n


def _pids(tmp_path: Path, name: str | None = None) -> list[int]:
    pattern = f"{tmp_path}.*--name {name} " if name else str(tmp_path)
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def run_and_kill(cmd: list[str], tmp_path: Path, victim: str, reached) -> tuple[str, int, float, float]:
    """Run ``cmd`` (run_parties.py with --runs-dir tmp_path) and SIGKILL ``victim``'s process
    as soon as ``reached(run_dir)``; returns (output, exit code, kill time, end time)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
            run_dirs = [d for d in tmp_path.iterdir() if d.is_dir()]
            if run_dirs and reached(run_dirs[0]):
                pids = _pids(tmp_path, victim)
                assert pids, f"{victim} had already exited"
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=GRACE + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_at is not None, "the run never reached the step of the kill"
    return out, proc.returncode, killed_at, time.monotonic()


@pytest.fixture
def broker_url(request, tmp_path_factory):
    """None: run_parties.py's embedded amqtt broker (with credentials). For Mosquitto, an
    anonymous loopback listener, since run_parties.py makes fresh parties each run."""
    if request.param == "amqtt":
        yield None
        return
    if not HAVE_MOSQUITTO:
        pytest.skip(SKIP_REASON)
    conf = tmp_path_factory.mktemp("mosquitto")
    (conf / "mosquitto.conf").write_text("listener 1883\nallow_anonymous true\n"
                                         "set_tcp_nodelay true\npersistence false\n")
    port, proc = start_mosquitto(conf)
    yield f"mqtt://127.0.0.1:{port}"
    stop_mosquitto(proc)


@pytest.mark.parametrize("broker_url,victim,step", [
    pytest.param(b, v, s, id=f"{b}-{v}-{s.replace(' ', '_')}",
                 marks=[pytest.mark.mosquitto] if b == "mosquitto" else [])
    for b, v, s in CASES], indirect=["broker_url"])
def test_capc_crypto_party_killed(tmp_path, broker_url, victim, step):
    cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path),
           *(["--broker", broker_url] if broker_url else []),
           "--timeout", "300", "capc", "--parties", str(APS + 1), "--queries", "6",
           "--batch-size", "2", "--epochs", "2", "--budget", "1000"]
    watch, event, name, count = STEPS[step]
    out, returncode, killed_at, ended = run_and_kill(
        cmd, tmp_path, victim, lambda run_dir: count_events(run_dir, watch, event, step=name) >= count)
    run_dir = Path(out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    parties = results["parties"]
    assert not parties[victim]["ok"] and returncode != 0

    survivable = victim == AP
    if survivable:  # the QP finished with the other AP; only the dead AP failed
        qp = parties[QP]["result"]
        assert qp["answering_parties_at_end"] == APS - 1 and qp["queries"] == 6
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
