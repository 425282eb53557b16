"""End to end: protocol sessions between real party processes, through the embedded
amqtt broker and a real Mosquitto (generated passwords and ACL), then audited.

The helpers at the top (party processes, brokers) are shared with
tests/test_faults.py and tests/test_broker_recording.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mpc import wire
from parties.audit import audit_run
from parties.broker import EmbeddedBroker, free_port
from parties.broker_config import new_admin_credentials, write_broker_config
from parties.identity import Deployment, new_local_deployment
from protocols.hcsetup import KEY_BYTES, key_check
from tests.mosquitto_fixture import HAVE_MOSQUITTO, SKIP_REASON, start_mosquitto, stop_mosquitto

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-m", "parties.cli"]
BROKERS = ["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]


# -- party processes ------------------------------------------------------------

class Session:
    """One protocol session: one OS process per party, like run_parties.py starts them."""

    def __init__(self, run_dir: Path, protocol: str, params: dict, names: list[str], *,
                 session: str | None = None, workdirs: dict[str, Path] | None = None,
                 command: list[str] | None = None, extra: dict[str, list[str]] | None = None):
        self.run_dir, self.protocol, self.names = run_dir, protocol, names
        self.session = session or secrets.token_hex(8)
        self.workdirs = workdirs or dict.fromkeys(names, run_dir)
        self.procs: dict[str, subprocess.Popen] = {}
        for name in names:
            wd = self.workdirs[name]
            (wd / "logs").mkdir(parents=True, exist_ok=True)
            key = wd / f"{name}.key" if workdirs else run_dir / "keys" / f"{name}.key"
            cert = wd / f"{name}.crt"  # a TLS client certificate handed out by broker-config
            tls = ["--tls-cert", str(cert), "--tls-key", str(wd / f"{name}.tls.key")] \
                if cert.exists() else []
            out = open(wd / "logs" / f"{name}.{self.session}.log", "wb")
            self.procs[name] = subprocess.Popen(
                [*(command or [PY, "-m", "parties.party"]), "--deployment", str(wd / "deployment.toml"),
                 "--name", name, "--key", str(key), "--protocol", protocol,
                 "--session", self.session, "--params", json.dumps(params),
                 "--workdir", str(wd), "--peer-timeout", "60", *tls, *(extra or {}).get(name, [])],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            out.close()

    def log(self, name: str) -> str:
        return (self.workdirs[name] / "logs" / f"{name}.{self.session}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log(name)):
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                raise AssertionError(f"{name} never logged {pattern!r}:\n{self.log(name)[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = 90) -> dict[str, dict]:
        """Wait for every party; return each one's result record (with its exit code)."""
        deadline = time.monotonic() + timeout
        try:
            for name, proc in self.procs.items():
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.names)
                    raise AssertionError(f"{self.protocol}: {name} still running after "
                                         f"{timeout:g} s\n{logs}") from None
        finally:
            self.kill()
        return {n: self.result(n) for n in self.names}

    def result(self, name: str) -> dict:
        path = self.workdirs[name] / "results" / f"{name}.json"
        rec = json.loads(path.read_text()) if path.exists() else {"ok": False, "error": "no result"}
        if rec.get("session") != self.session:
            rec = {"ok": False, "error": "no result for this session"}
        rec["exit"] = self.procs[name].returncode
        rec["log"] = self.log(name)
        return rec

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_ok(run_dir: Path, protocol: str, params: dict, names: list[str], **kw) -> dict[str, dict]:
    results = Session(run_dir, protocol, params, names, **kw).wait()
    for name, rec in results.items():
        assert rec["ok"] and rec["exit"] == 0, f"{name}: {rec.get('error')}\n{rec['log'][-3000:]}"
    return results


def state(workdir: Path, name: str) -> dict:
    return wire.decode((workdir / "state" / f"{name}.state").read_bytes())


def audit_cli(*run_dirs: Path) -> list[subprocess.CompletedProcess]:
    """`confidant audit DIR --json` for each directory, all at once."""
    procs = [subprocess.Popen([*CLI, "audit", str(d), "--json"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for d in run_dirs]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def assert_clean(report) -> None:
    """No errors; the only unmatched messages are goodbyes to peers that had already left."""
    assert report.ok, report.errors
    assert report.messages > 0
    assert {i.code for i in report.issues} <= {"bye-unreceived", "rejected"}, report.issues


# -- brokers --------------------------------------------------------------------

class Broker:
    """A running broker for one deployment: the embedded amqtt, or Mosquitto with the
    generated config (passwords, ACL) and an admin user for recorders and injectors."""

    def __init__(self, kind: str, run_dir: Path, parties: list[tuple[str, str]],
                 max_message_bytes: int = 64 * 2**20):
        if kind == "mosquitto" and not HAVE_MOSQUITTO:
            pytest.skip(SKIP_REASON)
        self.kind, self.run_dir = kind, run_dir
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.deployment = new_local_deployment(run_dir, parties, self.url,
                                               name=f"t{secrets.token_hex(3)}",
                                               max_message_bytes=max_message_bytes)
        self.admin: tuple[str, str] | None = None
        if kind == "mosquitto":
            admin_hash = new_admin_credentials(run_dir / "admin.toml")
            creds = tomllib.loads((run_dir / "admin.toml").read_text())
            self.admin = (creds["username"], creds["password"])
            write_broker_config(self.deployment, run_dir / "broker", port=self.port,
                                bind="127.0.0.1", admin_password_hash=admin_hash)
        self.proc: subprocess.Popen | None = None
        self._amqtt: EmbeddedBroker | None = None
        self.start()

    def start(self) -> None:
        if self.kind == "mosquitto":
            _, self.proc = start_mosquitto(self.run_dir / "broker", port=self.port)
        else:
            if self._amqtt is None:
                self._amqtt = EmbeddedBroker(self.port, log_path=str(self.run_dir / "broker.log"),
                                             auth_dir=self.run_dir / "broker-auth")
                self._amqtt.admit(self.deployment)
                self.admin = self._amqtt.admin
            self._amqtt.start()
            self.proc = self._amqtt.proc

    def kill(self) -> None:
        """Die without a goodbye (SIGKILL): no last wills, no retained messages kept."""
        if self.proc is not None and self.proc.poll() is None:
            if self.kind == "mosquitto":
                self.proc.kill()
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.kind == "mosquitto" and self.proc is not None:
            stop_mosquitto(self.proc)
        elif self._amqtt is not None:
            self._amqtt.stop()

    def client_args(self) -> dict:
        """Keyword arguments for an aiomqtt.Client with full rights on this broker."""
        kw: dict = {"hostname": "127.0.0.1", "port": self.port}
        if self.admin:
            kw.update(username=self.admin[0], password=self.admin[1])
        return kw


@pytest.fixture
def broker_factory(tmp_path):
    started: list[Broker] = []

    def make(kind: str, parties: list[tuple[str, str]], sub: str = "run", **kw) -> Broker:
        b = Broker(kind, tmp_path / sub, parties, **kw)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


def holder_inputs(batch: int, classes: int) -> dict[str, list[list[float]]]:
    """Two holders' score matrices whose sum has a clear argmax in every row."""
    rng = np.random.default_rng(secrets.randbits(64))
    while True:
        a, b = rng.uniform(-6, 6, (2, batch, classes))
        top2 = np.sort(a + b, axis=-1)[:, -2:]
        if np.all(top2[:, 1] - top2[:, 0] > 0.05):
            return {"alice": a.tolist(), "bob": b.tolist()}


ARGMAX_PARTIES = [("alice", "holder"), ("bob", "holder"), ("dealer", "dealer")]


def owners(n: int) -> list[tuple[str, str]]:
    return [(f"owner{i}", "owner") for i in range(1, n + 1)] + [("aggregator", "aggregator")]


# -- checks ---------------------------------------------------------------------

def check_hcsetup(results: dict[str, dict], workdirs: dict[str, Path]) -> str:
    """Owners share one secret (consistent with their private state); the aggregator
    has only the public parameters. Returns the common key_check."""
    owner_names = [n for n, r in results.items() if r["role"] == "owner"]
    checks = {results[n]["result"]["key_check"] for n in owner_names}
    assert len(checks) == 1
    for n in owner_names:
        st = state(workdirs[n], n)
        assert len(st["hashcomb_key"]) == KEY_BYTES
        assert key_check(st["hashcomb_key"] + st["hashcomb_seed"]) in checks
    agg = results["aggregator"]
    assert set(agg["result"]) == {"role", "params", "params_fingerprint"}
    assert set(state(workdirs["aggregator"], "aggregator")) == {"hashcomb_params"}
    fingerprints = {r["result"]["params_fingerprint"] for r in results.values()}
    assert len(fingerprints) == 1
    # From the aggregator's own transcript: it received nothing but 'params'.
    lines = [json.loads(x) for x in
             (workdirs["aggregator"] / "transcripts" / "aggregator.jsonl").read_text().splitlines()]
    steps = {ln["header"]["step"] for ln in lines if ln["event"] == "received"
             and ln["header"]["kind"] == "msg"}
    assert steps == {"params"}
    return checks.pop()


def check_argmax(results: dict[str, dict], inputs: dict) -> None:
    expected = np.argmax(np.asarray(inputs["alice"]) + np.asarray(inputs["bob"]), axis=-1)
    assert results["alice"]["result"]["learned"] == expected.tolist()
    assert results["bob"]["result"]["learned"] is None
    assert results["dealer"]["result"]["requests_served"] > 0


def tamper(run_dir: Path, dest: Path, party: str) -> Path:
    """A copy of the run with one line in the middle of one transcript edited."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("broker", "keys", "state"))
    path = dest / "transcripts" / f"{party}.jsonl"
    lines = path.read_text().splitlines()
    i = len(lines) // 2
    obj = json.loads(lines[i])
    obj["at"] = obj["at"] + 1.0
    lines[i] = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    return dest


# -- tests ----------------------------------------------------------------------

def test_hcsetup_recover_audit_amqtt(broker_factory, tmp_path):
    b = broker_factory("amqtt", owners(4))
    run = b.run_dir
    workdirs = dict.fromkeys(b.deployment.parties, run)
    results = run_ok(run, "hcsetup", {"levels": 6, "threshold": 3}, list(b.deployment.parties))
    kc = check_hcsetup(results, workdirs)

    # owner2 loses its state and recovers the secret from its peers (a new session)
    (run / "state" / "owner2.state").unlink()
    rec = run_ok(run, "hcrecover", {"recovering": "owner2"}, list(b.deployment.parties))
    assert rec["owner2"]["result"]["recovered"] and rec["owner2"]["result"]["key_check"] == kc
    st = state(run, "owner2")
    assert key_check(st["hashcomb_key"] + st["hashcomb_seed"]) == kc

    done, bad = audit_cli(run, tamper(run, tmp_path / "tampered", "owner3"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["messages"] > 0 and len(report["sessions"]) == 2
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "chain-broken" in bad.stdout


@pytest.mark.parametrize("kind", BROKERS)
def test_argmax2pc(kind, broker_factory):
    b = broker_factory(kind, ARGMAX_PARTIES)
    inputs = holder_inputs(3, 10)
    results = run_ok(b.run_dir, "argmax2pc", {"inputs": inputs, "batch": 3, "classes": 10},
                     ["alice", "bob", "dealer"])
    check_argmax(results, inputs)
    assert_clean(audit_run(b.run_dir))  # in-process: the CLI is exercised elsewhere


@pytest.mark.mosquitto
def test_per_machine_flow_with_cli(tmp_path):
    """The README's per-machine example, TLS on: keygen on each 'machine', a hand-assembled
    deployment.toml, broker-config (a CA, the broker's and each party's certificate),
    Mosquitto from the generated config, `confidant party` per machine with its certificate,
    then audit the collected transcripts; then an owner that lost its state recovers."""
    if not HAVE_MOSQUITTO:
        pytest.skip(SKIP_REASON)
    parties = owners(3)
    machines = {name: tmp_path / "machines" / name for name, _ in parties}
    cards = []
    for name, role in parties:
        machines[name].mkdir(parents=True)
        out = subprocess.run([*CLI, "keygen", "--name", name, "--role", role,
                              "--out", str(machines[name] / f"{name}.key")],
                             cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
        cards.append(out[out.index("[[party]]"):])
        assert oct((machines[name] / f"{name}.key").stat().st_mode & 0o777) == "0o600"
    port = free_port()
    deployment_toml = (f'[deployment]\nname = "clinics"\nbroker_url = "mqtts://127.0.0.1:{port}"\n'
                       '[deployment.tls]\nca = "ca.crt"\n\n' + "\n".join(cards))
    coordinator = tmp_path / "coordinator"
    coordinator.mkdir()
    (coordinator / "deployment.toml").write_text(deployment_toml)
    subprocess.run([*CLI, "broker-config", str(coordinator / "deployment.toml"),
                    "--out", str(tmp_path / "broker"), "--bind", "127.0.0.1"],
                   cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    clients = tmp_path / "broker" / "tls" / "clients"
    for name, m in machines.items():  # what the operator hands to each machine
        shutil.copy(coordinator / "deployment.toml", m / "deployment.toml")
        shutil.copy(coordinator / "ca.crt", m / "ca.crt")
        shutil.copy(clients / f"{name}.crt", m / f"{name}.crt")
        shutil.copy(clients / f"{name}.key", m / f"{name}.tls.key")
    _, mosq = start_mosquitto(tmp_path / "broker", port=port)
    try:
        party_cmd = [PY, "-m", "parties.cli", "party"]
        names = [n for n, _ in parties]
        results = run_ok(tmp_path, "hcsetup", {}, names, workdirs=machines, command=party_cmd)
        kc = check_hcsetup(results, machines)
        (machines["owner1"] / "state" / "owner1.state").unlink()
        rec = run_ok(tmp_path, "hcrecover", {"recovering": "owner1"}, names, workdirs=machines,
                     command=party_cmd)
        assert rec["owner1"]["result"]["key_check"] == kc
    finally:
        stop_mosquitto(mosq)
    # Collect every machine's transcript beside the deployment file, then audit.
    (coordinator / "transcripts").mkdir()
    for name, m in machines.items():
        shutil.copy(m / "transcripts" / f"{name}.jsonl", coordinator / "transcripts")
    assert Deployment.load(coordinator / "deployment.toml").name == "clinics"
    assert_clean(audit_run(coordinator))


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_run_parties_simulation_and_ctrl_c(tmp_path):
    """run_parties.py: fresh deployment, embedded broker, a process per party, results,
    audit, the run directory on the last line; Ctrl-C stops every process it started."""
    runs = tmp_path / "runs"
    done = subprocess.run([PY, "run_parties.py", "--runs-dir", str(runs), "hashcomb-setup",
                           "--owners", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert run_dir.parent == runs and (run_dir / "deployment.toml").exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert all(r["ok"] for r in results["parties"].values()) and results["audit"]["ok"]
    assert "audit: clean" in done.stdout

    slow = tmp_path / "interrupted"
    # a session that runs for minutes (a 2PC argmax ended within a second under load, before
    # the interrupt came)
    proc = subprocess.Popen([PY, "run_parties.py", "--runs-dir", str(slow), "fedavg", "--clients", "3",
                             "--rounds", "500", "--model", "logreg", "--no-baseline"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a job started in the background by a non-interactive shell (as a CI
                            # script may) inherits SIGINT ignored: give the runner a terminal's default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while len(_processes_mentioning(str(slow))) < 5:  # the runner and its 4 parties
            assert time.monotonic() < deadline and proc.poll() is None, "parties never started"
            time.sleep(0.05)
        time.sleep(2)   # the last party's spawn has returned (its process shows up before)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "every party process was stopped" in out and "Traceback" not in out
    assert _processes_mentioning(str(slow)) == []


def test_a_failure_says_whose_fault_it_is():
    from mpc.channel import PeerGone
    from parties.party import fault_of
    from protocols import InternalError, ParameterError, PeerMisbehaved
    assert fault_of(ParameterError("queries must be at least 1")) == "local"
    assert fault_of(PeerMisbehaved("ap2", "sent a malformed vote share")) == "peer:ap2"
    assert fault_of(PeerGone("dealer")) == "peer:dealer"
    assert fault_of(InternalError("bug")) == "internal"
