"""`confidant keygen`: create a party's private key file and print its public card."""

from __future__ import annotations

import argparse
import sys

from .identity import DeploymentError, keygen


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="party name (letters, digits, '_', '-')")
    parser.add_argument("--role", required=True, help="party role, e.g. owner or aggregator")
    parser.add_argument("--out", required=True,
                        help="private key file to create (mode 0600; never overwritten)")


def run(args: argparse.Namespace) -> int:
    try:
        card = keygen(args.name, args.role, args.out)
    except (DeploymentError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# Public card of party {card.name!r}: paste it into the deployment file.")
    print(f"# Private keys written to {args.out} (keep it on this machine, mode 0600).")
    print(card.toml_snippet(), end="")
    return 0
