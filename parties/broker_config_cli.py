"""`confidant broker-config DEPLOYMENT --out DIR`: Mosquitto config, passwords and ACL."""

from __future__ import annotations

import argparse
import sys

from .broker_config import new_admin_credentials, write_broker_config
from .identity import PASSWORD_HASH_RE, Deployment, DeploymentError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("deployment", metavar="DEPLOYMENT", help="the deployment TOML file")
    parser.add_argument("--out", required=True, help="directory for mosquitto.conf, passwd, acl")
    parser.add_argument("--port", type=int, default=None,
                        help="listener port (default: the port of the deployment's broker_url)")
    parser.add_argument("--bind", default=None,
                        help="address to listen on (default: all interfaces)")
    admin = parser.add_mutually_exclusive_group()
    admin.add_argument("--admin-password-hash", default=None,
                       help="add an 'admin' user (all topics of the deployment) with this "
                            "Mosquitto $7$ hash; for test recorders, not production")
    admin.add_argument("--admin-credentials", default=None, metavar="FILE",
                       help="create an 'admin' user with a fresh password saved to FILE (0600)")


def run(args: argparse.Namespace) -> int:
    try:
        deployment = Deployment.load(args.deployment)
        admin_hash = args.admin_password_hash
        if admin_hash is not None and not PASSWORD_HASH_RE.match(admin_hash):
            raise DeploymentError("--admin-password-hash must be a Mosquitto '$7$' hash "
                                  "(mosquitto_passwd writes one)")
        if args.admin_credentials:
            admin_hash = new_admin_credentials(args.admin_credentials)
        cfg = write_broker_config(deployment, args.out, port=args.port, bind=args.bind,
                                  admin_password_hash=admin_hash)
    except (DeploymentError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.conf}, {cfg.passwd} and {cfg.acl}")
    print(f"listener: port {cfg.port} on {cfg.bind or 'all interfaces'}"
          + (" with TLS" if deployment.uses_tls else " WITHOUT TLS (use mqtts:// across machines)"))
    print("If mosquitto runs as its own user, let it read the files: "
          f"chown mosquitto {cfg.passwd} {cfg.acl}")
    print(f"run: mosquitto -c {cfg.conf}")
    return 0
