"""Party identities and the deployment file.

A party owns two private keys (Ed25519 to sign, X25519 to agree on pairwise
encryption keys) and an MQTT password, kept in a key file of mode 0600 that
never leaves its machine. Its public *card* (name, role, public keys and the
Mosquitto hash of its MQTT password) goes into the deployment file, a TOML
file shared by every party and the broker operator::

    [deployment]
    name = "hospitals"
    broker_url = "mqtts://broker.example.org:8883"
    max_message_bytes = 67108864

    [deployment.tls]            # optional
    ca = "ca.crt"               # clients verify the broker with it
    certfile = "broker.crt"     # broker side only (used by broker-config)
    keyfile = "broker.key"

    [[party]]
    name = "alice"
    role = "owner"
    sign_pub = "<base64 of 32 bytes>"
    box_pub = "<base64 of 32 bytes>"
    mqtt_password_hash = "$7$101$<salt>$<hash>"

Loading validates everything before any party starts, and every error names
the offending entry and says how to fix it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mpc import randomness

# Names end up in MQTT topics and file names: no '/', '+', '#', spaces or dots.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Mosquitto's PBKDF2-SHA512 format, as written by mosquitto_passwd 2.x.
PASSWORD_HASH_RE = re.compile(r"^\$7\$[1-9][0-9]*\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$")
MQTT_PACKET_LIMIT = 268_435_455  # largest packet MQTT can carry
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
TOPIC_PREFIX = "confidant"

_DEPLOYMENT_KEYS = {"name", "broker_url", "max_message_bytes", "tls"}
_TLS_KEYS = {"ca", "certfile", "keyfile"}
_PARTY_KEYS = {"name", "role", "sign_pub", "box_pub", "mqtt_password_hash"}
_KEYFILE_KEYS = {"name", "sign_key", "box_key", "mqtt_password"}


class DeploymentError(ValueError):
    """A deployment or key file that cannot be used; the message says which entry and why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, where: str, length: int) -> bytes:
    if not isinstance(text, str):
        raise DeploymentError(f"{where} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DeploymentError(f"{where} is not valid base64; copy it again from the "
                              "party's `confidant keygen` output") from None
    if len(raw) != length:
        raise DeploymentError(f"{where} decodes to {len(raw)} bytes, expected {length}; "
                              "copy it again from the party's `confidant keygen` output")
    return raw


def check_name(name: object, where: str) -> str:
    """Validate a party or deployment name (it is used in MQTT topics and file names)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DeploymentError(f"{where} {name!r} is not a valid name: use 1 to 64 letters, "
                              "digits, '_' or '-' (it becomes part of MQTT topics)")
    return name


def mosquitto_password_hash(password: str, *, salt: bytes | None = None,
                            iterations: int = 101) -> str:
    """Hash a password in Mosquitto 2's ``$7$`` format (PBKDF2-SHA512), as
    ``mosquitto_passwd`` does, so a password file can be written from the
    deployment without knowing any password."""
    salt = randomness.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def check_mosquitto_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash."""
    try:
        _, seven, iterations, salt, digest = hashed.split("$")
        if seven != "7":
            return False
        expected = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"),
                                       base64.b64decode(salt), int(iterations))
        return secrets.compare_digest(expected, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


@dataclass(frozen=True)
class PartyInfo:
    """A party's public card, as listed in the deployment file."""

    name: str
    role: str
    sign_pub: bytes
    box_pub: bytes
    mqtt_password_hash: str

    def to_toml(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "sign_pub": _b64(self.sign_pub),
                "box_pub": _b64(self.box_pub), "mqtt_password_hash": self.mqtt_password_hash}

    def toml_snippet(self) -> str:
        """The card as a ``[[party]]`` block to paste into a deployment file."""
        return tomli_w.dumps({"party": [self.to_toml()]})


@dataclass(frozen=True)
class TlsSettings:
    """TLS material. ``ca`` lets clients verify the broker; ``certfile`` and
    ``keyfile`` are the broker's own, used by ``confidant broker-config``."""

    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True)
class Deployment:
    """Everything the parties of one deployment agree on (public information only)."""

    name: str
    broker_url: str
    max_message_bytes: int
    tls: TlsSettings | None
    parties: dict[str, PartyInfo] = field(default_factory=dict)

    # -- derived -----------------------------------------------------------
    @property
    def broker_scheme(self) -> str:
        return urlsplit(self.broker_url).scheme

    @property
    def broker_host(self) -> str:
        return urlsplit(self.broker_url).hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        port = urlsplit(self.broker_url).port
        return port if port is not None else (8883 if self.broker_scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return self.broker_scheme == "mqtts"

    def inbox_topic(self, party: str) -> str:
        """Topic a party subscribes to; every party of the deployment may publish to it."""
        return f"{TOPIC_PREFIX}/{self.name}/inbox/{party}"

    def presence_topic(self, party: str) -> str:
        """Retained online/offline status; only the party itself writes it."""
        return f"{TOPIC_PREFIX}/{self.name}/presence/{party}"

    def role_of(self, name: str) -> str:
        try:
            return self.parties[name].role
        except KeyError:
            raise DeploymentError(f"party {name!r} is not in deployment {self.name!r}; "
                                  f"known parties: {sorted(self.parties)}") from None

    def names_with_role(self, role: str) -> list[str]:
        return [p.name for p in self.parties.values() if p.role == role]

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what an auditor trusts: the deployment's name and every
        party's name, role and public keys (not the broker address, which may move)."""
        parties = sorted((p.name, p.role, p.sign_pub.hex(), p.box_pub.hex())
                         for p in self.parties.values())
        doc = json.dumps({"deployment": self.name, "parties": parties}, separators=(",", ":"))
        return hashlib.sha256(b"confidant/deployment/v1\x00" + doc.encode()).hexdigest()

    def check_keys(self, keys: PrivateKeys) -> PartyInfo:
        """Check that a key file belongs to a party of this deployment; return its card."""
        info = self.parties.get(keys.name)
        if info is None:
            raise DeploymentError(f"the key file is for party {keys.name!r}, which is not in "
                                  f"deployment {self.name!r}; add its card (confidant keygen "
                                  "prints it) or use the right key file")
        if keys.sign_pub != info.sign_pub or keys.box_pub != info.box_pub:
            raise DeploymentError(f"the public keys of party {keys.name!r} in the deployment "
                                  "file do not match its key file; paste the card printed by "
                                  "`confidant keygen` for this key file")
        if not check_mosquitto_password(keys.mqtt_password, info.mqtt_password_hash):
            raise DeploymentError(f"the mqtt_password_hash of party {keys.name!r} does not "
                                  "match the password in its key file; paste its card again")
        return info

    # -- files ---------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Deployment:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise DeploymentError(f"deployment file {path} does not exist") from None
        except IsADirectoryError:
            raise DeploymentError(f"deployment file {path} is a directory, not a file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise DeploymentError(f"deployment file {path} is not valid TOML: {e}") from None
        return cls.from_dict(doc, base_dir=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, doc: dict, *, base_dir: Path | None = None,
                  source: str = "deployment") -> Deployment:
        dep = doc.get("deployment")
        if not isinstance(dep, dict):
            raise DeploymentError(f"{source}: missing [deployment] table with name and broker_url")
        _no_unknown(dep, _DEPLOYMENT_KEYS, f"{source}: [deployment]")
        name = check_name(dep.get("name"), f"{source}: [deployment] name")
        url = _check_url(dep.get("broker_url"), f"{source}: [deployment] broker_url")
        size = dep.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        if isinstance(size, bool) or not isinstance(size, int) or not 1024 <= size <= MQTT_PACKET_LIMIT - 65536:
            raise DeploymentError(f"{source}: [deployment] max_message_bytes = {size!r} must be an "
                                  f"integer between 1024 and {MQTT_PACKET_LIMIT - 65536}")
        tls = _load_tls(dep.get("tls"), base_dir, f"{source}: [deployment.tls]")
        if urlsplit(url).scheme == "mqtts" and (tls is None or tls.ca is None):
            raise DeploymentError(f"{source}: broker_url uses mqtts:// but [deployment.tls] has no "
                                  "ca; add the CA certificate that signed the broker's certificate")
        raw_parties = doc.get("party", [])
        if not isinstance(raw_parties, list) or not raw_parties:
            raise DeploymentError(f"{source}: no [[party]] entries; add one card per party "
                                  "(`confidant keygen` prints it)")
        parties: dict[str, PartyInfo] = {}
        seen_keys: dict[bytes, str] = {}
        for i, raw in enumerate(raw_parties):
            where = f"{source}: [[party]] #{i + 1}"
            if not isinstance(raw, dict):
                raise DeploymentError(f"{where} must be a table")
            if isinstance(raw.get("name"), str):
                where += f" ({raw['name']!r})"
            _no_unknown(raw, _PARTY_KEYS, where)
            missing = sorted(_PARTY_KEYS - raw.keys())
            if missing:
                raise DeploymentError(f"{where} lacks {', '.join(missing)}; paste the whole "
                                      "card printed by `confidant keygen`")
            pname = check_name(raw["name"], f"{where} name")
            if pname in parties:
                raise DeploymentError(f"{where}: party name {pname!r} appears twice; "
                                      "names must be unique")
            role = check_name(raw["role"], f"{where} role")
            sign_pub = _unb64(raw["sign_pub"], f"{where} sign_pub", 32)
            box_pub = _unb64(raw["box_pub"], f"{where} box_pub", 32)
            for key, label in ((sign_pub, "sign_pub"), (box_pub, "box_pub")):
                if key in seen_keys:
                    raise DeploymentError(f"{where} {label} is the same key as party "
                                          f"{seen_keys[key]!r}; every party needs its own keys "
                                          "(run `confidant keygen` on each machine)")
                seen_keys[key] = pname
            pw = raw["mqtt_password_hash"]
            if not isinstance(pw, str) or not PASSWORD_HASH_RE.match(pw):
                raise DeploymentError(f"{where} mqtt_password_hash is not a Mosquitto '$7$' "
                                      "hash; paste it from the party's card")
            parties[pname] = PartyInfo(pname, role, sign_pub, box_pub, pw)
        return cls(name, url, size, tls, parties)

    def to_dict(self) -> dict:
        dep: dict = {"name": self.name, "broker_url": self.broker_url,
                     "max_message_bytes": self.max_message_bytes}
        if self.tls is not None:
            dep["tls"] = {k: v for k, v in vars(self.tls).items() if v is not None}
        return {"deployment": dep, "party": [p.to_toml() for p in self.parties.values()]}

    def dump(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(tomli_w.dumps(self.to_dict()), encoding="utf-8")


def _no_unknown(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DeploymentError(f"{where} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _check_url(url: object, where: str) -> str:
    if not isinstance(url, str):
        raise DeploymentError(f"{where} is missing; write e.g. 'mqtt://127.0.0.1:1883'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if (parts is None or parts.scheme not in ("mqtt", "mqtts") or not parts.hostname
            or parts.path not in ("", "/") or parts.query or parts.username or parts.password
            or (port is not None and not 1 <= port <= 65535)):
        raise DeploymentError(f"{where} {url!r} must look like 'mqtt://HOST:PORT' or "
                              "'mqtts://HOST:PORT' (credentials live in key files, not here)")
    return url


def _load_tls(raw: object, base_dir: Path | None, where: str) -> TlsSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DeploymentError(f"{where} must be a table with ca, certfile, keyfile")
    _no_unknown(raw, _TLS_KEYS, where)
    values: dict[str, str | None] = {}
    for key in sorted(_TLS_KEYS):
        v = raw.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise DeploymentError(f"{where} {key} must be a file path")
        # Relative paths are relative to the deployment file, not the cwd.
        values[key] = str(base_dir / v) if v and base_dir is not None and not os.path.isabs(v) else v
    if (values["certfile"] is None) != (values["keyfile"] is None):
        raise DeploymentError(f"{where}: give both certfile and keyfile, or neither")
    return TlsSettings(**values)


@dataclass
class PrivateKeys:
    """A party's secrets. Kept in a TOML file of mode 0600 on its own machine."""

    name: str
    sign_key: Ed25519PrivateKey
    box_key: X25519PrivateKey
    mqtt_password: str

    @classmethod
    def generate(cls, name: str) -> PrivateKeys:
        check_name(name, "party name")
        return cls(name, Ed25519PrivateKey.generate(), X25519PrivateKey.generate(),
                   randomness.token_urlsafe(24))

    @property
    def sign_pub(self) -> bytes:
        return self.sign_key.public_key().public_bytes_raw()

    @property
    def box_pub(self) -> bytes:
        return self.box_key.public_key().public_bytes_raw()

    def card(self, role: str) -> PartyInfo:
        check_name(role, "role")
        return PartyInfo(self.name, role, self.sign_pub, self.box_pub,
                         mosquitto_password_hash(self.mqtt_password))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file, mode 0600 from creation; refuse to overwrite."""
        raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        doc = {"name": self.name,
               "sign_key": _b64(self.sign_key.private_bytes(*raw)),
               "box_key": _b64(self.box_key.private_bytes(*raw)),
               "mqtt_password": self.mqtt_password}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise DeploymentError(f"key file {path} already exists; it is never overwritten "
                                  "(move it away first if you really want new keys)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # in case the umask was odd
            f.write("# Confidant private keys: never copy or share this file.\n")
            f.write(tomli_w.dumps(doc))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivateKeys:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DeploymentError(f"key file {path} does not exist; create it with "
                                  "`confidant keygen`") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DeploymentError(f"key file {path} is accessible by group or others (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`")
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise DeploymentError(f"key file {path} is not valid TOML: {e}") from None
        _no_unknown(doc, _KEYFILE_KEYS, f"key file {path}")
        missing = sorted(_KEYFILE_KEYS - doc.keys())
        if missing:
            raise DeploymentError(f"key file {path} lacks {', '.join(missing)}")
        name = check_name(doc["name"], f"key file {path}: name")
        sign = _unb64(doc["sign_key"], f"key file {path}: sign_key", 32)
        box = _unb64(doc["box_key"], f"key file {path}: box_key", 32)
        if not isinstance(doc["mqtt_password"], str) or not doc["mqtt_password"]:
            raise DeploymentError(f"key file {path}: mqtt_password must be a non-empty string")
        return cls(name, Ed25519PrivateKey.from_private_bytes(sign),
                   X25519PrivateKey.from_private_bytes(box), doc["mqtt_password"])


def keygen(name: str, role: str, key_path: str | os.PathLike[str]) -> PartyInfo:
    """Create a party's keys (from the OS random source), save them, return its card."""
    check_name(role, "role")
    keys = PrivateKeys.generate(name)
    keys.save(key_path)
    return keys.card(role)


def new_local_deployment(run_dir: str | os.PathLike[str], parties: list[tuple[str, str]],
                         broker_url: str, name: str | None = None,
                         max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                         keep: dict[str, Path] | None = None) -> Deployment:
    """Fresh keys for ``parties`` (name, role) and a deployment for one machine:
    writes ``run_dir/deployment.toml`` and ``run_dir/keys/<name>.key``. ``keep`` maps
    names to existing key files to use instead (a guardian whose signed ledger spans
    several runs keeps its identity)."""
    run_dir = Path(run_dir)
    names = [pname for pname, _ in parties]
    if len(set(names)) != len(names):
        raise DeploymentError(f"party names must be unique, got {names}")
    for pname, role in parties:
        check_name(pname, "party name")
        check_name(role, f"role of party {pname!r}")
    key_dir = run_dir / "keys"
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    keep = keep or {}
    cards = []
    for pname, role in parties:
        if pname in keep:
            kept = PrivateKeys.load(keep[pname])
            kept.save(key_dir / f"{pname}.key")
            cards.append(kept.card(role))
        else:
            cards.append(keygen(pname, role, key_dir / f"{pname}.key"))
    doc = {"deployment": {"name": name or f"local-{randomness.token_bytes(4).hex()}",
                          "broker_url": broker_url, "max_message_bytes": max_message_bytes},
           "party": [c.to_toml() for c in cards]}
    deployment = Deployment.from_dict(doc, base_dir=run_dir, source=str(run_dir / "deployment.toml"))
    deployment.dump(run_dir / "deployment.toml")
    return deployment
