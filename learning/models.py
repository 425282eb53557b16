"""Model architectures: HE-friendly ones each CaPC party trains on its own data,
and the public ones federated protocols train jointly.

Every architecture is an ``nn.Sequential`` of layers that :func:`he.compile`
accepts (Linear and degree-2 polynomial activations), so an answering party
can evaluate its own model on encrypted queries. ``--heterogeneous`` runs give
parties different widths, depths and activations.
"""

from __future__ import annotations

import torch
from torch import nn

from he import PolyReLU, Square

from .training import init_linear

ARCHITECTURES = {
    "mlp-square-64": (64, "square", 1),
    "mlp-polyrelu-32": (32, "polyrelu", 1),
    "mlp-square-128": (128, "square", 1),
    "mlp-square-32x2": (32, "square", 2),
}
DEFAULT_ARCH = "mlp-square-64"
# a CaPC teacher may also be a logistic regression (many weak teachers per organisation)
TEACHER_ARCHITECTURES = {**ARCHITECTURES, "logreg": (0, "square", 0)}


def build_model(arch: str, in_features: int, num_classes: int, seed: int) -> nn.Sequential:
    """An HE-friendly MLP (or logistic regression), initialised from ``seed`` (reproducible,
    not a secret)."""
    if arch not in TEACHER_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of "
                         f"{', '.join(TEACHER_ARCHITECTURES)}")
    width, act, depth = TEACHER_ARCHITECTURES[arch]
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width), Square() if act == "square" else PolyReLU()]
        d = width
    layers.append(nn.Linear(d, num_classes))
    return init_linear(nn.Sequential(*layers), seed)


def public_mlp(kind: str, in_features: int, num_classes: int, hidden: int, seed: int
               ) -> nn.Sequential:
    """A jointly trained architecture (federated protocols): ``logreg`` or a one-hidden-layer
    ReLU ``mlp``, initialised identically by every party from the public ``seed``."""
    if kind == "logreg":
        return init_linear(nn.Sequential(nn.Linear(in_features, num_classes)), seed)
    if kind != "mlp":
        raise ValueError(f"model must be 'logreg' or 'mlp', got {kind!r}")
    return init_linear(nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, num_classes)), seed)


def stack_teachers(teachers: list[nn.Sequential]) -> nn.Sequential:
    """One model whose logits are the teachers' logits side by side ([..., k * classes]).

    The teachers share an architecture; the first Linear layers are stacked (they read the
    same input), later ones placed block-diagonally, activations shared (they act
    elementwise). So an answering party evaluates all its teachers in one HE pass."""
    if not teachers:
        raise ValueError("stack_teachers needs at least one teacher")
    shapes = {tuple((type(m).__name__, getattr(m, "weight", torch.empty(0)).shape) for m in t)
              for t in teachers}
    if len(shapes) != 1:
        raise ValueError("teachers to stack must share one architecture")
    layers: list[nn.Module] = []
    first = True
    for i, layer in enumerate(teachers[0]):
        if not isinstance(layer, nn.Linear):
            layers.append(layer)
            continue
        ws = [t[i].weight.detach() for t in teachers]
        w = torch.cat(ws) if first else torch.block_diag(*ws)
        stacked = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            stacked.weight.copy_(w)
            stacked.bias.copy_(torch.cat([t[i].bias.detach() for t in teachers]))
        layers.append(stacked)
        first = False
    return nn.Sequential(*layers)
