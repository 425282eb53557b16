"""Identities, key files and deployment files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from parties.cli import main as cli_main
from parties.identity import (
    Deployment,
    DeploymentError,
    PrivateKeys,
    check_mosquitto_password,
    keygen,
    mosquitto_password_hash,
    new_local_deployment,
)

PARTIES = [("alice", "owner"), ("bob", "owner"), ("agg", "aggregator")]


@pytest.fixture
def local(tmp_path: Path) -> tuple[Path, Deployment]:
    return tmp_path, new_local_deployment(tmp_path, PARTIES, "mqtt://127.0.0.1:1883", name="t1")


def _doc(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _write(path: Path, doc: dict) -> Path:
    import tomli_w
    path.write_text(tomli_w.dumps(doc))
    return path


def test_local_deployment_round_trip(local):
    run_dir, dep = local
    loaded = Deployment.load(run_dir / "deployment.toml")
    assert loaded == dep
    assert loaded.role_of("agg") == "aggregator"
    assert loaded.names_with_role("owner") == ["alice", "bob"]
    assert (loaded.broker_host, loaded.broker_port, loaded.uses_tls) == ("127.0.0.1", 1883, False)
    assert loaded.inbox_topic("bob") == "confidant/t1/inbox/bob"
    assert loaded.presence_topic("bob") == "confidant/t1/presence/bob"
    for name, _ in PARTIES:
        key_file = run_dir / "keys" / f"{name}.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        keys = PrivateKeys.load(key_file)
        assert loaded.check_keys(keys) == loaded.parties[name]
    with pytest.raises(DeploymentError, match="not in deployment"):
        loaded.role_of("mallory")


def test_dump_load_round_trip(local, tmp_path):
    _, dep = local
    dep.dump(tmp_path / "copy.toml")
    assert Deployment.load(tmp_path / "copy.toml") == dep


def test_mosquitto_hash_matches_mosquitto_passwd_format():
    # Reference produced by `mosquitto_passwd -b pw alice secret` (Mosquitto 2.0.11).
    ref = ("$7$101$pYORHoEqWVu5yDfB$a82FXzYVfnp/IQQhJL/XFhvpuWCg+sCH0pXVUGAdDgEmHyx50nYwhP/"
           "XvEcYSAhb5BCTrAhDFjip+Ov3X0JY7Q==")
    import base64
    assert mosquitto_password_hash("secret", salt=base64.b64decode("pYORHoEqWVu5yDfB")) == ref
    assert check_mosquitto_password("secret", ref)
    assert not check_mosquitto_password("Secret", ref)
    assert not check_mosquitto_password("secret", "garbage")
    assert mosquitto_password_hash("x") != mosquitto_password_hash("x")  # fresh salts


def test_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "a.key"
    old_umask = os.umask(0)  # even with a permissive umask the file is 0600
    try:
        card = keygen("alice", "owner", path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert PrivateKeys.load(path).sign_pub == card.sign_pub
    with pytest.raises(DeploymentError, match="already exists"):
        keygen("alice", "owner", path)
    os.chmod(path, 0o644)
    with pytest.raises(DeploymentError, match="chmod 600"):
        PrivateKeys.load(path)
    with pytest.raises(DeploymentError, match="does not exist"):
        PrivateKeys.load(tmp_path / "missing.key")


def test_check_keys_refuses_foreign_key_file(local, tmp_path):
    _, dep = local
    keygen("alice", "owner", tmp_path / "other.key")
    with pytest.raises(DeploymentError, match="do not match"):
        dep.check_keys(PrivateKeys.load(tmp_path / "other.key"))
    keygen("zed", "owner", tmp_path / "zed.key")
    with pytest.raises(DeploymentError, match="not in deployment"):
        dep.check_keys(PrivateKeys.load(tmp_path / "zed.key"))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["party"][1].update(name="alice"), r"#2 \('alice'\).*appears twice"),
    (lambda d: d["party"][1].update(name="bo/b"), r"#2.*not a valid name"),
    (lambda d: d["party"][2].update(role=""), r"#3.*role '' is not a valid name"),
    (lambda d: d["party"][0].update(sign_pub="!!notbase64"), r"#1.*sign_pub is not valid base64"),
    (lambda d: d["party"][0].update(box_pub="AAAA"), r"#1.*box_pub decodes to 3 bytes"),
    (lambda d: d["party"][1].update(sign_pub=d["party"][0]["sign_pub"]), r"#2.*same key as party 'alice'"),
    (lambda d: d["party"][0].update(mqtt_password_hash="plain"), r"#1.*mqtt_password_hash"),
    (lambda d: d["party"][0].pop("box_pub"), r"#1.*lacks box_pub"),
    (lambda d: d["party"][0].update(colour="red"), r"#1.*unknown field.*colour"),
    (lambda d: d["deployment"].update(broker_url="http://x:1"), r"broker_url 'http://x:1'"),
    (lambda d: d["deployment"].update(broker_url="mqtt://h:99999"), r"broker_url"),
    (lambda d: d["deployment"].update(broker_url="mqtts://h:8883"), r"mqtts:// but .* no ca"),
    (lambda d: d["deployment"].update(max_message_bytes=10), r"max_message_bytes = 10"),
    (lambda d: d["deployment"].update(max_message_bytes=True), r"max_message_bytes"),
    (lambda d: d["deployment"].update(name="a b"), r"\[deployment\] name 'a b'"),
    (lambda d: d["deployment"].update(tls={"certfile": "c.pem"}), r"both certfile and keyfile"),
    (lambda d: d.pop("party"), r"no \[\[party\]\] entries"),
    (lambda d: d.pop("deployment"), r"missing \[deployment\]"),
])
def test_deployment_errors_name_the_entry(local, tmp_path, mutate, message):
    run_dir, _ = local
    doc = _doc(run_dir / "deployment.toml")
    mutate(doc)
    with pytest.raises(DeploymentError, match=message):
        Deployment.load(_write(tmp_path / "bad.toml", doc))


def test_invalid_toml_and_missing_file(tmp_path):
    (tmp_path / "x.toml").write_text("[deployment\nname=")
    with pytest.raises(DeploymentError, match="not valid TOML"):
        Deployment.load(tmp_path / "x.toml")
    with pytest.raises(DeploymentError, match="does not exist"):
        Deployment.load(tmp_path / "nope.toml")


def test_tls_paths_are_relative_to_the_deployment_file(local, tmp_path):
    run_dir, _ = local
    doc = _doc(run_dir / "deployment.toml")
    doc["deployment"].update(broker_url="mqtts://broker.example:8883",
                             tls={"ca": "ca.crt", "certfile": "/etc/b.crt", "keyfile": "b.key"})
    (tmp_path / "sub").mkdir()
    dep = Deployment.load(_write(tmp_path / "sub" / "d.toml", doc))
    assert dep.tls.ca == str(tmp_path / "sub" / "ca.crt")
    assert dep.tls.certfile == "/etc/b.crt"
    assert (dep.uses_tls, dep.broker_port) == (True, 8883)


def test_new_local_deployment_refuses_duplicates(tmp_path):
    with pytest.raises(DeploymentError, match="unique"):
        new_local_deployment(tmp_path, [("a", "x"), ("a", "y")], "mqtt://127.0.0.1:1")


def test_keygen_cli_prints_a_pastable_card(tmp_path, capsys):
    out = tmp_path / "k.key"
    assert cli_main(["keygen", "--name", "carol", "--role", "owner", "--out", str(out)]) == 0
    card = tomllib.loads(capsys.readouterr().out)["party"][0]
    doc = {"deployment": {"name": "d", "broker_url": "mqtt://127.0.0.1:1883"}, "party": [card]}
    dep = Deployment.load(_write(tmp_path / "d.toml", doc))
    assert dep.check_keys(PrivateKeys.load(out)).name == "carol"
    # Second run refuses to overwrite, with a non-zero exit and no traceback.
    assert cli_main(["keygen", "--name", "carol", "--role", "owner", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_keygen_cli_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "parties.cli", "keygen", "--name", "bad name",
                        "--role", "owner", "--out", str(tmp_path / "k")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a valid name" in r.stderr
    assert not (tmp_path / "k").exists()
