"""Gradient-based data valuation in private and non-private training
(after Usynin, Rueckert, Kaissis, arXiv 2305.02942).

Per-sample scores, computed by a data owner on its own samples at every
training checkpoint (epoch end):

- ``loss``: per-sample cross-entropy, averaged over checkpoints;
- ``grad norm``: L2 norm of the per-sample parameter gradient *before*
  clipping, averaged over checkpoints;
- ``VoG`` (Variance of Gradients, Agarwal et al.): per-pixel variance over
  checkpoints of the input gradient of the true-class logit, averaged over
  pixels, then standardised within each class.

Per-sample gradients come from ``torch.func`` (vmap of grad). DP-SGD is
implemented here on top of them: Poisson sampling, per-sample clipping,
Gaussian noise, and Opacus' RDP accountant for epsilon. Sampling and noise use
the OS random source (:mod:`mpc.randomness`), not torch's generator, because they
carry the privacy guarantee; model initialisation and the experiment's data
corruption are seeded for reproducibility.

Client-level value: ``release_client_value`` turns an owner's scores into a
noisy aggregate (mean score and count above a public cut-off) with the
Gaussian mechanism, and accounts its epsilon.

``python -m benchmarks.valuation_results [--quick]`` runs the experiment in
docs/precode_valuation.md.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from mpc import randomness

from .datasets import Split, load_digit_images
from .training import accuracy

SCORES = ("loss", "grad norm", "VoG")
LOSS_BOUND = 5.0  # public clip for released loss sums
# Opacus' default RDP orders plus larger ones: few-step or one-shot Gaussian
# mechanisms are tightest at large orders (Opacus warns otherwise)
ALPHAS = [*RDPAccountant.DEFAULT_ALPHAS, 80, 128, 256, 512, 1024]
Progress = Callable[[int], None]


class ValuationError(ValueError):
    """Valuation was configured with values it cannot use."""


# ------------------------------------------------- per-sample gradients


def _functional(model: nn.Module) -> tuple[dict, dict]:
    return ({n: p.detach() for n, p in model.named_parameters()},
            {n: b.detach() for n, b in model.named_buffers()})


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample losses (B,) and gradients {name: (B, *param.shape)}."""
    params, buffers = _functional(model)

    def loss_one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return losses.detach(), {n: g.detach() for n, g in grads.items()}


def flat_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample L2 norm over all parameters."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of each sample's true-class logit w.r.t. its input (VoG)."""
    params, buffers = _functional(model)

    def logit(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return out[0].gather(0, yi.unsqueeze(0)).squeeze(0)

    return vmap(grad(logit))(x, y).detach()


def vog_scores(input_grads: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """VoG from (checkpoints, n, ...) input gradients: per-pixel variance over
    checkpoints, mean over pixels, standardised within each class."""
    if input_grads.shape[0] < 2:
        raise ValuationError("VoG needs at least two checkpoints (epochs >= 2)")
    raw = input_grads.flatten(2).var(dim=0, unbiased=False).mean(dim=1).numpy()
    out = np.empty_like(raw)
    labels = labels.numpy()
    for c in np.unique(labels):
        m = labels == c
        out[m] = (raw[m] - raw[m].mean()) / (raw[m].std() + 1e-12)
    return out


# ----------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """``epsilon=None`` trains without DP (same sampling, no clip, no noise)."""

    epochs: int = 20
    batch_size: int = 64      # expected batch size under Poisson sampling
    lr: float = 0.5
    momentum: float = 0.5
    clip: float = 1.0
    epsilon: float | None = None
    delta: float = 1e-5


@dataclass
class TrainResult:
    scores: dict[str, np.ndarray]   # name -> (n,) per training sample
    test_accuracy: float
    epsilon: float | None           # spent by training (RDP accountant), None without DP
    noise_multiplier: float
    steps: int


def valuation_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64
                  ) -> nn.Sequential:
    d = int(np.prod(input_shape))
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(d, hidden),
                                     act=nn.ReLU(), head=nn.Linear(hidden, num_classes)))


def _check(config: TrainConfig, n: int) -> None:
    if config.epsilon is not None and config.epsilon <= 0:
        raise ValuationError(f"epsilon must be positive (or None for no DP), got {config.epsilon}")
    if not 0 < config.delta < 1:
        raise ValuationError(f"delta must be in (0, 1), got {config.delta}")
    if not 0 < config.batch_size <= n:
        raise ValuationError(f"batch_size must be in [1, {n}], got {config.batch_size}")
    if config.epochs < 1 or config.clip <= 0:
        raise ValuationError("epochs must be >= 1 and clip > 0")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
          x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
          score: bool = True, progress: Progress | None = None) -> TrainResult:
    """(DP-)SGD with Poisson sampling; with ``score`` it records per-sample
    loss, pre-clipping gradient norm and input gradients at every epoch end."""
    n = len(y)
    _check(config, n)
    rate = config.batch_size / n
    steps_per_epoch = max(1, round(1 / rate))
    steps = config.epochs * steps_per_epoch
    accountant = RDPAccountant()
    sigma = 0.0
    if config.epsilon is not None:
        sigma = get_noise_multiplier(target_epsilon=config.epsilon, target_delta=config.delta,
                                     sample_rate=rate, steps=steps, accountant="rdp",
                                     alphas=ALPHAS)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    params = dict(model.named_parameters())
    losses, norms, in_grads = [], [], []
    for _ in range(config.epochs):
        model.train()
        for _ in range(steps_per_epoch):
            mask = torch.from_numpy(randomness.uniform(n) < rate)  # Poisson sampling
            summed = {k: torch.zeros_like(p) for k, p in params.items()}
            if mask.any():
                _, g = per_sample_gradients(model, x[mask], y[mask])
                if config.epsilon is not None:
                    factor = (config.clip / (flat_norms(g) + 1e-12)).clamp(max=1.0)
                    g = {k: v * factor.view(-1, *([1] * (v.dim() - 1))) for k, v in g.items()}
                summed = {k: v.sum(0) for k, v in g.items()}
            for k, p in params.items():
                noise = (_noise(p.shape, sigma * config.clip)
                         if config.epsilon is not None else 0.0)
                # divide by the expected batch size: the noisy sum's scale must not
                # depend on the private realised batch size
                p.grad = (summed[k] + noise) / config.batch_size
            opt.step()
            if config.epsilon is not None:
                accountant.step(noise_multiplier=sigma, sample_rate=rate)
        if score:
            snap = _snapshot(model, x, y)
            losses.append(snap[0])
            norms.append(snap[1])
            in_grads.append(snap[2])
        if progress:
            progress(1)
    scores: dict[str, np.ndarray] = {}
    if score:
        scores = {"loss": torch.stack(losses).mean(0).numpy(),
                  "grad norm": torch.stack(norms).mean(0).numpy(),
                  "VoG": vog_scores(torch.stack(in_grads), y)}
    acc = accuracy(model, x_test, y_test) if x_test is not None else float("nan")
    eps = accountant.get_epsilon(config.delta, alphas=ALPHAS) if config.epsilon is not None else None
    return TrainResult(scores, acc, eps, sigma, steps)


def _noise(shape: torch.Size, std: float) -> torch.Tensor:
    return torch.from_numpy(randomness.normal(tuple(shape), std)).float()


def _snapshot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 512
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model.eval()
    losses, norms, ig = [], [], []
    for i in range(0, len(y), chunk):
        loss, g = per_sample_gradients(model, x[i:i + chunk], y[i:i + chunk])
        losses.append(loss)
        norms.append(flat_norms(g))
        ig.append(input_gradients(model, x[i:i + chunk], y[i:i + chunk]))
    return torch.cat(losses), torch.cat(norms), torch.cat(ig)


# ------------------------------------------------------ selection quality


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Fraction of the k highest-scoring samples that are positives."""
    if not 0 < k <= len(scores):
        raise ValuationError(f"k must be in [1, {len(scores)}], got {k}")
    top = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(np.asarray(positives)[top].mean())


# ------------------------------------------------------ client-level value


@dataclass(frozen=True)
class ClientRelease:
    mean_score: float     # noisy sum / noisy count
    count_above: float    # noisy number of samples scoring above the cut-off
    count: float          # noisy number of samples
    epsilon: float        # spent by this release (RDP accountant)
    delta: float
    sigma: float          # noise std on the counts (bound * sigma on the sum)


def release_client_value(scores: np.ndarray, cutoff: float, bound: float, epsilon: float,
                         delta: float = 1e-5) -> ClientRelease:
    """Gaussian mechanism on (sum of scores clipped to [-bound, bound] / bound,
    count, count above ``cutoff``). Adding or removing one sample moves this
    vector by at most sqrt(3) in L2, the sensitivity the noise is scaled to;
    the sum is rescaled by ``bound`` afterwards (its noise std is bound *
    sigma). ``cutoff`` and ``bound`` must be public (not chosen from the data)."""
    if epsilon <= 0 or not 0 < delta < 1 or bound <= 0:
        raise ValuationError("need epsilon > 0, 0 < delta < 1 and bound > 0")
    s = np.clip(np.asarray(scores, np.float64), -bound, bound)
    z = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0,
                             steps=1, accountant="rdp", alphas=ALPHAS)
    accountant = RDPAccountant()
    accountant.step(noise_multiplier=z, sample_rate=1.0)
    spent = accountant.get_epsilon(delta, alphas=ALPHAS)
    sigma = z * math.sqrt(3.0)
    noise = randomness.normal(3, sigma)
    total = (s.sum() / bound + noise[0]) * bound
    count, above = len(s) + noise[1], (s > cutoff).sum() + noise[2]
    return ClientRelease(float(total / max(count, 1.0)), float(above), float(count),
                         float(spent), delta, float(sigma))


# ----------------------------------------------------------- experiment


@dataclass(frozen=True)
class Corrupted:
    split: Split
    flipped: np.ndarray    # bool mask over training samples
    atypical: np.ndarray   # bool mask


def corrupt_digits(fraction: float = 0.05, seed: int = 0) -> Corrupted:
    """Digits with ``fraction`` of training labels flipped to another class
    and a disjoint ``fraction`` made atypical: half rotated by 90/180/270
    degrees, half drowned in Gaussian noise (std 0.5, clipped to [0, 1])."""
    if not 0 < fraction < 0.5:
        raise ValuationError(f"fraction must be in (0, 0.5), got {fraction}")
    split = load_digit_images(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(split.y_train)
    k = round(fraction * n)
    order = torch.randperm(n, generator=gen)
    flip_idx, atyp_idx = order[:k], order[k:2 * k]
    y = split.y_train.clone()
    shift = torch.randint(1, split.num_classes, (k,), generator=gen)
    y[flip_idx] = (y[flip_idx] + shift) % split.num_classes
    x = split.x_train.clone()
    half = k // 2
    for j, i in enumerate(atyp_idx[:half].tolist()):
        x[i] = torch.rot90(x[i], k=1 + j % 3, dims=(-2, -1))
    noisy = atyp_idx[half:]
    x[noisy] = (x[noisy] + 0.5 * torch.randn(x[noisy].shape, generator=gen)).clamp(0, 1)
    flipped = np.zeros(n, bool)
    flipped[flip_idx.numpy()] = True
    atypical = np.zeros(n, bool)
    atypical[atyp_idx.numpy()] = True
    return Corrupted(Split(x, y, split.x_test, split.y_test, split.num_classes), flipped,
                     atypical)
