"""The embedded broker: amqtt on 127.0.0.1 and a free port, in its own process.

Running it as a separate OS process (``python -m parties.broker --port N
--auth-dir DIR``) keeps the parties honest (they reach it over TCP like a real
Mosquitto) and lets tests kill and restart it. Like the generated Mosquitto
config it refuses anonymous clients: each run's parties log in with the
passwords on their cards once :meth:`EmbeddedBroker.admit` has told it their
deployment, and get the same topic rights as Mosquitto's ACL
(``parties/broker_auth.py``). It listens on loopback only, without TLS; a
deployment across machines uses Mosquitto with ``confidant broker-config``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpc import randomness

from .broker_config import ADMIN_USER
from .identity import Deployment, mosquitto_password_hash


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0,
                  proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s")


class EmbeddedBroker:
    """Start/stop an amqtt broker process on loopback; a context manager.

    Parties can log in once their deployment is :meth:`admit`-ted; ``admin`` holds
    credentials for test recorders that may read and write every Confidant topic.
    """

    def __init__(self, port: int | None = None, log_path: str | None = None, *,
                 auth_dir: str | os.PathLike[str] | None = None, allow_anonymous: bool = False):
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        # allow_anonymous: for tests that point run_parties.py --broker at it from outside
        self.allow_anonymous = allow_anonymous
        self._own_dir = auth_dir is None
        self.auth_dir = Path(auth_dir or tempfile.mkdtemp(prefix="confidant-broker-"))
        (self.auth_dir / "deployments").mkdir(parents=True, exist_ok=True)
        os.chmod(self.auth_dir, 0o700)
        self.admin = (ADMIN_USER, randomness.token_urlsafe(24))
        (self.auth_dir / "admin.hash").write_text(mosquitto_password_hash(self.admin[1]))

    def admit(self, deployment: Deployment) -> None:
        """Let the parties of ``deployment`` log in (takes effect at once, also while running)."""
        final = self.auth_dir / "deployments" / f"{deployment.name}.toml"
        partial = final.with_suffix(".part")
        deployment.dump(partial)
        os.replace(partial, final)  # the broker never reads a half-written file

    def client_args(self) -> dict:
        """Keyword arguments for an aiomqtt.Client logged in as admin."""
        return {"hostname": "127.0.0.1", "port": self.port,
                "username": self.admin[0], "password": self.admin[1]}

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "parties.broker", "--port", str(self.port),
                                      "--auth-dir", str(self.auth_dir),
                                      *(["--allow-anonymous"] if self.allow_anonymous else [])],
                                     stdout=log, stderr=log, start_new_session=True)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self) -> None:
        """Stop the broker and forget its credentials."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.auth_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


async def serve(port: int, auth_dir: str, allow_anonymous: bool = False) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}",
                                  "max_connections": 0}},
        "plugins": {"parties.broker_auth.DeploymentAuthPlugin": {
                        "auth_dir": auth_dir, "allow_anonymous": allow_anonymous},
                    "parties.broker_auth.DeploymentTopicPlugin": {}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="embedded amqtt broker on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--auth-dir", required=True,
                        help="admin.hash and deployments/*.toml: who may log in, with which rights")
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="also let clients in without credentials, with all rights (tests)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port, args.auth_dir, args.allow_anonymous))


if __name__ == "__main__":
    main()
