#!/usr/bin/env python3
"""Local simulation: a fresh deployment, the embedded broker, one OS process per party.

    python run_parties.py hashcomb-setup --owners 5
    python run_parties.py argmax2pc --batch 4 --classes 10
    python run_parties.py demo                   # what `make demo` runs

Each run lives in runs/<timestamp>/ (deployment, keys, transcripts, results,
logs); the run is audited at the end and its directory is the last line printed.
Every process started here is stopped on success, failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parties.audit import audit_run
from parties.broker import EmbeddedBroker
from parties.identity import new_local_deployment

console = Console(highlight=False)


@dataclass
class Scenario:
    """One protocol session: who plays which role, with which public parameters."""

    protocol: str
    parties: list[tuple[str, str]]
    params: dict = field(default_factory=dict)


# name -> (help, add_arguments(parser), build(args) -> list[Scenario]); one block per scenario
SCENARIOS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], list[Scenario]]]] = {}


def scenario(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(build: Callable[[argparse.Namespace], list[Scenario]]):
        SCENARIOS[name] = (help_text, add_arguments, build)
        return build
    return register


def _hashcomb_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owners", type=int, default=5)
    p.add_argument("--threshold", type=int, default=0, help="Shamir threshold (default: majority)")
    p.add_argument("--levels", type=int, default=8)
    p.add_argument("--lo", type=float, default=-0.35)
    p.add_argument("--hi", type=float, default=0.35)
    p.add_argument("--delta", type=float, default=0.01)


@scenario("hashcomb-setup", "owners jointly create the Hash-Comb secret", _hashcomb_setup_args)
def hashcomb_setup(args: argparse.Namespace) -> list[Scenario]:
    if args.owners < 2:
        raise SystemExit("hashcomb-setup needs at least 2 owners")
    owners = [(f"owner{i}", "owner") for i in range(1, args.owners + 1)]
    params = {"levels": args.levels, "lo": args.lo, "hi": args.hi, "delta": args.delta}
    if args.threshold:
        params["threshold"] = args.threshold
    return [Scenario("hcsetup", owners + [("aggregator", "aggregator")], params)]


def _argmax2pc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)


@scenario("argmax2pc", "2PC argmax between two processes with a dealer", _argmax2pc_args)
def argmax2pc(args: argparse.Namespace) -> list[Scenario]:
    return [Scenario("argmax2pc", [("alice", "holder"), ("bob", "holder"), ("dealer", "dealer")],
                     {"batch": args.batch, "classes": args.classes})]


@scenario("demo", "what `make demo` runs: hashcomb-setup with 5 owners, then a 2PC argmax",
          lambda p: None)
def demo(args: argparse.Namespace) -> list[Scenario]:
    parser = build_parser()
    return [s for argv in (["hashcomb-setup"], ["argmax2pc", "--batch", "4"])
            for s in scenarios_for(parser.parse_args(argv))]


async def _pump(stream: asyncio.StreamReader, name: str) -> None:
    async for raw in stream:
        line = raw.decode(errors="replace").strip()
        try:
            msg = json.loads(line)["progress"]
        except (ValueError, KeyError, TypeError):
            msg = line
        console.print(f"  [cyan]{name:>12}[/] {msg}")


async def run_session(run_dir: Path, scenario: Scenario, broker_url: str, timeout: float) -> dict:
    deployment = new_local_deployment(run_dir, scenario.parties, broker_url, name=run_dir.name)
    session = secrets.token_hex(8)
    (run_dir / "logs").mkdir(exist_ok=True)
    params_file = run_dir / f"params-{scenario.protocol}.json"
    params_file.write_text(json.dumps(scenario.params))
    procs: dict[str, asyncio.subprocess.Process] = {}
    pumps = []
    try:
        for name, _ in scenario.parties:
            log = open(run_dir / "logs" / f"{name}.log", "ab")
            procs[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "parties.party", "--deployment", str(run_dir / "deployment.toml"),
                "--name", name, "--key", str(run_dir / "keys" / f"{name}.key"),
                "--protocol", scenario.protocol, "--session", session,
                "--params", f"@{params_file}", "--workdir", str(run_dir),
                stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True)
            log.close()
            pumps.append(asyncio.create_task(_pump(procs[name].stdout, name)))
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs.values())), timeout)
    except TimeoutError:
        console.print(f"[red]session did not finish within {timeout:g} s; stopping every party[/]")
    finally:
        _stop_all(procs)
        for p in procs.values():
            await p.wait()
        await asyncio.gather(*pumps, return_exceptions=True)
    records = {}
    for name, _ in scenario.parties:
        path = run_dir / "results" / f"{name}.json"
        records[name] = (json.loads(path.read_text()) if path.exists() else
                         {"party": name, "ok": False, "error": f"exited with code {procs[name].returncode} "
                          f"and no result; see logs/{name}.log"})
    return {"protocol": scenario.protocol, "session": session, "deployment": deployment.name,
            "parties": records}


def _stop_all(procs: dict[str, asyncio.subprocess.Process]) -> None:
    for p in procs.values():
        if p.returncode is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def print_results(session: dict) -> None:
    table = Table(title=f"{session['protocol']} (session {session['session']})")
    for col in ("party", "role", "ok", "seconds", "messages sent", "bytes sent", "result"):
        table.add_column(col)
    for name, rec in session["parties"].items():
        res = rec.get("result") or {}
        shown = {k: v for k, v in res.items() if k not in ("role", "params")} if rec.get("ok") else rec.get("error")
        tr = rec.get("transport", {})
        table.add_row(name, str(rec.get("role", "?")), "yes" if rec.get("ok") else "[red]NO[/]",
                      str(rec.get("seconds", "")), str(tr.get("sent_messages", "")),
                      str(tr.get("sent_bytes", "")), json.dumps(shown, default=str)[:90])
    console.print(table)


async def main_async(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.runs_dir)
    ok = True
    run_dirs = []
    broker = None if args.broker else EmbeddedBroker(log_path=None)
    try:
        if broker:
            broker.start()
            console.print(f"embedded broker on {broker.url}")
        url = args.broker or broker.url
        for i, scenario in enumerate(scenarios):
            run_dir = base / (stamp + (f"-{scenario.protocol}" if len(scenarios) > 1 else "")
                              + f"-{secrets.token_hex(2)}")
            run_dir.mkdir(parents=True)
            run_dirs.append(run_dir)
            console.print(f"[bold]{scenario.protocol}[/]: {len(scenario.parties)} party processes "
                          f"({i + 1}/{len(scenarios)})")
            session = await run_session(run_dir, scenario, url, args.timeout)
            print_results(session)
            report = audit_run(run_dir)
            session["audit"] = report.to_json()
            (run_dir / "results.json").write_text(json.dumps(session, indent=2, default=str) + "\n")
            all_ok = all(r.get("ok") for r in session["parties"].values())
            console.print(f"audit: {'[green]clean[/]' if report.ok else f'[red]{len(report.errors)} problem(s)[/]'}"
                          + ("" if report.ok else f" (confidant audit {run_dir})"))
            ok = ok and all_ok and report.ok
    finally:
        if broker:
            broker.stop()
    for d in run_dirs:
        print(d)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="use this broker (mqtt://host:port) instead of the embedded one")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per session")
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, (help_text, add_arguments, _) in SCENARIOS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def scenarios_for(args: argparse.Namespace) -> list[Scenario]:
    return SCENARIOS[args.scenario][2](args)


def main() -> int:
    args = build_parser().parse_args()
    try:
        return asyncio.run(main_async(args, scenarios_for(args)))
    except KeyboardInterrupt:
        console.print("[red]interrupted; every party process was stopped[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
