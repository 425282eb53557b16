"""A small certificate authority for one deployment's broker (``confidant broker-config``).

It signs the broker's server certificate (for the host names in the deployment's
broker URL) and one client certificate per party, so that Mosquitto can require
both a party's certificate and its password, and a party's MQTT password never
crosses the network in the clear. Keys are ECDSA P-256 from OpenSSL's generator,
which the ``cryptography`` package seeds from the OS.

Files: ``ca.crt`` (public: every party needs it), ``ca.key`` (stays with the
broker operator), ``broker.crt``/``broker.key`` (broker machine), and
``clients/<party>.crt``/``clients/<party>.key`` (to be handed to each party).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity clients such as browsers still accept


class PkiError(ValueError):
    """TLS material that cannot be made or used; the message says what to do."""


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuedPair:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def _save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)


def _save_cert(cert: x509.Certificate, path: Path) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def new_authority(cert_path: Path, key_path: Path, deployment: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"Confidant CA for deployment {deployment}")
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _save_key(key, key_path)
    _save_cert(cert, cert_path)
    return Authority(cert, key)


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise PkiError(f"cannot load the CA from {cert_path} and {key_path}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path} is not the private key of {cert_path}")
    return Authority(cert, key)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(ca: Authority, common_name: str, out: Path, *, hosts: list[str] | None = None) -> IssuedPair:
    """Sign a certificate for ``common_name``: a server certificate valid for ``hosts``
    when they are given, otherwise a client certificate. Writes ``out.crt``/``out.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(minutes=5))
               .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]),
                                        critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    pair = IssuedPair(out.with_suffix(".crt"), out.with_suffix(".key"))
    _save_key(key, pair.key)
    _save_cert(cert, pair.cert)
    return pair
