"""A party's own data file (learning/data_files.py): built-in sets written as party files
read back exactly as the built-in loader gives them; every mismatch with the study refused
with the party, the file and what differs; FedAvg trained on each client's own file, in
one process and between processes (run_parties.py --data-dir), refused before anything
starts when a file is wrong."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from learning.data_files import (
    DataFileError,
    DataSpec,
    load_party_data,
    party_file,
    read_study,
    split_to_files,
)
from learning.datasets import load_table, partition
from protocols.runner import in_memory_resources, run_session

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ["client01", "client02", "client03"]


@pytest.mark.parametrize("fmt", ["csv", "npz", "parquet"])
@pytest.mark.parametrize("dataset", ["digits", "wine"])
def test_party_files_read_back_as_the_built_in_loader_gives_them(tmp_path, fmt, dataset):
    files = split_to_files(dataset, CLIENTS, tmp_path, how="iid", seed=0, fmt=fmt)
    spec = read_study(tmp_path)
    table = load_table(dataset, seed=0)
    shards = partition(table.y_train, len(CLIENTS), "iid", seed=0)
    for name, idx in zip(CLIENTS, shards, strict=True):
        mine = load_party_data(files[name], spec, name)
        assert np.array_equal(mine.ids, idx)
        assert np.array_equal(mine.y, table.y_train[idx].numpy())
        assert np.allclose(mine.x, table.x_train[idx].numpy(), atol=1e-5)
        xtr, ytr, xte, yte = mine.split()
        assert len(yte) == math.ceil(0.25 * len(idx)) and len(ytr) + len(yte) == len(idx)


def test_mnist_ships_offline():
    data = load_table("mnist")
    assert data.x_train.shape == (3750, 784) and data.num_classes == 10
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) == 1.0


def _csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "client01.csv"
    frame.to_csv(path, index=False)
    return path


def _good(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["age", "bp", "chol"])
    frame["label"] = np.arange(n) % 2
    return frame


SPEC = DataSpec(3, 2, feature_names=("age", "bp", "chol"))


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.drop(columns=["chol"]), "missing chol"),
    (lambda f: f.rename(columns={"label": "outcome"}), "no label column 'label'"),
    (lambda f: f.assign(label=np.arange(len(f)) % 3), "label(s) [2] outside 0..1"),
    (lambda f: f.assign(bp=[np.nan] + [1.0] * (len(f) - 1)), "row 0 has a missing"),
    (lambda f: f.assign(bp=["high"] * len(f)), "non-numeric feature column(s) bp"),
    (lambda f: f[["bp", "age", "chol", "label"]], "another order"),
    (lambda f: f.head(3), "has 3 rows; at least 4"),
])
def test_a_file_that_does_not_match_the_study_is_refused_by_name(tmp_path, mutate, message):
    path = _csv(tmp_path, mutate(_good()))
    assert len(load_party_data(_csv(tmp_path, _good()), SPEC, "client01")) == 12
    path = _csv(tmp_path, mutate(_good()))
    with pytest.raises(DataFileError) as e:
        load_party_data(path, SPEC, "client01")
    assert "party 'client01'" in str(e.value) and str(path) in str(e.value)
    assert message in str(e.value), str(e.value)


def test_unsupported_format_missing_file_and_bad_study(tmp_path):
    (tmp_path / "client01.xlsx").write_bytes(b"PK")
    with pytest.raises(DataFileError, match="format '.xlsx' is not supported"):
        load_party_data(tmp_path / "client01.xlsx", SPEC, "client01")
    with pytest.raises(DataFileError, match="expected one file client02.csv"):
        party_file(tmp_path, "client02")
    with pytest.raises(DataFileError, match="study.json is missing"):
        read_study(tmp_path)
    with pytest.raises(DataFileError, match="needs 'classes' as an integer"):
        DataSpec.from_dict({"features": 3})
    with pytest.raises(DataFileError, match="'shift' has 2 values for 3 features"):
        DataSpec.from_dict({"features": 3, "classes": 2, "shift": [0, 1]})


def test_fedavg_trains_on_each_clients_own_file(tmp_path):
    """Each client reads only its own file and scores on its own held-out quarter; the
    model learns (SecAgg+ on), and a client without its file fails by name."""
    split_to_files("digits", CLIENTS, tmp_path, how="iid", seed=0, fmt="npz")
    spec = read_study(tmp_path)
    data = {n: load_party_data(party_file(tmp_path, n), spec, n) for n in CLIENTS}
    params = {"rounds": 8, "data": spec.to_dict(), "dropout": 0.0, "corrupt": 0.0}
    roles = {**dict.fromkeys(CLIENTS, "client"), "server": "server"}
    import protocols.fedavg as fedavg
    typed = fedavg.Params.from_dict(params)
    torch.manual_seed(0)
    res = asyncio.run(run_session("fedavg", roles, params,
                                  resources=in_memory_resources(fedavg, typed, data)))
    for name in CLIENTS:
        r = res[name].public
        assert r["samples"] == len(data[name]) - math.ceil(0.25 * len(data[name]))
        assert r["final_accuracy"] > 0.8, (name, r["rounds"])
    missing = asyncio.run(run_session("fedavg", roles, {**params, "rounds": 1},
                                      resources=in_memory_resources(fedavg, typed, {})))
    assert "started without its data file" in str(missing["client01"])


def _run_parties(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_parties.py"), "--runs-dir",
                           str(tmp_path / "runs"), "fedavg", "--clients", "3", "--rounds", "2",
                           "--no-baseline", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def test_fedavg_between_processes_on_own_files(tmp_path):
    data = tmp_path / "data"
    split_to_files("breast_cancer", CLIENTS, data, how="noniid", seed=0, fmt="parquet")
    out = _run_parties(tmp_path, "--data-dir", str(data))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "own data: 3 parties' files" in out.stdout
    results = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "results.json").read_text())
    assert results["audit"]["ok"]
    spec = read_study(data)
    for name in CLIENTS:
        rec = results["parties"][name]
        assert rec["ok"] and rec["result"]["final_accuracy"] is not None, rec
        # its trained model, as files: the PyTorch program scores its own held-out quarter
        # as the party reported, and the ONNX graph computes the same logits
        files = {Path(f).name: Path(f) for f in rec["outputs"]}
        assert set(files) == {"fedavg_model.onnx", "fedavg_model.pt2"}
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in files.values())   # private
        _, _, x_test, y_test = load_party_data(party_file(data, name), spec, name).split()
        program = torch.export.load(files["fedavg_model.pt2"]).module()
        logits = program(x_test).detach()
        accuracy = (logits.argmax(1) == y_test).float().mean().item()
        assert abs(accuracy - rec["result"]["final_accuracy"]) < 1e-4
        graph = onnx.load(files["fedavg_model.onnx"])
        onnx.checker.check_model(graph)
        (onnx_logits,) = ReferenceEvaluator(graph).run(None, {"x": x_test.numpy()})
        assert np.allclose(onnx_logits, logits.numpy(), atol=1e-4)


def test_a_wrong_file_stops_the_run_before_any_process_starts(tmp_path):
    data = tmp_path / "data"
    split_to_files("digits", CLIENTS, data, how="iid", seed=0, fmt="csv")
    frame = pd.read_csv(data / "client02.csv")
    frame.drop(columns=["f7"]).to_csv(data / "client02.csv", index=False)
    out = _run_parties(tmp_path, "--data-dir", str(data))
    assert out.returncode != 0
    line = (out.stdout + out.stderr).strip().splitlines()[-1]
    assert "party 'client02'" in line and "client02.csv" in line and "missing f7" in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_party_checks_its_own_file_before_connecting(tmp_path, capsys):
    """`confidant party --data`: no broker listens on port 1; the file is refused first."""
    from parties.cli import main as cli_main
    from parties.identity import new_local_deployment

    split_to_files("digits", CLIENTS, tmp_path / "data", how="iid", seed=0, fmt="csv")
    study = read_study(tmp_path / "data").to_dict()
    new_local_deployment(tmp_path, [*((c, "client") for c in CLIENTS), ("server", "server")],
                         "mqtt://127.0.0.1:1", name="owndata")
    args = ["party", "--deployment", str(tmp_path / "deployment.toml"), "--name", "client01",
            "--key", str(tmp_path / "keys" / "client01.key"), "--protocol", "fedavg",
            "--session", "s1"]
    wrong = json.dumps({"data": {**study, "classes": 3, "feature_names": None}})
    assert cli_main([*args, "--params", wrong, "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "party 'client01'" in err and "outside 0..2" in err, err
    assert cli_main([*args, "--params", json.dumps({"data": study})]) == 2
    assert "give its file with --data FILE" in capsys.readouterr().err
    assert cli_main([*args, "--params", "{}", "--data", str(tmp_path / "data")]) == 2
    assert "declare no data description" in capsys.readouterr().err


@pytest.mark.parametrize("scenario, names, extra", [
    ("dssgd", ["participant1", "participant2", "participant3"], ["--parties", "3", "--rounds", "3"]),
    ("hashcomb-fl", ["owner1", "owner2", "owner3"], ["--owners", "3", "--rounds", "2", "--no-baseline"]),
])
def test_dssgd_and_hashcomb_fl_on_own_files(tmp_path, scenario, names, extra):
    data = tmp_path / "data"
    split_to_files("wine", names, data, how="iid", seed=0, fmt="npz")
    out = subprocess.run([sys.executable, str(ROOT / "run_parties.py"), "--runs-dir",
                          str(tmp_path / "runs"), scenario, *extra, "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    results = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "results.json").read_text())
    for session in results.get("sessions", [results]):
        assert session["audit"]["ok"]
        assert all(rec["ok"] for rec in session["parties"].values()), session["parties"]
