"""FedAvg with SecAgg+ between real party processes, through amqtt and Mosquitto, with a
client crashing at each stage of a round (``confidant party --crash-before``): the round
completes over the survivors, the model equals plain FedAvg's over the same clients
within quantization, every survivor finishes, and the audit's only errors are the
crashed client's. And run_parties.py fedavg with --dropout, end to end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parties.audit import audit_run
from tests import test_parties_e2e as e2e
from tests.test_parties_e2e import Session, state

broker_factory = e2e.broker_factory
ROOT = Path(__file__).resolve().parents[1]

CLIENTS = [f"c{i:02d}" for i in range(1, 6)]
PARTIES = [(c, "client") for c in CLIENTS] + [("server", "server")]
PARAMS = {"rounds": 2, "model": "logreg", "lr": 0.5, "timeout": 600}   # only death detection ends a wait
VICTIM = "c03"
# 5 clients: a complete graph (degree 4). Per round a client sends 4 shares, 5 keys (4 neighbours
# and the server), 1 masked input, 4 confirmations, 1 unmask message. The victim dies
# in round 2, part-way through the stages that go to several peers.
STAGES = {"shares": 4 + 2, "keys": 5 + 3, "masked": 2, "confirm": 4 + 2, "unmask": 2}
IN_ROUND_2_SUM = {"confirm", "unmask"}   # its masked input arrived: it is in the sum
STEP = 2 * 0.5 / ((1 << 16) - 1)          # the quantizer's step at clip 0.5, 16 bits


def _run(b, params: dict, crash: str | None) -> dict[str, dict]:
    extra = {VICTIM: ["--crash-before", crash]} if crash else {}
    results = Session(b.run_dir, "fedavg", {**PARAMS, **params}, [n for n, _ in PARTIES],
                      extra=extra).wait(90)
    for name, rec in results.items():
        if name == VICTIM and crash:
            assert rec["exit"] == -signal.SIGKILL, rec
        else:
            assert rec["ok"], (name, rec.get("error"), rec["log"][-2000:])
    return results


@pytest.mark.parametrize("broker,stage", [
    *[("amqtt", s) for s in STAGES],
    pytest.param("mosquitto", "shares", marks=pytest.mark.mosquitto)])
def test_a_client_crashing_at_each_stage_is_left_out_exactly(broker_factory, broker, stage):
    b = broker_factory(broker, PARTIES)
    secure = _run(b, {"secagg": True}, f"fedavg.{stage}:{STAGES[stage]}")
    models = {n: state(b.run_dir, n)["fedavg_model"] for n in CLIENTS if n != VICTIM}
    rounds = secure["server"]["result"]["rounds"]
    survivors = 5 if stage in IN_ROUND_2_SUM else 4
    assert [r["clients"] for r in rounds] == [5, survivors]
    assert rounds[1]["dropped"] == ([] if stage in IN_ROUND_2_SUM else [VICTIM])
    report = audit_run(b.run_dir)
    assert report.errors and all(VICTIM in json.dumps(e.__dict__) for e in report.errors), report.errors

    # plain FedAvg over the same clients in each round: the same model within quantization
    plain = _run(b, {"secagg": False}, None if stage in IN_ROUND_2_SUM else "fedavg.update:2")
    assert [r["clients"] for r in plain["server"]["result"]["rounds"]] == [5, survivors]
    reference = state(b.run_dir, "c01")["fedavg_model"]
    for name, model in models.items():
        assert np.array_equal(model, models["c01"]), name        # every survivor holds one model
    assert np.max(np.abs(models["c01"] - reference)) < 3 * PARAMS["rounds"] * STEP


def test_run_parties_fedavg_with_dropout(tmp_path):
    """The user's command: SecAgg+ and the plain baseline, two of eight clients crashed at
    random stages; exit 0, both sessions lose the same clients, the table and plot exist."""
    cmd = [sys.executable, str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path), "--timeout", "300",
           "fedavg", "--clients", "8", "--rounds", "3", "--model", "logreg", "--lr", "0.5",
           "--dropout", "0.25"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    sessions = json.loads((run_dir / "results.json").read_text())["sessions"]
    assert [s["parties"]["server"]["result"]["secagg"] for s in sessions] == [True, False]
    in_sum = [[r["clients"] for r in s["parties"]["server"]["result"]["rounds"]] for s in sessions]
    assert in_sum[0] == in_sum[1] and in_sum[0][-1] <= 8 and sum(in_sum[0]) < 24, in_sum
    assert "all from the planned crashes" in out.stdout and (run_dir / "fedavg.png").exists()
    assert "SecAgg+ accuracy" in out.stdout and "seconds per round and stage" in out.stdout


def test_a_server_that_sends_its_own_mask_key_is_refused(broker_factory, monkeypatch):
    """Keys travel client to client, signed by the sender: a server can only send a key as
    itself, and a client refuses a key message from the server (conformance). The forged
    keys never enter a mask: the round completes, exactly as plain FedAvg."""
    import os
    monkeypatch.setenv("CONFIDANT_PROTOCOLS", f"{os.environ.get('CONFIDANT_PROTOCOLS', '')},"
                                              "fedavg=tests.malicious_fedavg")
    b = broker_factory("amqtt", PARTIES)
    results = _run(b, {"rounds": 1, "secagg": True}, None)
    for name in CLIENTS:
        lines = [json.loads(x) for x in (b.run_dir / "transcripts" / f"{name}.jsonl").read_text().splitlines()]
        refused = [ln for ln in lines if ln.get("event") == "rejected"]
        assert [ln["reason"] for ln in refused] == ["conformance"], (name, refused)
        assert results[name]["result"]["rounds"][0]["clients_in_sum"] == 5
    models = [state(b.run_dir, n)["fedavg_model"] for n in CLIENTS]
    assert all(np.array_equal(m, models[0]) for m in models)
    monkeypatch.setenv("CONFIDANT_PROTOCOLS", os.environ["CONFIDANT_PROTOCOLS"].replace(
        ",fedavg=tests.malicious_fedavg", ""))
    _run(b, {"rounds": 1, "secagg": False}, None)
    assert np.max(np.abs(models[0] - state(b.run_dir, "c01")["fedavg_model"])) < 3 * STEP
    report = audit_run(b.run_dir)
    assert sum(i.code == "rejected" for i in report.issues) == len(CLIENTS)
    # and the audit convicts the server: its transcript shows the messages no rule allows
    assert report.errors and all("fedavg.keys' server->" in e.message or "from server" in e.message
                                 for e in report.errors), report.errors


@pytest.mark.mosquitto
def test_light_clients_many_to_a_process_through_mosquitto(tmp_path):
    """Scale mode: 40 light clients (own identity and MQTT connection each, 20 to a
    process, synthetic public updates), SecAgg+ through one Mosquitto: the aggregate
    matches the plain mean within the quantization step in every round."""
    from tests.mosquitto_fixture import HAVE_MOSQUITTO, SKIP_REASON, start_mosquitto, stop_mosquitto
    if not HAVE_MOSQUITTO:
        pytest.skip(SKIP_REASON)
    conf = tmp_path / "broker"
    conf.mkdir()
    (conf / "mosquitto.conf").write_text("listener 1883 127.0.0.1\nallow_anonymous true\n")
    port, proc = start_mosquitto(conf)
    try:
        cmd = [sys.executable, str(ROOT / "run_parties.py"), "--runs-dir", str(tmp_path), "--timeout", "300",
               "--broker", f"mqtt://127.0.0.1:{port}", "fedavg", "--clients", "40", "--rounds", "2",
               "--synthetic-dim", "2000", "--clients-per-process", "20", "--no-baseline"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    finally:
        stop_mosquitto(proc)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    session = json.loads((run_dir / "results.json").read_text())
    assert len(list((run_dir / "logs").glob("client*.log"))) == 2      # two client processes
    rounds = session["parties"]["server"]["result"]["rounds"]
    assert [r["clients"] for r in rounds] == [40, 40]
    assert all(r["max_error"] < r["quantization_step"] for r in rounds), rounds
    assert session["audit"]["errors"] == 0
