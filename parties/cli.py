"""The `confidant` command. Each subcommand lives in its own module, imported
only when used, that defines ``configure(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {}


def register(name: str, module: str, help_text: str) -> None:
    COMMANDS[name] = (module, help_text)


register("privacy", "parties.privacy_cli", "PATE privacy cost of a CaPC configuration")
register("keygen", "parties.keygen_cli", "create a party's private keys and print its public card")
register("audit", "parties.audit_cli", "verify the transcripts of a run (signatures, chains, matching, conformance)")
register("broker-config", "parties.broker_config_cli", "write a Mosquitto config (TLS, passwords, ACL) for a deployment")
register("split-data", "parties.split_data_cli", "write a built-in data set as one file per party (to try --data)")
register("party", "parties.party", "run one party of a protocol session on this machine")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="confidant",
        description="Confidant: privacy-preserving collaborative learning between organisations. "
                    "Run one party per machine, configure its broker, audit a run.",
        epilog="One machine, every party: run_parties.py (see README). "
               "Each command has its own --help.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in sorted(COMMANDS.items()):
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sub_parser = argparse.ArgumentParser(prog=f"confidant {argv[0]}",
                                         description=getattr(module, "DESCRIPTION",
                                                             COMMANDS[argv[0]][1]),
                                         epilog=module.epilog() if hasattr(module, "epilog")
                                         else None,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    module.configure(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
