"""`confidant broker-config DEPLOYMENT --out DIR`: Mosquitto config, TLS, passwords and ACL."""

from __future__ import annotations

import argparse
import os
import sys

from .broker_config import new_admin_credentials, write_broker_config
from .identity import PASSWORD_HASH_RE, Deployment, DeploymentError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("deployment", metavar="DEPLOYMENT", help="the deployment TOML file")
    parser.add_argument("--out", required=True, help="directory for mosquitto.conf, passwd, acl")
    parser.add_argument("--port", type=int, default=None,
                        help="listener port (default: the port of the deployment's broker_url)")
    parser.add_argument("--bind", default=None,
                        help="address to listen on (default: the broker_url's host; "
                             "'all' for every interface)")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="another name or address of the broker for its TLS certificate "
                             "(repeatable; the broker_url's host is always included)")
    parser.add_argument("--no-tls", action="store_true",
                        help="accept an mqtt:// broker_url: passwords and traffic to the broker "
                             "in the clear; only for a broker on loopback")
    admin = parser.add_mutually_exclusive_group()
    admin.add_argument("--admin-password-hash", default=None,
                       help="add an 'admin' user (all topics of the deployment) with this "
                            "Mosquitto $7$ hash; for test recorders, not production")
    admin.add_argument("--admin-credentials", default=None, metavar="FILE",
                       help="create an 'admin' user with a fresh password saved to FILE (0600)")


def run(args: argparse.Namespace) -> int:
    try:
        deployment = Deployment.load(args.deployment)
        if not deployment.uses_tls and not args.no_tls:
            raise DeploymentError(
                f"broker_url {deployment.broker_url!r} is mqtt://: MQTT passwords would reach the "
                "broker in the clear. Write broker_url = 'mqtts://HOST:8883' and [deployment.tls] "
                "ca = 'ca.crt' (broker-config then makes that CA, the broker's certificate and "
                "one per party), or pass --no-tls for a broker that only listens on loopback")
        admin_hash = args.admin_password_hash
        if admin_hash is not None and not PASSWORD_HASH_RE.match(admin_hash):
            raise DeploymentError("--admin-password-hash must be a Mosquitto '$7$' hash "
                                  "(mosquitto_passwd writes one)")
        if args.admin_credentials:
            admin_hash = new_admin_credentials(args.admin_credentials)
        cfg = write_broker_config(deployment, args.out, port=args.port, bind=args.bind,
                                  admin_password_hash=admin_hash, hosts=tuple(args.host))
    except (DeploymentError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.conf}, {cfg.passwd} and {cfg.acl}")
    where = f"listener: port {cfg.port} on {cfg.bind or 'all interfaces'}"
    if cfg.tls == "generated":
        print(f"{where} with TLS; the broker requires each party's certificate and password")
        print(f"CA: {deployment.tls.ca} (give it to every party with deployment.toml); "
              f"its key {cfg.conf.parent / 'tls' / 'ca.key'} stays here")
        for user, pair in cfg.clients.items():
            print(f"  {user}: {pair.cert} {pair.key} -> confidant party --tls-cert "
                  f"{pair.cert.name} --tls-key {pair.key.name}")
    elif cfg.tls == "own":
        print(f"{where} with TLS (your own PKI; passwords, no client certificates)")
    else:
        print(f"{where} WITHOUT TLS (--no-tls): use mqtts:// across machines")
    if os.geteuid() != 0:
        print("If mosquitto runs as its own user, let it read the private files: "
              f"chown mosquitto {cfg.passwd} {cfg.acl}"
              + (f" {cfg.conf.parent / 'tls' / 'broker.key'}" if cfg.tls == "generated" else ""))
    print(f"run: mosquitto -c {cfg.conf}")
    print(f"deployment fingerprint: {deployment.fingerprint()} (every party compares it out of "
          "band; confidant audit --fingerprint pins it)")
    return 0
