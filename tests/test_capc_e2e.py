"""CaPC between OS processes over real brokers: same labels as the simulation,
clean audit, and nothing in the clear on the broker."""

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import aiomqtt
import numpy as np

from learning.datasets import party_data
from mpc import encoding
from parties.audit import audit_run
from parties.broker import EmbeddedBroker
from tests.capc_harness import run_capc
from tests.mosquitto_fixture import requires_mosquitto, start_mosquitto, stop_mosquitto

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"queries": 10, "batch_size": 5, "epochs": 5, "noise_seed": 5, "sigma_gnmax": 0.5,
          "epsilon_budget": 1e4}


class Recorder:
    """Subscribes to every topic and keeps every payload the broker relays."""

    def __init__(self, port: int):
        self.port, self.payloads, self._stop = port, [], threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="recorder") as client:
            await client.subscribe("#", qos=1)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    async with asyncio.timeout(0.2):
                        async for msg in client.messages:
                            self.payloads.append(bytes(msg.payload))
                except TimeoutError:
                    pass

    def __enter__(self):
        self.thread.start()
        assert self._ready.wait(10), "recorder could not subscribe"
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(10)


def _run_parties(runs: Path, url: str) -> Path:
    cmd = [sys.executable, str(ROOT / "run_parties.py"), "--broker", url, "--runs-dir", str(runs),
           "capc", "--parties", "3", "--queries", str(PARAMS["queries"]),
           "--batch-size", str(PARAMS["batch_size"]), "--epochs", str(PARAMS["epochs"]),
           "--noise-seed", str(PARAMS["noise_seed"]), "--sigma-gnmax", str(PARAMS["sigma_gnmax"]),
           "--budget", str(PARAMS["epsilon_budget"])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    assert run_dir.is_dir(), out.stdout[-500:]
    return run_dir


def _check(run_dir: Path, payloads: list[bytes], tmp_path: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    assert all(r["ok"] for r in results["parties"].values()), results["parties"]
    ledger, = run_dir.parent.glob("pg-*-ledger.jsonl")  # the guardian's, outside the run
    assert results["audit"]["ok"] and audit_run(run_dir, ledgers={"guardian": ledger}).ok
    qp = results["parties"]["party1"]["result"]
    # the same labels as the one-process plaintext simulation with the same noise
    plain = asyncio.run(run_capc(tmp_path, {**PARAMS, "mode": "plaintext"}))
    assert qp["labels"] == plain["qp"].public["labels"]
    # nothing in the clear on the broker: queries, labels (as one-hot ring vectors)
    assert len(payloads) > 50
    blob = b"\x00".join(payloads)
    data = party_data("digits", ["party1", "party2", "party3"], "party1", queries=PARAMS["queries"])
    for row in data.x_queries.numpy():
        assert row.astype(np.float32).tobytes() not in blob
        assert row.astype(np.float64).tobytes() not in blob
    for label in set(qp["labels"].values()):
        onehot = encoding.encode(np.eye(data.num_classes)[label]).tobytes()
        assert onehot not in blob


def test_capc_between_processes_on_amqtt(tmp_path):
    with EmbeddedBroker(allow_anonymous=True) as broker, Recorder(broker.port) as rec:
        run_dir = _run_parties(tmp_path / "runs", broker.url)
    _check(run_dir, rec.payloads, tmp_path)


@requires_mosquitto
def test_capc_between_processes_on_mosquitto(tmp_path):
    conf = tmp_path / "mq"
    conf.mkdir()
    (conf / "mosquitto.conf").write_text("listener 1883\nallow_anonymous true\n"
                                         "set_tcp_nodelay true\npersistence false\n")
    port, proc = start_mosquitto(conf)
    try:
        with Recorder(port) as rec:
            run_dir = _run_parties(tmp_path / "runs", f"mqtt://127.0.0.1:{port}")
    finally:
        stop_mosquitto(proc)
    _check(run_dir, rec.payloads, tmp_path)


def test_guardian_restarted_between_sessions_keeps_its_budget(tmp_path):
    """Two QPs in turn: a fresh PG process per session opens the same ledger, so the
    second session's spending starts where the first one's ended, and the budget holds."""
    with EmbeddedBroker(allow_anonymous=True) as broker:
        cmd = [sys.executable, str(ROOT / "run_parties.py"), "--broker", broker.url,
               "--runs-dir", str(tmp_path), "capc", "--mode", "plaintext", "--parties", "3",
               "--qps", "2", "--queries", "6", "--batch-size", "3", "--epochs", "3",
               "--sigma-gnmax", "0.5", "--budget", "80"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    first, second = (json.loads((Path(d) / "results.json").read_text())
                     for d in out.stdout.strip().splitlines()[-2:])
    # a plaintext simulation: every party's result says so
    assert all("mode=plaintext" in r["insecure"][0] for r in first["parties"].values())
    pg1, pg2 = first["parties"]["guardian"]["result"], second["parties"]["guardian"]["result"]
    qp2 = second["parties"]["party2"]["result"]
    assert pg1["granted"] > 0 and pg2["epsilon"] > pg1["epsilon"]
    # the second session paid on top of the first: its first batch already shows more
    assert qp2["curve"][0]["epsilon"] > pg1["epsilon"]
    assert pg2["epsilon"] <= 80 and qp2["refused"] > 0   # and the budget still binds
    ledgers = list(tmp_path.glob("pg-*-ledger.jsonl"))
    assert len(ledgers) == 1


def _received_steps(run_dir: Path, party: str) -> set[tuple[str, str]]:
    lines = [json.loads(x) for x in (run_dir / "transcripts" / f"{party}.jsonl").read_text().splitlines()]
    return {(ln["header"]["sender"], ln["header"]["step"]) for ln in lines
            if ln.get("event") == "received" and ln["header"]["kind"] == "msg"}


def test_who_receives_what_in_a_capc_run(tmp_path):
    """From the transcripts: an AP never receives a reveal or a decision (no label),
    the PG receives vote shares and 2PC traffic only (no logit, no label), and
    only the QP receives the PG's output shares."""
    with EmbeddedBroker(allow_anonymous=True) as broker:
        run_dir = _run_parties(tmp_path / "runs", broker.url)
    for ap in ("party2", "party3"):
        steps = {s for _, s in _received_steps(run_dir, ap)}
        assert steps <= {"context", "query", "crypten", "tuple"}, steps
    pg = _received_steps(run_dir, "guardian")
    assert {s for _, s in pg} <= {"vote_share", "crypten", "tuple"}
    assert {f for f, s in pg if s == "vote_share"} == {"party2", "party3"}
    qp = _received_steps(run_dir, "party1")
    assert ("guardian", "reveal") in qp and ("guardian", "decision") in qp
    dealer = {s for _, s in _received_steps(run_dir, "dealer")}
    assert dealer <= {"schedule", "tuple_req"}


def test_answering_party_process_killed_mid_run(tmp_path):
    """SIGKILL an AP process after the first batch: the QP finishes with the others,
    every query is answered and charged, and the audit names the dead party."""
    import os
    import signal
    with EmbeddedBroker(allow_anonymous=True) as broker:
        cmd = [sys.executable, "-u", str(ROOT / "run_parties.py"), "--broker", broker.url,
               "--runs-dir", str(tmp_path), "capc", "--mode", "plaintext", "--parties", "4",
               "--queries", "12", "--batch-size", "4", "--epochs", "3", "--sigma-gnmax", "0.5",
               "--budget", "1e4"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=ROOT)
        killed, lines = False, []
        for line in proc.stdout:
            lines.append(line)
            if not killed and "party1" in line and "batch 1/" in line:
                pids = subprocess.run(["pgrep", "-f", f"{tmp_path}.*--name party3 "],
                                      capture_output=True, text=True).stdout.split()
                assert pids, "party3's process not found"
                for pid in pids:
                    os.kill(int(pid), signal.SIGKILL)
                killed = True
        proc.wait(300)
    assert killed, "".join(lines[-30:])
    run_dir = Path(lines[-1].strip())
    results = json.loads((run_dir / "results.json").read_text())
    qp = results["parties"]["party1"]["result"]
    assert qp["answering_parties_at_end"] == 2 and qp["answered"] == 12
    assert results["parties"]["guardian"]["result"]["granted"] == 12
    assert not results["parties"]["party3"]["ok"]
    assert proc.returncode != 0  # a party failed: the run says so
    assert not results["audit"]["ok"]
    assert any("party3" in json.dumps(i) for i in results["audit"]["issues"])
