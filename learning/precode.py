"""PRECODE (Scheliga, Maeder, Seeland, WACV 2022): a variational bottleneck that
makes shared gradients hard to invert.

The bottleneck maps features h (d values) to mean and scale of a K-dimensional
Gaussian (encoder Linear(d, 2K), scale = softplus), samples z = mu + eps * sigma
with the reparameterisation trick, and decodes back with Linear(K, d). The
training loss gains beta * KL(N(mu, sigma^2) || N(0, I)). Sampling happens in
training and, by default as in the paper, in evaluation too.

``python -m benchmarks.precode_results [--quick]`` trains the models below
with and without PRECODE, attacks them (learning/attacks.py), prints a table
and writes a PNG grid; see docs/precode_valuation.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class PrecodeError(ValueError):
    """PRECODE was configured or used in a way that cannot work."""


def kl_to_standard_normal(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, diag std^2) || N(0, I)) in nats, summed over the
    latent dimension and averaged over the batch (first) dimension."""
    kl = 0.5 * (mu.pow(2) + std.pow(2) - 1.0 - 2.0 * torch.log(std))
    return kl.sum(dim=-1).mean()


class VariationalBottleneck(nn.Module):
    """PRECODE's variational bottleneck. Input of any shape (B, ...) whose
    trailing dimensions flatten to ``in_features``; output has the same shape.

    ``sample_in_eval`` keeps sampling in ``eval()`` mode (the paper's choice);
    set it False to use the mean in evaluation. ``noise``, when set to a tensor
    of shape (B, k), replaces the fresh Gaussian draw: the adaptive attack uses
    it to optimise the noise as an unknown. ``last_kl`` holds the KL term of the
    most recent forward pass.
    """

    def __init__(self, in_features: int, k: int = 256, beta: float = 1e-3,
                 sample_in_eval: bool = True) -> None:
        super().__init__()
        if in_features < 1 or k < 1:
            raise PrecodeError(f"in_features and k must be positive, got {in_features}, {k}")
        if beta < 0:
            raise PrecodeError(f"beta must be >= 0, got {beta}")
        self.in_features, self.k, self.beta = in_features, k, beta
        self.sample_in_eval = sample_in_eval
        self.encoder = nn.Linear(in_features, 2 * k)
        self.decoder = nn.Linear(k, in_features)
        self.noise: torch.Tensor | None = None
        self.last_kl: torch.Tensor | None = None

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale of q(z | x) for the flattened input."""
        stats = self.encoder(x.flatten(1))
        mu, raw = stats.split(self.k, dim=1)
        # tiny floor keeps log(std) finite when softplus underflows
        return mu, F.softplus(raw) + 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x[0].numel() != self.in_features:
            raise PrecodeError(
                f"VariationalBottleneck expects (batch, ...) with {self.in_features} features "
                f"per sample, got shape {tuple(x.shape)}; insert it before a layer whose "
                "input has that size")
        mu, std = self.statistics(x)
        if self.training or self.sample_in_eval:
            eps = self.noise if self.noise is not None else torch.randn_like(std)
            z = mu + eps * std
        else:
            z = mu
        self.last_kl = kl_to_standard_normal(mu, std)
        return self.decoder(z).reshape(x.shape)


def bottlenecks(model: nn.Module) -> Iterator[tuple[str, VariationalBottleneck]]:
    """(name, module) of every VariationalBottleneck in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, VariationalBottleneck):
            yield name, module


def kl_loss(model: nn.Module) -> torch.Tensor:
    """Sum of beta * KL over the model's bottlenecks from the last forward pass
    (zero if it has none)."""
    total = torch.zeros(())
    for name, vb in bottlenecks(model):
        if vb.last_kl is None:
            raise PrecodeError(f"bottleneck {name!r} has no KL yet: run a forward pass first")
        total = total + vb.beta * vb.last_kl
    return total


def add_kl(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """``loss`` plus the model's bottleneck KL terms: the PRECODE training loss."""
    return loss + kl_loss(model)


def insert_bottleneck(model: nn.Module, before: str, k: int = 256, beta: float = 1e-3,
                      in_features: int | None = None,
                      sample_in_eval: bool = True) -> VariationalBottleneck:
    """Insert a bottleneck in front of the submodule named ``before`` (dotted
    name as in ``named_modules``), in place: that submodule becomes
    ``Sequential(bottleneck, original)`` so its parameters are renamed to
    ``<before>.1.*`` and the bottleneck's are ``<before>.0.*``.
    ``in_features`` defaults to the layer's ``in_features`` (nn.Linear)."""
    names = dict(model.named_modules())
    if not before or before not in names:
        choices = ", ".join(n for n in names if n) or "(none)"
        raise PrecodeError(f"no submodule named {before!r}; choose one of: {choices}")
    layer = names[before]
    if in_features is None:
        in_features = getattr(layer, "in_features", None)
        if not isinstance(in_features, int):
            raise PrecodeError(
                f"cannot infer the input size of {before!r} ({type(layer).__name__}); "
                "pass in_features explicitly")
    vb = VariationalBottleneck(in_features, k=k, beta=beta, sample_in_eval=sample_in_eval)
    parent_name, _, attr = before.rpartition(".")
    parent = names[parent_name] if parent_name else model
    setattr(parent, attr, nn.Sequential(vb, layer))
    return vb


def parameters_before_bottleneck(model: nn.Module) -> list[str]:
    """Names of the parameters registered before the first bottleneck. For
    models whose modules are registered in forward order (all nn.Sequential
    models here) these are exactly the layers that run before it."""
    prefixes = [name + "." for name, _ in bottlenecks(model)]
    if not prefixes:
        raise PrecodeError("model has no VariationalBottleneck")
    out = []
    for name, _ in model.named_parameters():
        if name.startswith(prefixes[0]):
            break
        out.append(name)
    return out


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> nn.Sequential:
    """Two hidden ReLU layers; the output layer is called ``head``."""
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(d, hidden), act1=nn.ReLU(),
        fc2=nn.Linear(hidden, hidden), act2=nn.ReLU(), head=nn.Linear(hidden, num_classes)))


def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Conv(16) - Conv(32, stride 2) [- Conv(32, stride 2) for >= 16 px], ReLU,
    then the linear ``head``. No BatchNorm: the attacks vmap over victims."""
    c, h, w = input_shape
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(c, 16, 3, padding=1)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, stride=2, padding=1)), ("act2", nn.ReLU())]
    h, w = (h + 1) // 2, (w + 1) // 2
    if min(h, w) >= 8:
        layers += [("conv3", nn.Conv2d(32, 32, 3, stride=2, padding=1)), ("act3", nn.ReLU())]
        h, w = (h + 1) // 2, (w + 1) // 2
    layers += [("flatten", nn.Flatten()), ("head", nn.Linear(32 * h * w, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def precode_loss(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus every bottleneck's KL: the loss to train a PRECODE model
    with (:func:`learning.training.train`'s ``loss``)."""
    return add_kl(model, F.cross_entropy(logits, y))
