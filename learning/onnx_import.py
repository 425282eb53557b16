"""An ONNX model as an HE-friendly nn.Sequential (what he.compile evaluates under CKKS).

Models come from PyTorch (``torch.onnx.export``), scikit-learn (skl2onnx) or any other
framework. Only a chain of operations CKKS can evaluate is accepted: Gemm, MatMul (+ a
bias Add), Conv, AveragePool, Flatten/Reshape (to rows x features, or rows to images),
BatchNormalization, Identity/Dropout, and
polynomials of degree <= 2 written as elementwise Mul/Add/Sub/Pow with constants (how
``he.Square``/``he.PolyReLU`` export); scikit-learn's LinearClassifier (logistic
regression, linear SVM) becomes a Linear layer of its class scores. A final Softmax,
LogSoftmax or the classifier's post-transform is dropped: it does not change the argmax
CaPC takes. Anything else is refused at load time with the node's name, its place in the
graph and what to use instead.

No library maps ONNX to an HE plan, so this walk is ours; parsing is the onnx package's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from he.activations import Poly

RETRAIN = "then retrain (learning.models.build_model makes such MLPs; learning.training.train)"
INSTEAD = {
    "Relu": f"a degree-2 polynomial (he.PolyReLU or he.Square), {RETRAIN}",
    "LeakyRelu": f"a degree-2 polynomial (he.PolyReLU or he.Square), {RETRAIN}",
    "Sigmoid": f"a degree-2 polynomial, {RETRAIN}; as the last layer, drop it",
    "Tanh": f"a degree-2 polynomial, {RETRAIN}",
    "Gelu": f"he.PolySiLU or he.Square, {RETRAIN}",
    "MaxPool": "AveragePool",
    "GlobalMaxPool": "GlobalAveragePool (as AveragePool)",
    "Softmax": "nothing: drop it unless it is the last layer",
    "TreeEnsembleClassifier": "a linear or small polynomial model: trees compare values, "
                              "which CKKS cannot do",
}
ROWS = 3   # rows of the probe evaluation: a reshape's leading 3 is the rows dimension
FINAL_MONOTONE = {"Softmax", "LogSoftmax", "Normalizer", "ZipMap", "Cast"}


class OnnxImportError(ValueError):
    """The model cannot be evaluated under CKKS as given; the message says where and why."""


@dataclass
class _Poly:
    """c0 + c1 t + c2 t^2 of the chain's current tensor t (scalars only)."""

    c: tuple[float, float, float]

    @property
    def degree(self) -> int:
        return 2 if self.c[2] else 1 if self.c[1] else 0

    def __add__(self, o: _Poly) -> _Poly:
        return _Poly(tuple(a + b for a, b in zip(self.c, o.c, strict=True)))

    def scale(self, k: float) -> _Poly:
        return _Poly(tuple(k * a for a in self.c))

    def times(self, o: _Poly) -> _Poly:
        a, b = self.c, o.c
        if (a[2] and (b[1] or b[2])) or (b[2] and a[1]):
            raise OnnxImportError("a polynomial of degree above 2 (CKKS depth grows per degree)")
        return _Poly((a[0] * b[0], a[0] * b[1] + a[1] * b[0], a[0] * b[2] + a[1] * b[1] + a[2] * b[0]))


IDENTITY = _Poly((0.0, 1.0, 0.0))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def import_onnx(model: onnx.ModelProto | bytes | str, features: int, classes: int) -> nn.Sequential:
    """The chain from the graph's input to its class scores, as supported layers."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
        except Exception as e:  # the onnx package raises several kinds for broken files
            raise OnnxImportError(f"not a readable ONNX model ({e})") from None
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise OnnxImportError(f"the model takes {len(inputs)} inputs; one (rows x features) is needed")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 2 and dims[1] and dims[1] != features:
        raise OnnxImportError(f"its input has {dims[-1]} features, the study declares {features}")
    # Every value the graph computes for 3 rows of zeros: shape arithmetic an exporter
    # emits (Shape, Slice, Concat, ...) then reads as constants; ranks come from shapes.
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type)
        seen = ReferenceEvaluator(model).run(None, {inputs[0].name: np.zeros((ROWS, features), dtype)},
                                             intermediate=True)
    except Exception:  # noqa: BLE001 - an op the reference runtime lacks: weights only
        seen = {}
    layers: list[nn.Module] = []
    current, poly, rank = inputs[0].name, IDENTITY, max(len(dims), 2)
    values: dict[str, _Poly] = {current: IDENTITY}   # tensors that are polynomials of `current`
    done = False

    def where(i: int, node: onnx.NodeProto) -> str:
        return f"node {i} '{node.name or node.output[0]}' ({node.op_type})"

    def flush() -> None:
        nonlocal poly
        if poly.c != IDENTITY.c:
            layers.append(Poly(poly.c))
        poly = IDENTITY

    def chain_input(i: int, node: onnx.NodeProto) -> None:
        if node.input[0] not in values or values[node.input[0]].c != poly.c:
            raise OnnxImportError(f"{where(i, node)} does not continue the model's single chain "
                                  "(branches and skip connections are not supported)")
        flush()

    def materialize() -> None:
        """The pending polynomial becomes a layer; tensors equal to it are the new base."""
        nonlocal values
        old = poly
        flush()
        values = {k: IDENTITY for k, v in values.items() if v.c == old.c}

    def operand(name: str) -> _Poly | None:
        if name in values:
            return values[name]
        if name in consts and consts[name].size == 1:
            return _Poly((float(consts[name].ravel()[0]), 0.0, 0.0))
        return None

    for i, node in enumerate(g.node):
        op, a = node.op_type, _attrs(node)
        off_chain = not any(x in values for x in node.input if x)
        if (off_chain or op == "Shape") and all(o in seen for o in node.output):
            for o in node.output:   # shape arithmetic, constants: no part of the data path
                if np.issubdtype(np.asarray(seen[o]).dtype, np.number):
                    consts[o] = np.asarray(seen[o]).astype(np.float64)
            continue
        if current in seen:
            rank = np.asarray(seen[current]).ndim
        if done:
            if op in FINAL_MONOTONE:
                continue
            raise OnnxImportError(f"{where(i, node)} comes after the class scores; only a final "
                                  "Softmax/Normalizer may follow them")
        if op == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(a["value"]).astype(np.float64)
        elif op in ("Mul", "Add", "Sub") and all(n in consts for n in node.input):   # folding
            x, y = (consts[n] for n in node.input)
            consts[node.output[0]] = x * y if op == "Mul" else (x - y if op == "Sub" else x + y)
        elif op in ("Mul", "Add", "Sub") and all(operand(x) is not None for x in node.input):
            x, y = (operand(n) for n in node.input)
            if op == "Mul" and max(x.degree + y.degree, 0) > 2 \
                    and all(values[n].c == poly.c for n in node.input if n in values):
                materialize()   # e.g. two squares in a row: the first becomes a layer
                x, y = (operand(n) for n in node.input)
            try:
                out = x.times(y) if op == "Mul" else (x + (y.scale(-1) if op == "Sub" else y))
            except OnnxImportError as e:
                raise OnnxImportError(f"{where(i, node)}: {e}") from None
            values[node.output[0]] = out
            poly = out
        elif op == "Pow" and node.input[0] in values and node.input[1] in consts \
                and float(consts[node.input[1]].ravel()[0]) == 2.0:
            p = values[node.input[0]]
            try:
                values[node.output[0]] = poly = p.times(p)
            except OnnxImportError as e:
                raise OnnxImportError(f"{where(i, node)}: {e}") from None
        elif op == "Add" and layers and isinstance(layers[-1], nn.Linear) and poly.c == IDENTITY.c \
                and node.input[0] == current and node.input[1] in consts:   # MatMul's bias
            layers[-1].bias.data += torch.as_tensor(consts[node.input[1]].ravel(), dtype=torch.float32)
            current = node.output[0]
            values = {current: IDENTITY}
        elif op in ("Identity", "Dropout"):
            if node.input[0] in values:
                values[node.output[0]] = values[node.input[0]]
        else:
            layer = _layer(i, node, a, consts, rank, where, classes)
            if layer is None:
                raise OnnxImportError(f"{where(i, node)} cannot be evaluated under CKKS; use "
                                      f"{INSTEAD.get(op, 'Gemm/MatMul, Conv, AveragePool, Flatten, BatchNormalization or a degree-2 polynomial')}")
            chain_input(i, node)
            layers.append(layer)
            rank = (2 if isinstance(layer, nn.Linear | nn.Flatten) else
                    1 + len(layer.unflattened_size) if isinstance(layer, nn.Unflatten) else rank)
            current = node.output[1] if op == "LinearClassifier" else node.output[0]
            values = {current: IDENTITY}
            done = op == "LinearClassifier"
    flush()
    if not layers:
        raise OnnxImportError("the model has no layers")
    first = next((m for m in layers if isinstance(m, nn.Linear | nn.Conv2d)), None)
    if isinstance(first, nn.Linear) and first.in_features != features and rank == 2 \
            and not any(isinstance(m, nn.Conv2d) for m in layers):
        raise OnnxImportError(f"its first layer takes {first.in_features} features, the study "
                              f"declares {features}")
    model_seq = nn.Sequential(*layers).eval()
    with torch.no_grad():
        try:
            out = model_seq(torch.zeros(2, features))
        except RuntimeError as e:
            raise OnnxImportError(f"it does not take {features} features ({e})") from None
    if out.shape[-1] != classes:
        raise OnnxImportError(f"it gives {out.shape[-1]} class scores, the study has {classes} classes")
    return model_seq


def _layer(i, node, a, consts, rank, where, classes) -> nn.Module | None:
    op = node.op_type

    def const(k: int) -> np.ndarray:
        if len(node.input) <= k or node.input[k] not in consts:
            raise OnnxImportError(f"{where(i, node)}: input {k} must be a stored weight")
        return consts[node.input[k]]

    t = lambda v: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32)  # noqa: E731
    if op == "Gemm":
        if a.get("transA", 0):
            raise OnnxImportError(f"{where(i, node)}: transA is not supported")
        w = const(1)
        w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data = t(w)
        lin.bias.data = t(const(2).ravel() * a.get("beta", 1.0) * np.ones(w.shape[0])) \
            if len(node.input) > 2 and node.input[2] else torch.zeros(w.shape[0])
        return lin
    if op == "MatMul":
        w = const(1)
        lin = nn.Linear(w.shape[0], w.shape[1])
        lin.weight.data, lin.bias.data = t(w.T), torch.zeros(w.shape[1])
        return lin
    if op == "LinearClassifier":
        coef = np.asarray(a["coefficients"], dtype=np.float64)
        bias = np.asarray(a.get("intercepts", [0.0]), dtype=np.float64)
        labels = list(a.get("classlabels_ints", []))
        if labels and labels != list(range(len(labels))):
            raise OnnxImportError(f"{where(i, node)}: class labels {labels[:5]} are not 0..k-1; "
                                  "retrain with the study's labels")
        rows = max(len(bias), 1)
        w = coef.reshape(rows, -1)
        if rows == 1 and classes == 2:      # one score row: class 1 against class 0
            w, bias = np.vstack([-w, w]), np.concatenate([-bias, bias])
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data, lin.bias.data = t(w), t(bias)
        return lin
    if op == "Conv":
        w = const(1)
        if a.get("group", 1) != 1 or w.ndim != 4:
            raise OnnxImportError(f"{where(i, node)}: only 2-D convolutions without groups")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise OnnxImportError(f"{where(i, node)}: asymmetric padding {pads}")
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]),
                         stride=tuple(a.get("strides", [1, 1])), padding=tuple(pads[:2]),
                         dilation=tuple(a.get("dilations", [1, 1])), bias=len(node.input) > 2)
        conv.weight.data = t(w)
        if len(node.input) > 2:
            conv.bias.data = t(const(2))
        return conv
    if op == "AveragePool":
        pads = list(a.get("pads", [0, 0, 0, 0]))
        return nn.AvgPool2d(tuple(a["kernel_shape"]), stride=tuple(a.get("strides", a["kernel_shape"])),
                            padding=tuple(pads[:2]), count_include_pad=bool(a.get("count_include_pad", 0)))
    if op == "Flatten":
        if a.get("axis", 1) != 1:
            raise OnnxImportError(f"{where(i, node)}: only Flatten(axis=1)")
        return nn.Flatten()
    if op == "Reshape":
        shape = const(1).astype(np.int64).tolist()
        if len(shape) == 2 and shape[0] in (0, -1, 1, ROWS):
            return nn.Flatten()
        if len(shape) >= 3 and shape[0] in (0, -1, ROWS) and min(shape[1:]) > 0:   # rows -> images
            return nn.Unflatten(1, tuple(shape[1:]))
        raise OnnxImportError(f"{where(i, node)}: only a reshape to (rows, features) or "
                              "(rows, channels, height, width)")
    if op == "BatchNormalization":
        scale, bias, mean, var = (const(k) for k in (1, 2, 3, 4))
        bn = (nn.BatchNorm1d if rank == 2 else nn.BatchNorm2d)(len(scale), eps=a.get("epsilon", 1e-5))
        bn.weight.data, bn.bias.data = t(scale), t(bias)
        bn.running_mean.data, bn.running_var.data = t(mean), t(var)
        return bn.eval()
    return None
