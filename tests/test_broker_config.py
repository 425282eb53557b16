"""Mosquitto configuration: generated files, and a real Mosquitto enforcing them."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import stat
import tomllib
from pathlib import Path

import aiomqtt
import pytest
import tomli_w

from parties.broker_config import ADMIN_USER, new_admin_credentials, write_broker_config
from parties.cli import main as cli_main
from parties.identity import Deployment, DeploymentError, PrivateKeys, new_local_deployment
from tests.mosquitto_fixture import (
    HAVE_MOSQUITTO,
    SKIP_REASON,
    requires_mosquitto,
    start_mosquitto,
    stop_mosquitto,
)

PARTIES = [("alice", "owner"), ("bob", "owner"), ("carol", "aggregator")]


def make(tmp: Path, url: str = "mqtt://127.0.0.1:1883") -> tuple[Deployment, dict[str, str]]:
    dep = new_local_deployment(tmp, PARTIES, url, name="bctest")
    pw = {n: PrivateKeys.load(tmp / "keys" / f"{n}.key").mqtt_password for n in dep.parties}
    return dep, pw


# -- the files -------------------------------------------------------------

def test_files_and_acl(tmp_path):
    dep, _ = make(tmp_path)
    admin_hash = new_admin_credentials(tmp_path / "admin.toml")
    cfg = write_broker_config(dep, tmp_path / "broker", admin_password_hash=admin_hash)
    assert cfg.port == 1883 and cfg.bind == "127.0.0.1"  # the broker_url's host
    for private in (cfg.passwd, cfg.acl, tmp_path / "admin.toml"):
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    users = dict(line.split(":", 1) for line in cfg.passwd.read_text().splitlines())
    assert users == {**{n: p.mqtt_password_hash for n, p in dep.parties.items()},
                     ADMIN_USER: admin_hash}
    conf = cfg.conf.read_text()
    assert "allow_anonymous false" in conf and "\nlistener 1883 127.0.0.1\n" in conf
    assert "\nlistener 1883\n" in write_broker_config(dep, tmp_path / "all", bind="all").conf.read_text()
    acl = cfg.acl.read_text().split("\n\n")
    alice = next(block for block in acl if block.startswith("user alice"))
    assert alice.splitlines()[1:] == [
        "topic read confidant/bctest/inbox/alice",
        "topic readwrite confidant/bctest/presence/alice",
        "topic write confidant/bctest/inbox/bob", "topic read confidant/bctest/presence/bob",
        "topic write confidant/bctest/inbox/carol", "topic read confidant/bctest/presence/carol"]


def test_errors(tmp_path):
    dep, _ = make(tmp_path)
    with pytest.raises(DeploymentError, match="port 0"):
        write_broker_config(dep, tmp_path / "b", port=0)
    doc = dep.to_dict()
    doc["party"][0]["name"] = ADMIN_USER
    clash = Deployment.from_dict(doc)
    with pytest.raises(DeploymentError, match="clashes with the admin"):
        write_broker_config(clash, tmp_path / "b", admin_password_hash=dep.parties["bob"].mqtt_password_hash)
    doc = dep.to_dict()
    (tmp_path / "ca.crt").write_text("someone else's CA")
    doc["deployment"].update(broker_url="mqtts://h:8883", tls={"ca": str(tmp_path / "ca.crt")})
    with pytest.raises(DeploymentError, match="exists but its key .* does not"):
        write_broker_config(Deployment.from_dict(doc), tmp_path / "b")


def test_cli(tmp_path, capsys):
    make(tmp_path)
    out = tmp_path / "broker"
    # TLS is the default: an mqtt:// deployment needs an explicit --no-tls
    assert cli_main(["broker-config", str(tmp_path / "deployment.toml"), "--out", str(out)]) == 2
    assert "in the clear" in capsys.readouterr().err and not out.exists()
    assert cli_main(["broker-config", str(tmp_path / "deployment.toml"), "--out", str(out),
                     "--port", "1999", "--bind", "127.0.0.1", "--no-tls",
                     "--admin-credentials", str(tmp_path / "admin.toml")]) == 0
    assert "WITHOUT TLS" in capsys.readouterr().out
    assert "listener 1999 127.0.0.1" in (out / "mosquitto.conf").read_text()
    admin = tomllib.loads((tmp_path / "admin.toml").read_text())
    assert (out / "passwd").read_text().count(f"{admin['username']}:$7$") == 1
    assert cli_main(["broker-config", str(tmp_path / "deployment.toml"), "--out", str(out),
                     "--no-tls", "--admin-password-hash", "plaintext"]) == 2
    assert "$7$" in capsys.readouterr().err
    assert cli_main(["broker-config", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2


# -- a real Mosquitto ------------------------------------------------------

@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if not HAVE_MOSQUITTO:
        pytest.skip(SKIP_REASON)
    tmp = tmp_path_factory.mktemp("mosq")
    dep, pw = make(tmp)
    admin_hash = new_admin_credentials(tmp / "admin.toml")
    pw[ADMIN_USER] = tomllib.loads((tmp / "admin.toml").read_text())["password"]
    write_broker_config(dep, tmp / "broker", admin_password_hash=admin_hash)
    port, proc = start_mosquitto(tmp / "broker")
    yield dep, pw, port
    stop_mosquitto(proc)


def client(port: int, user: str, password: str, timeout: float = 5, **kw) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, username=user, password=password,
                          protocol=aiomqtt.ProtocolVersion.V311, timeout=timeout, **kw)


async def first_message(c: aiomqtt.Client, within: float) -> aiomqtt.Message | None:
    try:
        async with asyncio.timeout(within):
            async for m in c.messages:
                return m
    except TimeoutError:
        return None
    return None


@pytest.mark.mosquitto
@requires_mosquitto
async def test_wrong_credentials_cannot_connect(broker):
    dep, pw, port = broker
    for user, password in [("alice", pw["bob"]), ("alice", ""), ("mallory", "x"),
                           ("alice", pw["alice"] + "x")]:
        with pytest.raises(aiomqtt.MqttError):
            async with client(port, user, password):
                pass
    with pytest.raises(aiomqtt.MqttError):  # anonymous
        async with aiomqtt.Client("127.0.0.1", port, timeout=5):
            pass
    async with client(port, "alice", pw["alice"]):
        pass


@pytest.mark.mosquitto
@requires_mosquitto
async def test_inboxes_and_presence(broker):
    dep, pw, port = broker
    inbox, presence = dep.inbox_topic, dep.presence_topic
    async with (client(port, "alice", pw["alice"]) as alice,
                client(port, "bob", pw["bob"]) as bob,
                client(port, "carol", pw["carol"]) as carol,
                client(port, ADMIN_USER, pw[ADMIN_USER]) as admin):
        await bob.subscribe(inbox("bob"), qos=1)
        await alice.subscribe(inbox("bob"), qos=1)        # snooping: delivered nothing
        await carol.subscribe(inbox("carol"), qos=1)
        await admin.subscribe(f"confidant/{dep.name}/#", qos=1)

        # alice may write bob's inbox; bob reads it, alice (subscribed) does not.
        await alice.publish(inbox("bob"), b"hello bob", qos=1)
        got = await first_message(bob, 5)
        assert got is not None and got.payload == b"hello bob"
        assert await first_message(alice, 0.5) is None
        assert (await first_message(admin, 5)).payload == b"hello bob"

        # alice cannot write into a topic outside the scheme nor carol's presence.
        await alice.publish(f"confidant/{dep.name}/inbox/zed", b"x", qos=1)
        await alice.publish(presence("carol"), b"offline", qos=1, retain=True)
        await alice.publish(f"confidant/{dep.name}/inbox/alice", b"to myself", qos=1)
        assert await first_message(admin, 0.5) is None

        # Presence: each writes its own, everyone reads.
        await carol.publish(presence("carol"), b"online", qos=1, retain=True)
        await bob.subscribe(presence("carol"), qos=1)
        got = await first_message(bob, 5)
        assert (str(got.topic), got.payload) == (presence("carol"), b"online")

        # alice reads her own inbox.
        await alice.subscribe(inbox("alice"), qos=1)
        await carol.publish(inbox("alice"), b"hi alice", qos=1)
        got = await first_message(alice, 5)
        assert got is not None and got.payload == b"hi alice"


# -- TLS -------------------------------------------------------------------

def _tls_material(d: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "broker.crt").write_bytes(cert.public_bytes(pem))
    (d / "broker.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))


@pytest.mark.mosquitto
@requires_mosquitto
async def test_tls_listener(tmp_path):
    make(tmp_path)
    _tls_material(tmp_path)
    doc = tomllib.loads((tmp_path / "deployment.toml").read_text())
    doc["deployment"].update(broker_url="mqtts://127.0.0.1:8883",
                             tls={"ca": "ca.crt", "certfile": "broker.crt", "keyfile": "broker.key"})
    (tmp_path / "deployment.toml").write_text(tomli_w.dumps(doc))
    dep = Deployment.load(tmp_path / "deployment.toml")
    pw = PrivateKeys.load(tmp_path / "keys" / "alice.key").mqtt_password
    cfg = write_broker_config(dep, tmp_path / "broker")
    assert "cafile" in cfg.conf.read_text() and "certfile" in cfg.conf.read_text()
    port, proc = start_mosquitto(tmp_path / "broker")
    try:
        ctx = ssl.create_default_context(cafile=dep.tls.ca)
        async with client(port, "alice", pw, tls_context=ctx) as c:
            await c.publish(dep.presence_topic("alice"), b"online", qos=1)
        with pytest.raises(aiomqtt.MqttError):  # plaintext to a TLS listener
            async with client(port, "alice", pw, timeout=1):
                pass
        with pytest.raises((aiomqtt.MqttError, ssl.SSLError)):  # a client trusting no such CA
            async with client(port, "alice", pw, tls_context=ssl.create_default_context()):
                pass
    finally:
        stop_mosquitto(proc)


def tls_deployment(tmp: Path) -> Deployment:
    """An mqtts:// deployment naming only its CA file: broker-config makes the PKI."""
    make(tmp)
    doc = tomllib.loads((tmp / "deployment.toml").read_text())
    doc["deployment"].update(broker_url="mqtts://127.0.0.1:8883", tls={"ca": "ca.crt"})
    (tmp / "deployment.toml").write_text(tomli_w.dumps(doc))
    return Deployment.load(tmp / "deployment.toml")


def test_generated_pki_files(tmp_path, capsys):
    dep = tls_deployment(tmp_path)
    assert cli_main(["broker-config", str(tmp_path / "deployment.toml"), "--out",
                     str(tmp_path / "broker"), "--host", "broker.example.org"]) == 0
    printed = capsys.readouterr().out
    assert "requires each party's certificate" in printed and "--tls-cert" in printed
    from cryptography import x509
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    tls = tmp_path / "broker" / "tls"
    assert stat.S_IMODE(os.stat(tls / "ca.key").st_mode) == 0o600
    broker_cert = x509.load_pem_x509_certificate((tls / "broker.crt").read_bytes())
    names = broker_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} == {"127.0.0.1", "broker.example.org"}
    for party in dep.parties:
        cert = x509.load_pem_x509_certificate((tls / "clients" / f"{party}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert stat.S_IMODE(os.stat(tls / "clients" / f"{party}.key").st_mode) == 0o600
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "use_username_as_clientid true" in conf
    # Run again: the same CA signs fresh certificates (parties keep their ca.crt).
    write_broker_config(dep, tmp_path / "broker")
    assert (tmp_path / "ca.crt").read_bytes() == ca.public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.PEM)


@pytest.fixture
def tls_broker(tmp_path):
    if not HAVE_MOSQUITTO:
        pytest.skip(SKIP_REASON)
    dep = tls_deployment(tmp_path)
    pw = {n: PrivateKeys.load(tmp_path / "keys" / f"{n}.key").mqtt_password for n in dep.parties}
    cfg = write_broker_config(dep, tmp_path / "broker")
    port, proc = start_mosquitto(tmp_path / "broker")
    yield dep, pw, port, cfg
    stop_mosquitto(proc)


def tls_client(dep: Deployment, cfg, port: int, user: str, password: str, *,
               cert_of: str | None = None, identifier: str | None = None) -> aiomqtt.Client:
    ctx = ssl.create_default_context(cafile=dep.tls.ca)
    if cert_of is not None:
        ctx.load_cert_chain(cfg.clients[cert_of].cert, cfg.clients[cert_of].key)
    return client(port, user, password, tls_context=ctx, identifier=identifier)


@pytest.mark.mosquitto
async def test_generated_tls_needs_certificate_and_password(tls_broker):
    """The network attacker: no plaintext listener, no login without a certificate of the
    deployment's CA, and a certificate without the password does not do either."""
    dep, pw, port, cfg = tls_broker
    async with tls_client(dep, cfg, port, "alice", pw["alice"], cert_of="alice") as c:
        await c.publish(dep.presence_topic("alice"), b"online", qos=1)
    for attempt in [
        lambda: client(port, "alice", pw["alice"], timeout=2),                      # plaintext
        lambda: tls_client(dep, cfg, port, "alice", pw["alice"]),                   # no cert
        lambda: tls_client(dep, cfg, port, "alice", pw["bob"], cert_of="alice"),    # wrong password
    ]:
        with pytest.raises((aiomqtt.MqttError, ssl.SSLError, OSError)):
            async with attempt():
                pass


@pytest.mark.mosquitto
async def test_a_party_cannot_take_over_another_session(tls_broker):
    """A party that learns (or guesses) another party's client id connects with it: the
    broker must not disconnect the victim (Mosquitto's takeover rule); with
    use_username_as_clientid the id is the user name, so the takeover cannot happen."""
    dep, pw, port, cfg = tls_broker
    async with tls_client(dep, cfg, port, "alice", pw["alice"], cert_of="alice",
                          identifier="alice-session") as alice:
        await alice.subscribe(dep.inbox_topic("alice"), qos=1)
        async with tls_client(dep, cfg, port, "bob", pw["bob"], cert_of="bob",
                              identifier="alice-session") as bob:
            await bob.publish(dep.inbox_topic("alice"), b"still there?", qos=1)
            got = await first_message(alice, 5)
            assert got is not None and got.payload == b"still there?"
