"""Bad input to the commands a user types: a one-line message that says what was wrong,
given before any party process starts, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parties.cli import main as cli_main
from parties.identity import new_local_deployment

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv,message", [
    (["capc", "--queries", "0"], "capc: queries must be at least 1, got 0"),
    (["capc", "--queries", "-5"], "capc: queries must be at least 1, got -5"),
    (["argmax2pc", "--batch", "0"], "argmax2pc: batch must be at least 1"),
    (["argmax2pc", "--classes", "1"], "argmax2pc: classes must be at least 2"),
])
def test_run_parties_refuses_bad_parameters_before_starting(tmp_path, argv, message):
    out = subprocess.run([sys.executable, str(ROOT / "run_parties.py"), "--runs-dir",
                          str(tmp_path / "runs"), *argv], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2
    assert message in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_party_names_the_option_with_bad_json(tmp_path, capsys):
    new_local_deployment(tmp_path, [("a", "holder"), ("b", "holder"), ("d", "dealer")],
                         "mqtt://127.0.0.1:1883", name="badjson")
    args = ["party", "--deployment", str(tmp_path / "deployment.toml"), "--name", "a",
            "--key", str(tmp_path / "keys" / "a.key"), "--protocol", "argmax2pc",
            "--session", "s1"]
    assert cli_main([*args, "--params", "{bad json"]) == 2
    err = capsys.readouterr().err
    assert "--params is not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert cli_main([*args, "--params", '{"classes": 1}']) == 2
    assert "classes must be at least 2" in capsys.readouterr().err
