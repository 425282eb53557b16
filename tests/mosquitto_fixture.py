"""Start and stop a real Mosquitto for tests, on a free loopback port.

Reusable: write a config with :func:`parties.broker_config.write_broker_config`
into a directory, then ``port, proc = start_mosquitto(that_dir)``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HAVE_MOSQUITTO = os.access(MOSQUITTO, os.X_OK)
SKIP_REASON = (f"Debian's mosquitto binary is not installed ({MOSQUITTO}); "
               "`make test` installs it")
# Decorate tests that need the binary: @requires_mosquitto
requires_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason=SKIP_REASON)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_mosquitto(config_dir: str | os.PathLike[str], timeout: float = 10.0,
                    port: int | None = None) -> tuple[int, subprocess.Popen]:
    """Run Mosquitto with ``config_dir/mosquitto.conf``, its listener moved to
    127.0.0.1 and a free port (or ``port``, e.g. to restart on the same one).
    Returns ``(port, process)``; the broker log is ``config_dir/mosquitto.log``."""
    config_dir = Path(config_dir)
    base = (config_dir / "mosquitto.conf").read_text().splitlines()
    last_error = ""
    for _ in range(3):  # the free port may be taken before mosquitto binds it
        chosen = port or free_port()
        lines = [f"listener {chosen} 127.0.0.1" if ln.startswith("listener ") else ln
                 for ln in base]
        if os.geteuid() == 0:
            # As root Mosquitto switches to the 'mosquitto' user, which cannot read
            # files in a private temporary directory.
            lines.insert(0, "user root")
        test_conf = config_dir / "mosquitto.test.conf"
        test_conf.write_text("\n".join(lines) + "\n")
        log = open(config_dir / "mosquitto.log", "ab")
        proc = subprocess.Popen([MOSQUITTO, "-c", str(test_conf)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _listening(chosen):
                return chosen, proc
            time.sleep(0.05)
        stop_mosquitto(proc)
        last_error = (config_dir / "mosquitto.log").read_text(errors="replace")[-2000:]
        if port is not None:
            break
    raise RuntimeError(f"mosquitto did not start; its log says:\n{last_error}")


def stop_mosquitto(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
