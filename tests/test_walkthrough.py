"""README's "Use it with your own data": examples/two_hospitals.sh, shown whole in the README,
run as written. Four parties on their own loopback addresses (127.0.0.2-5), each with its own
key, files and TLS certificate; Mosquitto with TLS and ACL on 127.0.0.1; hospital A ends with
labels.csv and its retrained model; the audit passes against the pinned fingerprint."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.mosquitto_fixture import MOSQUITTO, free_port, requires_mosquitto

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "two_hospitals.sh"


def test_the_readme_shows_the_script_whole():
    readme = (ROOT / "README.md").read_text()
    assert "```bash\n" + SCRIPT.read_text() + "```" in readme


@requires_mosquitto
def test_two_hospitals_walkthrough_runs_as_written():
    # Mosquitto, started as root, drops to its own user: the directory must be traversable
    work = Path(tempfile.mkdtemp(prefix="confidant-walkthrough-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        user_env = {k: v for k, v in os.environ.items() if k != "CONFIDANT_PROTOCOLS"}  # as a user has
        env = {**user_env, "PORT": str(free_port()),
               "PATH": f"{Path(sys.executable).parent}:{Path(MOSQUITTO).parent}:{os.environ['PATH']}"}
        out = subprocess.run(["bash", str(SCRIPT), str(work / "study")], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        study = work / "study"
        assert "audit passed" in out.stdout
        rows = list(csv.DictReader((study / "hospital-a/outputs/hospital-a/labels.csv").open()))
        assert len(rows) == 60 and {r["status"] for r in rows} <= {"answered", "refused", "abstained"}
        assert sum(r["status"] == "answered" for r in rows) > 30
        assert sorted(p.name for p in (study / "hospital-a/outputs/hospital-a").iterdir()) == \
            ["capc_qp_model.onnx", "capc_qp_model.pt2", "labels.csv"]
        log = (study / "broker" / "mosquitto.log").read_text()
        for i, name in enumerate(["hospital-a", "hospital-b", "guardian", "dealer"], start=2):
            assert re.search(rf"connected from 127\.0\.0\.{i}:\d+ as {name} ", log), name
            # no machine holds another's key, certificate key or data
            mine = {p.name for p in (study / name).iterdir()}
            assert not any(other in f for f in mine for other in
                           {"hospital-a", "hospital-b", "guardian", "dealer"} - {name}), mine
    finally:
        shutil.rmtree(work, ignore_errors=True)
