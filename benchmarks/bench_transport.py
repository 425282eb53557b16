"""Transport cost: envelopes, the MQTT channel through amqtt and Mosquitto, and the 1x10
2PC argmax over MQTT beside the same argmax over CrypTen's own gloo transport.

Run: python -m benchmarks.bench_transport [--quick]

Every party of the 2PC runs in its own OS process, as in a deployment; the
brokers listen on loopback. The gloo baseline is CrypTen as it ships: two
processes, ``crypten.init()`` over torch.distributed/gloo on 127.0.0.1, and its
default trusted-first-party tuple provider (no dealer, so no dealer traffic).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BATCH, CLASSES = 1, 10
console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)


# -- envelopes ------------------------------------------------------------------

def bench_envelope(size: int, seconds: float = 1.0) -> float:
    """Seconds per seal + open of a ``size``-byte payload (best of three slices)."""
    from parties.envelope import Sealer
    from parties.identity import new_local_deployment

    with tempfile.TemporaryDirectory() as tmp:
        dep = new_local_deployment(tmp, [("a", "x"), ("b", "x")], "mqtt://127.0.0.1:1883")
        from parties.identity import PrivateKeys
        a = Sealer(dep, PrivateKeys.load(Path(tmp) / "keys" / "a.key"), "s")
        b = Sealer(dep, PrivateKeys.load(Path(tmp) / "keys" / "b.key"), "s")
        payload = os.urandom(size)
        best = float("inf")
        for _ in range(3):
            n, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / 3 or n < 3:
                b.open(a.seal("b", "bench", "x", payload).data)
                n += 1
            best = min(best, elapsed / n)
        return best


# -- brokers ----------------------------------------------------------------------

class _Brokers:
    """Start a deployment's broker: the embedded amqtt, or Mosquitto with the generated config."""

    def __init__(self, kind: str, run_dir: Path, parties: list[tuple[str, str]]):
        from parties.broker import EmbeddedBroker, free_port
        from parties.identity import new_local_deployment

        self.kind, self.port = kind, free_port()
        self.deployment = new_local_deployment(run_dir, parties, f"mqtt://127.0.0.1:{self.port}",
                                               name=f"bench{secrets.token_hex(2)}")
        if kind == "amqtt":
            self._amqtt = EmbeddedBroker(self.port).start()
            self._amqtt.admit(self.deployment)
        else:
            from parties.broker_config import write_broker_config
            from tests.mosquitto_fixture import start_mosquitto
            write_broker_config(self.deployment, run_dir / "broker", port=self.port, bind="127.0.0.1")
            _, self._proc = start_mosquitto(run_dir / "broker", port=self.port)

    def stop(self) -> None:
        if self.kind == "amqtt":
            self._amqtt.close()
        else:
            from tests.mosquitto_fixture import stop_mosquitto
            stop_mosquitto(self._proc)


def have_mosquitto() -> bool:
    from tests.mosquitto_fixture import HAVE_MOSQUITTO
    return HAVE_MOSQUITTO


# -- round trips through a broker ------------------------------------------------------

async def _roundtrips(run_dir: Path, sizes: dict[int, tuple[int, int]]) -> dict[int, tuple]:
    """MqttChannel 'a' to MqttChannel 'b' (one process, one event loop): per size,
    (median and fastest round trip in seconds, one-way MB/s streaming ``n`` messages)."""
    from parties.identity import Deployment, PrivateKeys
    from parties.mqtt_channel import MqttChannel
    from parties.transcript import Transcript, transcript_path

    dep = Deployment.load(run_dir / "deployment.toml")
    chans = {}
    for name in ("a", "b"):
        keys = PrivateKeys.load(run_dir / "keys" / f"{name}.key")
        chans[name] = await MqttChannel(dep, keys, "bench", Transcript(
            transcript_path(run_dir, name), name, keys.sign_key)).start()
    a, b = chans["a"], chans["b"]
    await asyncio.gather(a.wait_for_peers(), b.wait_for_peers())
    out = {}
    try:
        for size, (rounds, stream) in sizes.items():
            payload = os.urandom(size)

            async def echo(n: int) -> None:
                for _ in range(n):
                    await b.send("a", "bench.pong", await b.recv("a", "bench.ping", 60))

            task = asyncio.ensure_future(echo(rounds))
            rtts = []
            for _ in range(rounds):
                t = time.perf_counter()
                await a.send("b", "bench.ping", payload)
                await a.recv("b", "bench.pong", 60)
                rtts.append(time.perf_counter() - t)
            await task

            async def sink(n: int) -> None:
                for _ in range(n):
                    await b.recv("a", "bench.stream", 120)
                await b.send("a", "bench.done", b"")

            task = asyncio.ensure_future(sink(stream))
            t = time.perf_counter()
            for _ in range(stream):
                await a.send("b", "bench.stream", payload)
            await a.recv("b", "bench.done", 120)
            elapsed = time.perf_counter() - t
            await task
            out[size] = (statistics.median(rtts[1:]), min(rtts[1:]), stream * size / elapsed / 1e6)
    finally:
        for ch in chans.values():
            await ch.close()
            ch.transcript.close()
    return out


def bench_roundtrips(kind: str, sizes: dict[int, tuple[int, int]]) -> dict[int, tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        brokers = _Brokers(kind, Path(tmp), [("a", "x"), ("b", "x")])
        try:
            return asyncio.run(_roundtrips(Path(tmp), sizes))
        finally:
            brokers.stop()


# -- the 1x10 argmax: over MQTT ----------------------------------------------------------

def _random_share(batch: int, classes: int):
    from mpc import additive
    return additive.random_ring((batch, classes))


def _argmax_local(share):
    from mpc.twopc import share_of, tensor_from_shares
    return share_of(tensor_from_shares(share).argmax(dim=-1, one_hot=True))


async def _mqtt_worker(run_dir: Path, name: str, reps: int) -> dict:
    from mpc.twopc import TwoParty, serve_dealer
    from parties.identity import Deployment, PrivateKeys
    from parties.mqtt_channel import MqttChannel
    from parties.transcript import Transcript, transcript_path

    dep = Deployment.load(run_dir / "deployment.toml")
    keys = PrivateKeys.load(run_dir / "keys" / f"{name}.key")
    transcript = Transcript(transcript_path(run_dir, name), name, keys.sign_key)
    ch = await MqttChannel(dep, keys, "bench-2pc", transcript).start()
    result: dict = {"party": name}
    try:
        await ch.wait_for_peers()
        if name == "dealer":
            result["served"] = await serve_dealer(ch, ("alice", "bob"), prefix="bench")
            return result
        peer = "bob" if name == "alice" else "alice"
        share = _random_share(BATCH, CLASSES)
        runs = []
        async with TwoParty(ch, peer, "dealer", prefix="bench") as tp:
            for _ in range(reps):
                before = (tp.stats, ch.sent_messages, ch.sent_bytes)
                t = time.perf_counter()
                await tp.run(_argmax_local, share)
                elapsed = time.perf_counter() - t
                runs.append({"seconds": elapsed,
                             "peer_messages": tp.stats["messages"] - before[0]["messages"],
                             "dealer_requests": tp.stats["dealer_requests"] - before[0]["dealer_requests"],
                             "dealer_round_trips": (tp.stats["dealer_round_trips"]
                                                    - before[0]["dealer_round_trips"]),
                             "envelopes": ch.sent_messages - before[1],
                             "envelope_bytes": ch.sent_bytes - before[2],
                             "payload_bytes": tp.stats["bytes"] - before[0]["bytes"]})
        result["runs"] = runs
        return result
    finally:
        await ch.close()
        transcript.close()


def bench_argmax_mqtt(kind: str, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        brokers = _Brokers(kind, run_dir, [("alice", "holder"), ("bob", "holder"), ("dealer", "dealer")])
        try:
            procs = {n: subprocess.Popen([sys.executable, "-m", "benchmarks.bench_transport",
                                          "--mqtt-worker", n, "--run-dir", tmp, "--reps", str(reps)],
                                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
                     for n in ("alice", "bob", "dealer")}
            outs = {n: p.communicate(timeout=600)[0] for n, p in procs.items()}
            if any(p.returncode for p in procs.values()):
                raise RuntimeError(f"2PC worker failed: {[p.returncode for p in procs.values()]}")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            brokers.stop()
        return json.loads(outs["alice"].strip().splitlines()[-1])


# -- the 1x10 argmax: CrypTen over gloo ---------------------------------------------------

def _gloo_worker(reps: int) -> dict:
    # Only the torch import alias CrypTen 0.4.1 needs (see mpc/twopc/shims.py), not the
    # glue itself: this baseline is CrypTen with its own communicator and provider.
    import importlib

    old = "torch.onnx._internal.registration"
    try:
        importlib.import_module(old)
    except ImportError:
        sys.modules[old] = importlib.import_module(
            "torch.onnx._internal.torchscript_exporter.registration")
    import crypten
    import numpy as np
    import torch

    crypten.init()
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    comm = crypten.comm.get()
    share = torch.from_numpy(_random_share(BATCH, CLASSES).view(np.int64).copy())
    x = crypten.mpc.MPCTensor.from_shares(share, precision=16)
    runs = []
    for _ in range(reps):
        comm.reset_communication_stats()
        t = time.perf_counter()
        x.argmax(dim=-1, one_hot=True)
        elapsed = time.perf_counter() - t
        stats = comm.get_communication_stats()
        runs.append({"seconds": elapsed, "rounds": int(stats["rounds"]), "bytes": int(stats["bytes"])})
    return {"party": comm.get_rank(), "runs": runs}


def bench_argmax_gloo(reps: int) -> dict:
    from parties.broker import free_port

    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RENDEZVOUS": "env://", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.bench_transport",
                                       "--gloo-worker", "--reps", str(reps)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"gloo worker failed: {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


# -- report ------------------------------------------------------------------------

def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"


def _warm(result: dict) -> float:
    return statistics.median(r["seconds"] for r in result["runs"][1:])


def main(quick: bool = False) -> None:
    console.print("The machine may be shared: latencies are medians, and the fastest "
                  "round trip shows the floor without contention.")
    table = Table(title="Envelope seal + open (one core, best of 3)")
    for col in ("payload", "seal + open", "throughput", "earlier figure (docs/parties.md)"):
        table.add_column(col)
    for size, label, anchor in ((1024, "1 KiB", "277 µs"), (2**20, "1 MiB", "4.3 ms")):
        per = bench_envelope(size, 0.6 if quick else 1.5)
        table.add_row(label, _ms(per), f"{1 / per:,.0f} msg/s, {size / per / 2**20:,.1f} MiB/s", anchor)
    console.print(table)

    kinds = ["amqtt"] + (["mosquitto"] if have_mosquitto() else [])
    sizes = {1024: (50, 200) if quick else (300, 1000), 2**20: (5, 5) if quick else (20, 20)}
    table = Table(title="MqttChannel to MqttChannel through a broker on loopback "
                        "(sealed, transcribed, QoS 1)")
    for col in ("broker", "payload", "round trip: median", "fastest", "one-way stream"):
        table.add_column(col)
    for kind in kinds:
        for size, (rtt, fastest, mbps) in bench_roundtrips(kind, sizes).items():
            table.add_row(kind, "1 KiB" if size == 1024 else "1 MiB", _ms(rtt), _ms(fastest),
                          f"{mbps:,.2f} MB/s ({mbps * 1e6 / size:,.0f} msg/s)")
    if not have_mosquitto():
        table.add_row("mosquitto", "-", "not installed", "", "`make mosquitto`")
    console.print(table)

    # Transports take turns (passes), so a burst of load elsewhere hits them alike;
    # each keeps its best pass.
    reps, passes = (4, 1) if quick else (11, 2)
    best: dict[str, dict] = {}
    for _ in range(passes):
        for name, bench in [("gloo", bench_argmax_gloo)] + [
                (kind, lambda r, k=kind: bench_argmax_mqtt(k, r)) for kind in kinds]:
            got = bench(reps)
            if name not in best or _warm(got) < _warm(best[name]):
                best[name] = got
    gloo = best["gloo"]
    g_warm = _warm(gloo)
    table = Table(title=f"2PC argmax (one-hot) of a {BATCH}x{CLASSES} score vector, party 0's "
                        f"view: median of {reps - 1} after a first call, best of {passes} pass(es)")
    for col in ("transport", "first call", "per argmax", "vs gloo (aim <= 3x)",
                "peer messages / rounds", "dealer", "bytes sent"):
        table.add_column(col)
    table.add_row("CrypTen gloo, TFP provider", _ms(gloo["runs"][0]["seconds"]), _ms(g_warm), "1.0x",
                  f"{gloo['runs'][-1]['rounds']} rounds", "none (local TFP)",
                  f"{gloo['runs'][-1]['bytes']:,}")
    for kind in kinds:
        m = best[kind]
        warm, last = _warm(m), m["runs"][-1]
        ratio = warm / g_warm
        table.add_row(f"MQTT via {kind}, dealer", _ms(m["runs"][0]["seconds"]), _ms(warm),
                      f"{'[green]' if ratio <= 3 else '[red]'}{ratio:.1f}x[/]",
                      f"{last['peer_messages']} messages",
                      f"{last['dealer_requests']} tuples in {last['dealer_round_trips']} round trip(s)"
                      f" (first call: {m['runs'][0]['dealer_round_trips']})",
                      f"{last['envelope_bytes']:,} sealed ({last['payload_bytes']:,} share bytes)")
    console.print(table)


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--mqtt-worker", help=argparse.SUPPRESS)
    parser.add_argument("--gloo-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=11, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mqtt_worker:
        print(json.dumps(asyncio.run(_mqtt_worker(Path(args.run_dir), args.mqtt_worker, args.reps))))
    elif args.gloo_worker:
        print(json.dumps(_gloo_worker(args.reps)))
    else:
        main(args.quick)


if __name__ == "__main__":
    _cli()
