"""Model architectures: HE-friendly ones each CaPC party trains on its own data,
and the public ones federated protocols train jointly.

Every architecture is an ``nn.Sequential`` of layers that :func:`he.compile`
accepts (Linear and degree-2 polynomial activations), so an answering party
can evaluate its own model on encrypted queries. ``--heterogeneous`` runs give
parties different widths, depths and activations.
"""

from __future__ import annotations

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


def build_model(arch: str, in_features: int, num_classes: int, seed: int) -> nn.Sequential:
    """An HE-friendly MLP, initialised from ``seed`` (reproducible, not a secret)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    width, act, depth = ARCHITECTURES[arch]
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
