"""CaPC on what organisations really have: answering parties' own models from ONNX files
(exported from PyTorch and from scikit-learn), the querying party's records and queries
from files, labels.csv and the retrained model as its outputs; bad files refused before
any process starts, naming the party."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from torch import nn

import protocols
from learning.data_files import load_party_data, party_file, read_study, split_to_files
from learning.model_files import load_model, model_files
from parties.resources import read_party_files
from protocols import RoleContext, capc
from tests.capc_harness import roles_for, run_capc

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"queries": 20, "batch_size": 10, "epochs": 5, "mode": "plaintext", "noise_seed": 3,
         "sigma_gnmax": 0.5, "epsilon_budget": 1e6}


def _trained_here(name: str, params: dict, aps: int = 2) -> nn.Sequential:
    """The model the built-in path trains for ``name`` (its data, architecture and seed)."""
    p = capc.CapcParams.from_dict(params)
    ctx = RoleContext(SimpleNamespace(me=name), roles_for(aps), params)
    data = capc.my_data(ctx, p)
    return capc.train_own(ctx, p, data.x, data.y, data.num_classes)


def test_an_ap_answering_with_its_pytorch_model_as_onnx_gives_the_same_labels(tmp_path):
    builtin = asyncio.run(run_capc(tmp_path / "a", PLAIN))
    onnx_file = tmp_path / "ap1.onnx"
    onnx_file.write_bytes(model_files(_trained_here("ap1", PLAIN), 64)["model.onnx"])
    files = read_party_files(protocols.load("capc"), "ap", "ap1", PLAIN, model=onnx_file)
    own = asyncio.run(run_capc(tmp_path / "b", PLAIN, files={"ap1": files}))
    assert own["ap1"].public["architecture"] == "own model"
    assert own["qp"].public["labels"] == builtin["qp"].public["labels"]
    assert len(own["qp"].public["labels"]) > 10


def _study(tmp_path: Path, parties: int = 3, queries: int = 30) -> Path:
    data = tmp_path / "data"
    split_to_files("digits", [f"party{i}" for i in range(1, parties + 1)], data, how="iid",
                   seed=0, queries=queries, querier="party1")
    return data


def _run(tmp_path: Path, *args: str, parties: int = 3) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_parties.py"), "--runs-dir",
                           str(tmp_path / "runs"), "capc", "--parties", str(parties), *args],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_crypto_capc_on_files_with_a_scikit_learn_model(tmp_path):
    """Between processes, CKKS and 2PC, everything from files: party2 answers with a
    scikit-learn logistic regression exported to ONNX. With one voter and GNMax noise far
    below one vote, each answered label is that model's prediction for the query, which
    the QP never showed anyone: the encrypted path computes what scikit-learn computes."""
    data = _study(tmp_path, parties=2)
    spec = read_study(data)
    own = load_party_data(party_file(data, "party2"), spec, "party2")
    lr = LogisticRegression(max_iter=500).fit(own.x, own.y)
    models = tmp_path / "models"
    models.mkdir()
    (models / "party2.onnx").write_bytes(
        to_onnx(lr, own.x[:1].astype(np.float32), options={"zipmap": False}).SerializeToString())
    out = _run(tmp_path, "--queries", "30", "--batch-size", "15", "--epochs", "10",
               "--sigma-gnmax", "0.01", "--budget", "1e9", "--data-dir", str(data),
               "--models-dir", str(models), parties=2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    run = Path(out.stdout.strip().splitlines()[-1])
    results = json.loads((run / "results.json").read_text())
    assert results["audit"]["ok"]
    qp = results["parties"]["party1"]["result"]
    assert results["parties"]["party2"]["result"]["architecture"] == "own model"
    assert qp["own_data"] and qp["labelled_correctly"] is None   # unlabelled queries
    rows = list(csv.DictReader((run / "outputs" / "party1" / "labels.csv").open()))
    queries = load_party_data(party_file(data, "party1", "-queries"), spec, "party1", labelled=False)
    assert [int(r["id"]) for r in rows] == queries.ids[:30].tolist()
    assert [r["status"] for r in rows] == ["answered"] * 30
    assert [int(r["label"]) for r in rows] == lr.predict(queries.x[:30]).tolist()
    # the QP's retrained model, as files
    program = torch.export.load(run / "outputs" / "party1" / "capc_qp_model.pt2").module()
    assert program(torch.as_tensor(queries.x[:30])).shape == (30, 10)


@pytest.mark.parametrize("problem, message", [
    ("relu", "party 'party2': model file"),
    ("size", "its input has 30 features, the study declares 64"),
    ("missing-queries", "expected one file party1-queries.csv"),
    ("wrong-classes", "outside 0..1"),
])
def test_bad_files_stop_capc_before_any_process(tmp_path, problem, message):
    data = _study(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    if problem == "relu":
        relu = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
        (models / "party2.onnx").write_bytes(model_files(relu, 64)["model.onnx"])
        message += f" {models / 'party2.onnx'}: node 1 '/1/Relu' (Relu) cannot be evaluated"
    if problem == "size":
        small = nn.Sequential(nn.Linear(30, 10))
        (models / "party3.onnx").write_bytes(model_files(small, 30)["model.onnx"])
    if problem == "missing-queries":
        (data / "party1-queries.csv").unlink()
    if problem == "wrong-classes":
        study = json.loads((data / "study.json").read_text())
        (data / "study.json").write_text(json.dumps({**study, "classes": 2}))
    out = _run(tmp_path, "--queries", "30", "--data-dir", str(data), "--models-dir", str(models))
    assert out.returncode != 0
    line = (out.stdout + out.stderr).strip().splitlines()[-1]
    assert message in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_pt_state_dict_models_load_and_bad_ones_are_named(tmp_path):
    model = _trained_here("ap1", PLAIN)
    torch.save({"architecture": capc.DEFAULT_ARCH, "state_dict": model.state_dict()}, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", 64, 10)
    x = torch.randn(4, 64)
    assert torch.allclose(loaded(x), model(x))
    torch.save({"architecture": "resnet", "state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="NAME one of mlp-"):
        load_model(tmp_path / "bad.pt", 64, 10)
    with pytest.raises(ValueError, match="weights do not fit mlp-square-64 with 64 features and 3"):
        load_model(tmp_path / "m.pt", 64, 3)
