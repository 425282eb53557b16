"""learning/onnx_import.py: ONNX models from PyTorch and scikit-learn become HE-friendly
layers that compute the same scores (and compile for CKKS); what CKKS cannot evaluate is
refused with the node, its place and what to use instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

import he
from learning.model_files import model_files
from learning.models import ARCHITECTURES, build_model
from learning.onnx_import import OnnxImportError, import_onnx


def _onnx(model: nn.Module, features: int) -> bytes:
    return model_files(model.eval(), features)["model.onnx"]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_pytorch_mlps_import_exactly_and_compile(arch):
    model = build_model(arch, 64, 10, seed=1).eval()
    seq = import_onnx(_onnx(model, 64), 64, 10)
    x = torch.randn(16, 64)
    assert torch.allclose(seq(x), model(x), atol=1e-5)
    he.compile(seq, (64,))


def test_a_convolutional_model_with_batch_norm_imports():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1),
                          nn.BatchNorm2d(4), he.Square(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(64, 10)).eval()
    model[2].running_mean.uniform_()
    model[2].running_var.uniform_(0.5, 2)
    seq = import_onnx(_onnx(model, 64), 64, 10)
    x = torch.randn(8, 64)
    assert torch.allclose(seq(x), model(x), atol=1e-5)
    he.compile(seq, (64,))


@pytest.mark.parametrize("load, classes", [(load_digits, 10), (load_breast_cancer, 2)])
def test_scikit_learn_logistic_regression_imports_with_the_same_predictions(load, classes):
    x, y = load(return_X_y=True)
    x = (x / x.max(0).clip(1e-9)).astype(np.float32)
    lr = LogisticRegression(max_iter=500).fit(x, y)
    onnx_model = to_onnx(lr, x[:1], options={"zipmap": False})
    seq = import_onnx(onnx_model.SerializeToString(), x.shape[1], classes)
    assert np.array_equal(seq(torch.as_tensor(x)).argmax(1).numpy(), lr.predict(x))
    he.compile(seq, (x.shape[1],))


@pytest.mark.parametrize("bad, message", [
    (nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)),
     "node 1 '/1/Relu' (Relu) cannot be evaluated under CKKS; use a degree-2 polynomial"),
    (nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(),
                   nn.Linear(18, 10)), "(MaxPool) cannot be evaluated under CKKS; use AveragePool"),
    (nn.Sequential(nn.Linear(64, 8), he.Square(), he.Square(), nn.Linear(8, 10)), None),
])
def test_what_ckks_cannot_evaluate_is_refused_by_node(bad, message):
    data = _onnx(bad, 64)
    if message is None:   # two squares in a row: degree 4 is fine as two layers
        seq = import_onnx(data, 64, 10)
        x = torch.randn(3, 64)
        assert torch.allclose(seq(x), bad(x), atol=1e-4)
        return
    with pytest.raises(OnnxImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_onnx(data, 64, 10)


def test_sizes_that_differ_from_the_study_are_refused():
    model = build_model("mlp-square-64", 30, 2, seed=0)
    with pytest.raises(OnnxImportError, match="its input has 30 features, the study declares 64"):
        import_onnx(_onnx(model, 30), 64, 2)
    with pytest.raises(OnnxImportError, match="gives 2 class scores, the study has 10"):
        import_onnx(_onnx(model, 30), 30, 10)
    with pytest.raises(OnnxImportError, match="not a readable ONNX model"):
        import_onnx(b"\x00garbage", 30, 2)
