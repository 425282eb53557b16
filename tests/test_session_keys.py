"""Per-run session keys, played as the broker (which records and replays everything)
and as whoever steals every party's identity key file after a run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from parties.envelope import EnvelopeError, Sealer, introduce
from parties.identity import Deployment, DeploymentError, PrivateKeys, new_local_deployment
from parties.party import run_party
from parties.transcript import Transcript, transcript_path

SESSION = "same-session-id"


@pytest.fixture
def world(tmp_path) -> tuple[Deployment, dict[str, PrivateKeys], Path]:
    dep = new_local_deployment(tmp_path, [("alice", "player"), ("bob", "player")],
                               "mqtt://127.0.0.1:1883", name="keys-test")
    return dep, {n: PrivateKeys.load(tmp_path / "keys" / f"{n}.key") for n in dep.parties}, tmp_path


def run_of(dep, keys) -> dict[str, Sealer]:
    sealers = {n: Sealer(dep, k, SESSION) for n, k in keys.items()}
    introduce(*sealers.values())
    return sealers


def test_a_message_of_an_earlier_run_cannot_be_replayed_into_a_later_one(world):
    dep, keys, _ = world
    first = run_of(dep, keys)
    recorded = first["alice"].seal("bob", "pingpong", "ball", b"run 1").data
    assert first["bob"].open(recorded).payload == b"run 1"
    second = run_of(dep, keys)                        # same deployment, same session id
    with pytest.raises(EnvelopeError) as refused:     # the broker replays run 1's message
        second["bob"].open(recorded)
    assert refused.value.reason == "decrypt"
    genuine = second["alice"].seal("bob", "pingpong", "ball", b"run 2")
    assert genuine.header.seq == 0                    # ... which is not taken as a duplicate
    assert second["bob"].open(genuine.data).payload == b"run 2"


def test_stolen_identity_keys_do_not_open_a_recorded_run(world):
    dep, keys, _ = world
    run = run_of(dep, keys)
    announced = {n: s.ephemeral_pub for n, s in run.items()}   # public, in presence messages
    recorded = [run["alice"].seal("bob", "pingpong", "ball", b"secret %d" % i).data for i in range(3)]
    # Later: every key file leaks. The thief replays the announcements it recorded.
    thief = Sealer(dep, keys["bob"], SESSION)
    thief.meet("alice", announced["alice"])
    for data in recorded:
        with pytest.raises(EnvelopeError) as e:
            thief.open(data)
        assert e.value.reason == "decrypt"


def test_a_party_refuses_a_session_it_already_completed(world):
    dep, keys, run_dir = world
    with Transcript(transcript_path(run_dir, "alice"), "alice", keys["alice"].sign_key) as t:
        t.seal(SESSION)
    with pytest.raises(DeploymentError, match="already completed by alice"):
        asyncio.run(run_party(dep, keys["alice"], "pingpong", SESSION, {}, run_dir))


@pytest.mark.parametrize("params", [{"mode": "plaintext"}, {"noise_seed": 3}])
def test_a_party_refuses_insecure_parameters_unless_its_operator_opts_in(tmp_path, params):
    import json
    import subprocess
    import sys
    new_local_deployment(tmp_path, [("qp", "qp"), ("ap", "ap"), ("pg", "pg"), ("dealer", "dealer")],
                         "mqtt://127.0.0.1:9", name="insecure-test")
    cmd = [sys.executable, "-m", "parties.party", "--deployment", str(tmp_path / "deployment.toml"),
           "--name", "ap", "--key", str(tmp_path / "keys" / "ap.key"), "--protocol", "capc",
           "--session", "s", "--params", json.dumps(params), "--peer-timeout", "1",
           "--connect-timeout", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--allow-insecure" in out.stderr, out.stderr[-500:]
    assert "Traceback" not in out.stderr
    # with the local opt-in it gets past the check (and then finds no broker on port 9)
    out = subprocess.run(cmd + ["--allow-insecure"], capture_output=True, text=True, timeout=120)
    assert "--allow-insecure" not in out.stderr and "broker" in out.stderr, out.stderr[-500:]
