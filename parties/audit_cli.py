"""`confidant audit RUN_DIR`: verify a run's transcripts; exit 0 only when clean."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .audit import AuditReport, audit_run
from .identity import Deployment, DeploymentError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="directory holding deployment.toml and transcripts/")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--deployment", metavar="FILE",
                     help="the deployment file you trust: its keys are used, and the run's "
                          "own deployment.toml must match it")
    pin.add_argument("--fingerprint", metavar="HEX",
                     help="the deployment fingerprint you expect (at least 16 hex digits; "
                          "`confidant audit` prints it)")
    parser.add_argument("--ledger", action="append", default=[], metavar="PARTY=FILE",
                        help="where a privacy guardian's budget ledger is, if not "
                             "RUN_DIR/ledger/PARTY.jsonl (repeatable)")


def render(report: AuditReport, console: Console) -> None:
    trust = ("[green]pinned[/green]" if report.pinned else
             "[yellow]not pinned: taken from RUN_DIR itself; pass --fingerprint or "
             "--deployment to check it against one you trust[/yellow]")
    console.print(f"deployment {report.deployment!r} fingerprint {report.fingerprint} ({trust})")
    parties = Table(title=f"Transcripts of deployment {report.deployment!r}")
    for col in ("party", "lines", "sent", "received", "rejected", "sealed sessions"):
        parties.add_column(col, justify="left" if col == "party" else "right")
    for name, s in report.parties.items():
        parties.add_row(name, *(str(s[k]) for k in
                                ("lines", "sent", "received", "rejected", "sealed_sessions")))
    console.print(parties)
    console.print(f"{len(report.sessions)} session(s), {report.messages} message(s), "
                  f"{report.matched} matched on both sides")
    if report.issues:
        issues = Table(title="Findings")
        for col in ("severity", "check", "party", "line", "finding"):
            issues.add_column(col, overflow="fold")
        for i in sorted(report.issues, key=lambda i: (i.severity != "error", i.party or "",
                                                      i.line or 0)):
            style = "red" if i.severity == "error" else "cyan"
            issues.add_row(f"[{style}]{i.severity}[/{style}]", i.code, i.party or "",
                           "" if i.line is None else str(i.line), i.message)
        console.print(issues)
    if report.ok:
        console.print("[green]audit passed[/green]")
    else:
        console.print(f"[red]audit FAILED: {len(report.errors)} error(s)[/red]")


def run(args: argparse.Namespace) -> int:
    try:
        ledgers = dict(_ledger_arg(a) for a in args.ledger)
        if args.fingerprint is not None and not re.fullmatch(r"[0-9a-fA-F]{16,64}", args.fingerprint):
            raise DeploymentError("--fingerprint takes 16 to 64 hex digits, as "
                                  "`confidant audit` prints them")
        trusted = Deployment.load(args.deployment) if args.deployment else None
        report = audit_run(args.run_dir, trusted=trusted, fingerprint=args.fingerprint,
                           ledgers=ledgers)
    except DeploymentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # protocols/ must declare its message flows
        print(f"error: cannot load the protocols' conformance rules ({e})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render(report, Console())
    return 0 if report.ok else 1


def _ledger_arg(text: str) -> tuple[str, Path]:
    party, sep, path = text.partition("=")
    if not sep or not party or not path:
        raise DeploymentError(f"--ledger takes PARTY=FILE, got {text!r}")
    return party, Path(path)
