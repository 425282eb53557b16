"""Run one party of one protocol session: ``confidant party`` (and ``python -m parties.party``).

Files, all under the work directory (default: the deployment file's folder):
``transcripts/<name>.jsonl`` (appended, sealed per session), ``results/<name>.json``
(the party's public result), ``state/<name>.state`` (private state kept between
protocols, e.g. its Shamir share: mode 0600, like its key file), ``logs/``.
Progress goes to stdout as JSON lines, for ``run_parties.py`` to show.

Exit codes: 0 done; 1 the protocol failed (the error names the party at fault
where it can); 2 bad command line, deployment or key file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from mpc import wire
from mpc.channel import ChannelError, Conformance

from .crash_drill import CrashingChannel, CrashPlan
from .identity import Deployment, DeploymentError, PrivateKeys
from .mqtt_channel import MqttChannel
from .resources import open_resources, read_party_files
from .transcript import Transcript, sealed_sessions, transcript_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def state_path(workdir: Path, name: str) -> Path:
    return workdir / "state" / f"{name}.state"


def load_state(workdir: Path, name: str) -> dict[str, Any]:
    path = state_path(workdir, name)
    if not path.exists():
        return {}
    state = wire.decode(path.read_bytes())
    if not isinstance(state, dict):
        raise DeploymentError(f"state file {path} is corrupted; delete it to start afresh")
    return state


def save_state(workdir: Path, name: str, state: dict[str, Any]) -> None:
    path = state_path(workdir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(wire.encode(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


async def run_party(deployment: Deployment, keys: PrivateKeys, protocol: str, session: str,
                    params: dict[str, Any], workdir: Path, peer_timeout: float = 60.0,
                    ledger_path: Path | None = None, insecure: list[str] | None = None,
                    client_cert: tuple[str, str] | None = None,
                    crash: CrashPlan | None = None, files: dict | None = None,
                    bind_address: str = "", connect_timeout: float = 30.0) -> dict:
    """Connect, run this party's role of ``protocol``, and report. Returns the result record."""
    import protocols
    from protocols import RoleContext

    name = keys.name
    roles = {n: p.role for n, p in deployment.parties.items()}
    module = protocols.load(protocol)
    role_fn = protocols.role_function(protocol, roles[name])
    state = load_state(workdir, name)

    def progress(message: str) -> None:
        print(json.dumps({"party": name, "progress": message}), flush=True)

    record: dict[str, Any] = {"party": name, "role": roles[name], "protocol": protocol,
                              "session": session}
    if insecure:
        record["insecure"] = insecure  # every result of such a run says so
    started = time.monotonic()
    if session in sealed_sessions(transcript_path(workdir, name)):
        # Its keys, transcript lines and Hash-Comb tables would repeat: refuse, before connecting.
        raise DeploymentError(f"session {session!r} was already completed by {name} (sealed in "
                              f"{transcript_path(workdir, name)}); every run needs a new "
                              "session id, e.g. --session $(date +%s)")
    transcript = Transcript(transcript_path(workdir, name), name, keys.sign_key)
    try:
        channel = MqttChannel(deployment, keys, session, transcript, client_cert=client_cert,
                              bind_address=bind_address, connect_timeout=connect_timeout)
        ctx: RoleContext | None = None
        channel.conformance = Conformance(module.NAME, module.RULES, roles)
        await channel.start()
        try:
            await channel.wait_for_peers(peer_timeout)
            progress("all peers online")
            with contextlib.ExitStack() as stack:
                resources = open_resources(module, roles[name], name, workdir, params, stack,
                                           ledger_path, signer=keys.sign_key, files=files)
                ledger = resources.budget if hasattr(resources.budget, "head") else None
                if ledger is not None:
                    recorded = transcript.last_ledger_head()
                    if recorded is not None:
                        ledger.check_head(*recorded, where=f"{name}'s transcript")
                    stack.callback(lambda: transcript.record_ledger(*ledger.head))
                ctx = RoleContext(CrashingChannel(channel, crash) if crash else channel, roles,
                                  params, state, progress, resources)
                result = await role_fn(ctx)
            record.update(ok=True, result=result.public)
            if result.private:
                save_state(workdir, name, {**state, **result.private})
            if result.outputs:   # the operator's files: its trained model, its labels
                out = workdir / "outputs" / name
                out.mkdir(parents=True, exist_ok=True, mode=0o700)   # private, like its state
                for filename, content in result.outputs.items():
                    path = out / Path(filename).name
                    path.touch(mode=0o600)
                    path.write_bytes(content)
                record["outputs"] = sorted(str(out / Path(f).name) for f in result.outputs)
        except Exception as e:  # reported by name in results, and the exit code
            record.update(ok=False, error=f"{type(e).__name__}: {e}", fault=fault_of(e))
            if channel.died:  # the root cause, whoever this party was waiting for
                record.update(died=list(channel.died), fault=f"peer:{channel.died[0]}")
                if not all(f"'{d}'" in str(e) for d in channel.died):
                    record["error"] += (f" (after {', '.join(channel.died)} died without a "
                                        "goodbye)")
            if ctx is not None and ctx.partial:
                record["partial"] = ctx.partial
        finally:
            record["transport"] = {"sent_messages": channel.sent_messages,
                                   "sent_bytes": channel.sent_bytes, "rejected": channel.rejected}
            await channel.close()
    finally:
        transcript.close()
    record["seconds"] = round(time.monotonic() - started, 3)
    _write_json(workdir / "results" / f"{name}.json", record)
    return record


def fault_of(error: Exception) -> str:
    """Whose fault a failure is: 'local' (this party's user input), 'peer:NAME', or 'internal'."""
    from protocols import ParameterError, PeerMisbehaved

    peer = getattr(error, "peer", None)
    if isinstance(error, PeerMisbehaved | ChannelError) and peer:
        return f"peer:{peer}"
    if isinstance(error, ParameterError):
        return "local"
    return "internal"


def epilog() -> str:
    """Every protocol's roles and --params keys with their defaults, from the registry."""
    import dataclasses

    import protocols

    lines = ["protocols (--protocol), their roles (from the deployment's cards) and --params keys:"]
    for name in sorted(protocols.protocols()):
        try:
            module = protocols.load(name)
        except Exception as e:  # a broken plug-in protocol must not hide the others
            lines.append(f"  {name}: cannot be loaded ({e})")
            continue
        lines.append(f"  {name}: roles {', '.join(sorted(module.ROLES))}")
        fields = dataclasses.fields(module.Params)
        params = ", ".join(f"{f.name}={f.default!r}" for f in fields
                           if f.default is not dataclasses.MISSING)
        lines.append(f"    params: {params}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deployment", required=True, help="deployment file (TOML)")
    parser.add_argument("--name", required=True,
                        help="this party's name in the deployment; several, comma-separated, run "
                             "as light parties in one process (then --key is their key directory)")
    parser.add_argument("--key", required=True, help="this party's private key file")
    parser.add_argument("--protocol", required=True, help="protocol to run, e.g. hcsetup")
    parser.add_argument("--session", required=True,
                        help="session id, the same for every party of this run")
    parser.add_argument("--params", default="{}",
                        help="public protocol parameters as JSON, or @FILE holding JSON")
    parser.add_argument("--workdir", help="where transcripts, results and state go "
                                          "(default: the deployment file's folder)")
    parser.add_argument("--tls-cert", help="this party's TLS client certificate, when the broker "
                                           "requires one (from `confidant broker-config`)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert")
    parser.add_argument("--allow-insecure", action="store_true",
                        help="accept simulation parameters that switch security off (e.g. "
                             "capc mode=plaintext or noise_seed); the result says so")
    parser.add_argument("--ledger", help="privacy guardian: its budget ledger file "
                                         "(default: WORKDIR/ledger/NAME.jsonl)")
    parser.add_argument("--peer-timeout", type=float, default=60.0,
                        help="seconds to wait for every peer to come online")
    parser.add_argument("--threads", "--torch-threads", dest="torch_threads", type=int, default=1,
                        metavar="N",
                        help="threads of this process's numeric libraries, torch and numpy's BLAS "
                             "(default 1: parties share cores)")
    parser.add_argument("--crash-before", metavar="KIND:N",
                        help="crash drill: SIGKILL this process instead of sending its N-th "
                             "message of KIND (e.g. fedavg.masked:2), as a real crash would")
    parser.add_argument("--data", help="this party's own records (CSV with a header row, NPZ with "
                             "x and y, or Parquet), checked against the study's 'data' parameter; "
                             "with several --name values, a directory holding NAME.csv/.npz/.parquet")
    parser.add_argument("--queries", help="a querying party's unlabelled queries (same columns as "
                             "--data, the label column optional), with a 'data' study")
    parser.add_argument("--model", help="an answering party's own model: .onnx (PyTorch, "
                             "scikit-learn via skl2onnx, ...) or .pt ({'architecture': NAME, "
                             "'state_dict': ...}); checked for CKKS before connecting")
    parser.add_argument("--connect-timeout", type=float, default=30.0,
                        help="seconds to keep trying to reach the broker at start")
    parser.add_argument("--bind-address", default="",
                        help="connect to the broker from this local address (a machine with "
                             "several interfaces; default: any)")
    parser.add_argument("--log-level", default="WARNING")


def _client_cert(cert: str | None, key: str | None,
                 deployment: Deployment) -> tuple[str, str] | None:
    if (cert is None) != (key is None):
        raise DeploymentError("give both --tls-cert and --tls-key, or neither")
    if cert is None or key is None:
        return None
    if not deployment.uses_tls:
        raise DeploymentError(f"--tls-cert was given but the deployment's broker_url "
                              f"{deployment.broker_url!r} is not mqtts://")
    for path in (cert, key):
        if not Path(path).is_file():
            raise DeploymentError(f"TLS file {path} does not exist")
    return cert, key


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    import protocols

    names = args.name.split(",")
    try:
        deployment = Deployment.load(args.deployment)
        if len(names) > 1:   # light parties sharing one process (e.g. 100 FedAvg clients)
            if args.crash_before or args.tls_cert or args.ledger:
                raise ValueError("several --name values cannot take --crash-before, --tls-cert or "
                                 "--ledger (each party needs its own process for those)")
            if not Path(args.key).is_dir():
                raise ValueError("with several --name values, --key is the directory holding "
                                 "NAME.key for each")
            key_files = [Path(args.key) / f"{n}.key" for n in names]
        else:
            key_files = [Path(args.key)]
        all_keys = [PrivateKeys.load(f) for f in key_files]
        for name, keys, path in zip(names, all_keys, key_files, strict=True):
            if keys.name != name:
                raise DeploymentError(f"key file {path} belongs to '{keys.name}', not '{name}'")
            deployment.check_keys(keys)
        text = Path(args.params[1:]).read_text() if args.params.startswith("@") else args.params
        params = json.loads(text)
        if not isinstance(params, dict):
            raise ValueError("parameters must be a JSON object")
        for name in names:
            protocols.role_function(args.protocol, deployment.role_of(name))
        client_cert = _client_cert(args.tls_cert, args.tls_key, deployment)
        crash = CrashPlan.parse(args.crash_before) if args.crash_before else None
        typed = protocols.check_params(args.protocol, params)  # bad parameters fail before connecting
        data = args.data and Path(args.data)
        if data is not None and len(names) > 1 and not data.is_dir():
            raise ValueError("with several --name values, --data is the directory holding "
                             "NAME.csv, .npz or .parquet for each")
        if len(names) > 1 and (args.queries or args.model):
            raise ValueError("several --name values cannot take --queries or --model")
        # what it brings (records, queries, model), checked before anything is sent
        own = {name: read_party_files(protocols.load(args.protocol), deployment.role_of(name),
                                      name, params, data, args.queries and Path(args.queries),
                                      args.model and Path(args.model)) for name in names}
        insecure = typed.insecure()
        if insecure and not args.allow_insecure:
            raise ValueError("these parameters make the run insecure (" + "; ".join(insecure)
                             + "); this party refuses them unless its operator starts it with "
                             "--allow-insecure")
    except json.JSONDecodeError as e:
        print(f"confidant party: --params is not valid JSON ({e}); pass a JSON object, "
              "e.g. '{\"queries\": 100}', or @FILE", file=sys.stderr)
        return EXIT_USAGE
    except (DeploymentError, ValueError, OSError, protocols.ProtocolError) as e:
        print(f"confidant party: {e}", file=sys.stderr)
        return EXIT_USAGE
    workdir = Path(args.workdir) if args.workdir else Path(args.deployment).resolve().parent
    import torch  # the runner owns process-wide state; protocols never set it
    from threadpoolctl import threadpool_limits
    threads = max(1, args.torch_threads)
    torch.set_num_threads(threads)
    # numpy's BLAS too: its idle threads spin, and four answering parties sharing 2 cores
    # took 4-11 s per HE evaluation instead of 1.4 s (he/ does its linear algebra in BLAS)
    threadpool_limits(threads, user_api="blas")   # for the process's life (no 'with')
    async def run_all() -> list:
        return await asyncio.gather(*(
            run_party(deployment, keys, args.protocol, args.session, params, workdir,
                      args.peer_timeout, Path(args.ledger) if args.ledger else None,
                      insecure=insecure, client_cert=client_cert, crash=crash, files=own[keys.name],
                      bind_address=args.bind_address, connect_timeout=args.connect_timeout)
            for keys in all_keys), return_exceptions=True)

    try:
        outcomes = asyncio.run(run_all())
    except KeyboardInterrupt:
        return EXIT_FAILED
    code = EXIT_OK
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, DeploymentError):  # e.g. a session id this party already completed
            print(f"confidant party {name}: {outcome}", file=sys.stderr)
            code = max(code, EXIT_USAGE)
        elif isinstance(outcome, ChannelError):
            print(f"confidant party {name}: {outcome}", file=sys.stderr)
            code = max(code, EXIT_FAILED)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif not outcome["ok"]:
            print(f"confidant party {name}: {outcome['error']}", file=sys.stderr)
            code = max(code, EXIT_FAILED)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="confidant party", description=__doc__.splitlines()[0])
    configure(parser)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
