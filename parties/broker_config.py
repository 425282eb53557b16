"""Mosquitto configuration for a deployment: listener, TLS, passwords, ACL.

Topic scheme (``Deployment.inbox_topic`` / ``presence_topic``)::

    confidant/<deployment>/inbox/<party>      the party reads; other parties write
    confidant/<deployment>/presence/<party>   retained; the party writes, all read

The MQTT username is the party name. The ACL lets each party subscribe only to
its own inbox, publish to the inboxes of the other parties of the deployment,
write only its own presence topic and read everyone's. The ACL cannot stop a
party from *claiming* to be someone else inside a message it publishes to a
peer's inbox: that is what the sender's Ed25519 signature on every envelope
is for. The broker is untrusted either way; the ACL only narrows what a
stolen password or a buggy client can do.

TLS: with an ``mqtts://`` broker URL and only ``[deployment.tls] ca`` given,
broker-config makes a CA at that path (its key in ``OUT/tls/ca.key``), the
broker's certificate and one client certificate per party (``OUT/tls/clients``),
and Mosquitto requires both a party's certificate and its password. With the
broker's own ``certfile``/``keyfile`` in ``[deployment.tls]`` (your own PKI), the
listener uses those and checks passwords only. ``use_username_as_clientid``
stops a party from taking over another's MQTT session by reusing its client id.

An optional ``admin`` user may read and write every topic of the deployment;
it is meant for test recorders and fault injection, not for production.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from mpc import randomness

from . import pki
from .identity import TOPIC_PREFIX, Deployment, DeploymentError, mosquitto_password_hash

ADMIN_USER = "admin"
# Room in an MQTT packet for the topic and headers on top of the envelope itself.
PACKET_OVERHEAD = 65536


@dataclass(frozen=True)
class BrokerConfig:
    conf: Path
    passwd: Path
    acl: Path
    port: int
    bind: str | None
    tls: str                                 # "generated", "own" (the deployment's PKI) or "off"
    clients: dict[str, pki.IssuedPair]       # generated client certificates, by user


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file that is never readable by others, not even for a moment."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)


def new_admin_credentials(path: str | os.PathLike[str]) -> str:
    """Create an admin password, save ``{username, password}`` to ``path`` (mode
    0600, TOML) and return its Mosquitto hash for :func:`write_broker_config`."""
    password = randomness.token_urlsafe(24)
    _write_private(Path(path), tomli_w.dumps({"username": ADMIN_USER, "password": password}))
    return mosquitto_password_hash(password)


def acl_text(deployment: Deployment, admin: bool = False) -> str:
    lines = [f"# ACL for Confidant deployment {deployment.name!r}. Parties may publish into",
             "# each other's inboxes; signatures, not this file, stop impersonation.", ""]
    if admin:
        lines += [f"user {ADMIN_USER}", f"topic readwrite {TOPIC_PREFIX}/{deployment.name}/#", ""]
    for me in deployment.parties:
        lines.append(f"user {me}")
        lines.append(f"topic read {deployment.inbox_topic(me)}")
        lines.append(f"topic readwrite {deployment.presence_topic(me)}")
        for peer in deployment.parties:
            if peer != me:
                lines.append(f"topic write {deployment.inbox_topic(peer)}")
                lines.append(f"topic read {deployment.presence_topic(peer)}")
        lines.append("")
    return "\n".join(lines)


def write_broker_config(deployment: Deployment, out_dir: str | os.PathLike[str], *,
                        port: int | None = None, bind: str | None = None,
                        admin_password_hash: str | None = None,
                        hosts: tuple[str, ...] = ()) -> BrokerConfig:
    """Write ``mosquitto.conf``, ``passwd`` and ``acl`` into ``out_dir`` (and ``tls/``).

    ``port`` defaults to the port of the deployment's broker URL; ``bind`` to
    the URL's host (``"all"``: every interface). With an
    ``mqtts://`` URL the listener uses TLS (see the module docstring); ``hosts``
    are extra names or addresses for the broker's generated certificate.
    """
    if admin_password_hash is not None and ADMIN_USER in deployment.parties:
        raise DeploymentError(f"a party is named {ADMIN_USER!r}, which clashes with the admin "
                              "user; rename the party or run without an admin")
    port = deployment.broker_port if port is None else port
    if not 1 <= port <= 65535:
        raise DeploymentError(f"port {port} is not a TCP port")
    bind = deployment.broker_host if bind is None else (None if bind == "all" else bind)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    passwd, acl, conf = out / "passwd", out / "acl", out / "mosquitto.conf"
    entries = [f"{p.name}:{p.mqtt_password_hash}" for p in deployment.parties.values()]
    if admin_password_hash is not None:
        entries.append(f"{ADMIN_USER}:{admin_password_hash}")
    users = [*deployment.parties, *([ADMIN_USER] if admin_password_hash is not None else [])]
    tls_mode, tls_lines, clients = _tls(deployment, out, users, hosts)
    _write_private(passwd, "\n".join(entries) + "\n")
    _write_private(acl, acl_text(deployment, admin_password_hash is not None))
    lines = [
        f"# Mosquitto 2 configuration for Confidant deployment {deployment.name!r}.",
        "# Generated by `confidant broker-config`; regenerate it rather than editing.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        "persistence false",
        "# Protocol messages are small and sequential: without this, Nagle's algorithm",
        "# and delayed ACKs add ~40 ms to each one.",
        "set_tcp_nodelay true",
        f"max_packet_size {deployment.max_message_bytes + PACKET_OVERHEAD}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "",
        f"listener {port}" + (f" {bind}" if bind else ""),
        "# The client id is the user name: no party can take over another's session.",
        "# (A listener setting: above the listener line, Mosquitto would open port 1883.)",
        "use_username_as_clientid true",
        *tls_lines,
    ]
    _write_private(conf, "\n".join(lines) + "\n", mode=0o644)
    _give_to_mosquitto([passwd, acl, *([out / "tls" / "broker.key"] if tls_mode == "generated"
                                       else [])])
    return BrokerConfig(conf, passwd, acl, port, bind, tls_mode, clients)


def _give_to_mosquitto(private: list[Path]) -> None:
    """Run as root, Mosquitto drops to the 'mosquitto' user: let it read its private files."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for path in private:
        os.chown(path, user.pw_uid, user.pw_gid)


def _tls(deployment: Deployment, out: Path, users: list[str], hosts: tuple[str, ...]
         ) -> tuple[str, list[str], dict[str, pki.IssuedPair]]:
    """The listener's TLS lines: none, the deployment's own PKI, or a generated one."""
    tls = deployment.tls
    if not deployment.uses_tls or tls is None or tls.ca is None:
        return "off", [], {}
    if tls.certfile and tls.keyfile:
        return "own", [f"cafile {Path(tls.ca).resolve()}",
                       f"certfile {Path(tls.certfile).resolve()}",
                       f"keyfile {Path(tls.keyfile).resolve()}", "tls_version tlsv1.2"], {}
    ca_cert, ca_key = Path(tls.ca).resolve(), out / "tls" / "ca.key"
    try:
        if ca_cert.exists():
            if not ca_key.exists():
                raise DeploymentError(
                    f"the deployment's CA {ca_cert} exists but its key {ca_key} does not: give "
                    "the broker's certfile and keyfile from your own PKI in [deployment.tls], "
                    f"or remove {ca_cert} to have broker-config make a new CA")
            ca = pki.load_authority(ca_cert, ca_key)
        else:
            ca = pki.new_authority(ca_cert, ca_key, deployment.name)
    except pki.PkiError as e:
        raise DeploymentError(str(e)) from None
    broker = pki.issue(ca, deployment.broker_host, out / "tls" / "broker",
                       hosts=list(dict.fromkeys([deployment.broker_host, *hosts])))
    clients = {u: pki.issue(ca, u, out / "tls" / "clients" / u) for u in users}
    return "generated", [f"cafile {ca_cert}", f"certfile {broker.cert}", f"keyfile {broker.key}",
                         "require_certificate true", "use_identity_as_username false",
                         "tls_version tlsv1.2"], clients
