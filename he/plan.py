"""Compile a torch model into an HE evaluation plan.

Every run of consecutive affine layers (Linear, Conv, AvgPool, Flatten,
BatchNorm, Dropout/Identity at inference) is fused into ONE dense affine map
W x + b, found by pushing the identity basis through the layers in float64.
Fusing costs nothing in accuracy and saves a level per extra linear layer; it
is also how BatchNorm is folded into the preceding layer.

A degree-2 activation c0 + c1 x + c2 x^2 is evaluated as z = x * (x + c1/c2)
(one level) and its outer affine part (c2 z + c0) is folded into the next
affine map, so each activation costs exactly one level.
"""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from he import params as P
from he.activations import Poly
from he.errors import DepthError, PlanMismatchError, ShapeError, UnsupportedLayerError
from he.evaluate import evaluate
from he.layers import Activation, Affine, pow2
from he.single import first_layer

if TYPE_CHECKING:
    from he.cipher import EncryptedBatch, EncryptedOutput
    from he.keys import PublicContext

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.AvgPool1d, nn.AvgPool2d, nn.Flatten,
           nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Unflatten)
_INSTEAD = {
    nn.ReLU: "he.PolyReLU() (degree-2 approximation) or he.Square(), then retrain",
    nn.LeakyReLU: "he.PolyReLU() or he.Square(), then retrain",
    nn.GELU: "he.PolySiLU() or he.Square(), then retrain",
    nn.SiLU: "he.PolySiLU() (degree-2 approximation), then retrain",
    nn.Sigmoid: "he.Poly((0.5, 0.197, 0.0)) (a linear fit) or drop it before the logits",
    nn.Tanh: "he.Poly with a fitted polynomial, then retrain",
    nn.MaxPool1d: "nn.AvgPool1d",
    nn.MaxPool2d: "nn.AvgPool2d",
    nn.AdaptiveMaxPool2d: "nn.AvgPool2d",
    nn.Softmax: "nothing: drop it, argmax of the logits is unchanged",
    nn.LogSoftmax: "nothing: drop it, argmax of the logits is unchanged",
}
_MAX_MATRIX = 40_000_000  # entries of one fused affine map (320 MB of float64)


class Plan:
    """A compiled model: the answering party evaluates it on encrypted queries."""

    def __init__(self, steps: list[Affine | Activation], input_shape: tuple[int, ...],
                 n_out: int, fingerprint: str, layers: list[str]) -> None:
        self.steps = steps
        self.input_shape = tuple(input_shape)
        self.n_in = int(np.prod(input_shape))
        self.n_out = n_out
        self.fingerprint = fingerprint
        self.layers = layers

    @property
    def depth(self) -> int:
        """Multiplicative levels the plan consumes."""
        return len(self.steps)

    @property
    def single_slots(self) -> int:
        """CKKS slots single-query packing needs (largest padded layer width)."""
        sizes = [pow2(self.n_in)] + [max(s.padded) for s in self.steps if isinstance(s, Affine)]
        return max(sizes)

    @property
    def rotation_steps(self) -> frozenset[int]:
        """Rotation steps (all powers of two) single-query packing uses under this plan's
        own preset (he.keygen(plan))."""
        return self.rotation_steps_for(P.choose(self.depth, self.single_slots).slots)

    def rotation_steps_for(self, slots: int) -> frozenset[int]:
        """Rotation steps single-query packing uses with `slots` CKKS slots."""

        steps: set[int] = set()
        first = True
        for s in self.steps:
            if not isinstance(s, Affine):
                continue
            if first:  # shifted-blocks query layout, see he/single.py
                steps |= first_layer(s, slots).rotation_steps(slots)
                first = False
                continue
            m_p, n_p = s.padded
            k = min(m_p, n_p)
            if k > 1:
                steps.add(1)
            if k > s.baby:
                steps.add(s.baby)
            while m_p < n_p:  # block sums
                steps.add(m_p)
                m_p *= 2
        return frozenset(steps)

    def forward_plain(self, x: np.ndarray) -> np.ndarray:
        """The plan's function in float64 (what the encrypted evaluation approximates)."""
        h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        for s in self.steps:
            h = h @ s.W.T + s.b if isinstance(s, Affine) else h * (h + s.beta)
        return h

    def verify(self, model: nn.Module) -> None:
        """Raise PlanMismatchError unless `model` is the model this plan was compiled from."""
        fp = _fingerprint(model)
        if fp != self.fingerprint:
            raise PlanMismatchError("this plan was compiled from a different model (or the model's "
                                    "weights changed since he.compile); compile it again")

    def check_context(self, ctx: PublicContext) -> None:
        if ctx.params.depth < self.depth:
            raise DepthError(
                f"the key supports depth {ctx.params.depth} but this plan needs {self.depth}; "
                f"the key owner must run he.keygen(depth={self.depth}) or keygen with this plan")

    def evaluate(self, enc: EncryptedBatch, mask: bool = True,
                 context: PublicContext | None = None) -> tuple[EncryptedOutput, np.ndarray | None]:
        """Evaluate on an encrypted batch; returns (output, the evaluator's share).

        mask=True (CaPC): the output is masked and re-randomized (he/mask.py); its
            decryption is uniform, and he.decrypt_share gives the key owner a share
            that adds up, modulo 2^64, with the evaluator's share (uint64
            [batch, classes], fixed point at mpc.encoding.PRECISION_BITS) to f(x).
        mask=False: the key owner decrypts f(x) with he.decrypt (share None). The
            output then also carries the evaluation noise, a function of the model's
            weights: use it only where the key owner may see the model.
        """
        return evaluate(self, enc, mask=mask, context=context)

    def __repr__(self) -> str:
        body = ", ".join(f"{type(s).__name__}({s.source})" for s in self.steps)
        return f"Plan(input={self.input_shape}, out={self.n_out}, depth={self.depth}: {body})"


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _leaves(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for m in model for leaf in _leaves(m)]
    if isinstance(model, (*_AFFINE, Poly)):
        return [model]
    for bad, instead in _INSTEAD.items():
        if isinstance(model, bad):
            raise UnsupportedLayerError(f"layer {model!r} cannot be evaluated under CKKS; use {instead}")
    if list(model.children()):
        raise UnsupportedLayerError(
            f"cannot compile {type(model).__name__}: he.compile follows layer order only through "
            "nn.Sequential; rebuild the model as an nn.Sequential of supported layers")
    raise UnsupportedLayerError(
        f"layer {model!r} is not supported; supported: Linear, Conv1d/2d, AvgPool1d/2d, Flatten, "
        "BatchNorm1d/2d, Dropout, Identity, he.Square, he.Poly, he.PolyReLU, he.PolySiLU")


def _fuse(layers: list[nn.Module], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple]:
    n = int(np.prod(shape))
    basis = torch.cat([torch.zeros(1, n, dtype=torch.float64),
                       torch.eye(n, dtype=torch.float64)]).reshape(n + 1, *shape)
    with torch.no_grad():
        y = basis
        for m in layers:
            m = copy.deepcopy(m).double().eval()
            y = m(y)
    out_shape = tuple(y.shape[1:])
    y = y.reshape(n + 1, -1).numpy()
    if y.shape[1] * n > _MAX_MATRIX:
        raise UnsupportedLayerError(f"layers {layers} map {n} to {y.shape[1]} features: too large "
                                    "for HE evaluation here; shrink the layer")
    b = y[0].copy()
    return (y[1:] - b).T.copy(), b, out_shape


def compile(model: nn.Module, input_shape: tuple[int, ...],
            context: PublicContext | None = None, max_depth: int | None = None) -> Plan:
    """Compile `model` (an nn.Sequential of supported layers) for inputs of `input_shape`.

    Depth is checked here: against `context` if given, else against `max_depth`,
    else against the deepest 128-bit preset.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ShapeError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape}")
    leaves = _leaves(model)
    steps: list[Affine | Activation] = []
    group: list[nn.Module] = []
    pre: tuple[float, float] = (1.0, 0.0)  # pending y = a*z + c from the last activation
    shape = input_shape

    def flush() -> None:
        nonlocal group, pre, shape
        if not group and pre == (1.0, 0.0):
            return
        n = int(np.prod(shape))
        if group:
            W, b, shape = _fuse(group, shape)
        else:
            W, b = np.eye(n), np.zeros(n)
        a, c = pre
        src = "+".join(type(m).__name__ for m in group) or "activation scale"
        steps.append(Affine(W * a, b + W.sum(axis=1) * c, src))
        group, pre = [], (1.0, 0.0)

    for m in leaves:
        if isinstance(m, Poly) and m.coeffs[2] != 0.0:
            flush()
            c0, c1, c2 = m.coeffs
            steps.append(Activation(c1 / c2, repr(m)))
            pre = (c2, c0)
        elif isinstance(m, Poly):  # degree <= 1: affine, fuse it
            c0, c1, _ = m.coeffs
            group.append(_Lin(c0, c1))
        else:
            group.append(m)
    flush()
    if not steps:
        raise UnsupportedLayerError("the model has no layers to compile")
    n_out = steps[-1].W.shape[0] if isinstance(steps[-1], Affine) else int(np.prod(shape))
    plan = Plan(steps, input_shape, n_out, _fingerprint(model), [repr(m) for m in leaves])

    limit = context.params.depth if context is not None else (max_depth or P.max_depth())
    if plan.depth > limit:
        raise DepthError(f"the model needs {plan.depth} multiplicative levels "
                         f"({', '.join(type(s).__name__ for s in plan.steps)}) but at most {limit} "
                         "are available; remove activation layers (consecutive linear layers "
                         "are fused for free)")
    _self_check(plan, model)
    return plan


class _Lin(nn.Module):
    def __init__(self, c0: float, c1: float) -> None:
        super().__init__()
        self.c0, self.c1 = c0, c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c0 + self.c1 * x


def _self_check(plan: Plan, model: nn.Module) -> None:
    # The plan must compute the model's function; catches e.g. a Sequential whose
    # forward was overridden. Uses a fixed probe (not secret).
    probe = torch.linspace(-1, 1, 2 * plan.n_in, dtype=torch.float64).reshape(2, *plan.input_shape)
    was_training = model.training
    try:
        with torch.no_grad():
            ref = copy.deepcopy(model).double().eval()(probe).reshape(2, -1).numpy()
    finally:
        model.train(was_training)
    got = plan.forward_plain(probe.numpy())
    if ref.shape != got.shape or not np.allclose(ref, got, rtol=1e-6, atol=1e-8 * (1 + np.abs(ref).max())):
        raise PlanMismatchError("the compiled plan does not reproduce the model's output; the "
                                "model's forward() must apply its layers in nn.Sequential order")
