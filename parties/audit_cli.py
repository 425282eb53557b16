"""`confidant audit RUN_DIR`: verify a run's transcripts; exit 0 only when clean."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from .audit import AuditReport, audit_run
from .identity import DeploymentError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="directory holding deployment.toml and transcripts/")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def render(report: AuditReport, console: Console) -> None:
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
        report = audit_run(args.run_dir)
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
