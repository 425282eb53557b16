"""Gradient inversion attacks and reconstruction metrics.

An honest-but-curious server holds the model weights and the gradients a
client shares, and optimises dummy images until their gradients match:

- ``dlg``: Deep Leakage from Gradients (Zhu et al. 2019) with L-BFGS on the
  L2 gradient distance, labels recovered from the last layer's gradient as in
  iDLG (Zhao et al. 2020) instead of being optimised.
- ``inverting_gradients``: Geiping et al. 2020: cosine gradient distance,
  Adam on signed gradients, total-variation prior, pixels boxed to [0, 1],
  step-wise learning rate decay and several restarts (best gradient match wins).
- ``adaptive_attack``: against PRECODE, match only the gradients of the
  layers *before* the bottleneck and treat the bottleneck's noise as one more
  unknown to optimise (the weakness the PRECODE authors later showed).
- ``analytic_first_layer``: for batch size 1 and a first Linear layer with
  bias the input is the ratio of its weight and bias gradients, whatever
  comes after (an adaptive attack in closed form).

Each attack solves P independent problems at once (one per victim gradient,
each holding a batch of B images) with ``torch.func.vmap``; for independent
problems this is the same as running them one by one, only faster. The
exception is DLG: L-BFGS keeps one curvature history and line search for the
stacked problem (see ``dlg``).

Metrics: ``mse``, ``psnr`` and ``ssim`` (scikit-image, data range 1) and
``SUCCESS_SSIM``: an attack on an image counts as successful when SSIM between
reconstruction and original exceeds 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from .precode import bottlenecks, parameters_before_bottleneck, precode_loss

SUCCESS_SSIM = 0.5
Gradients = dict[str, torch.Tensor]
Progress = Callable[[int], None]


class AttackError(ValueError):
    """An attack was given inputs it cannot use."""


# ----------------------------------------------------------------- the victim


# The loss a client trains on: cross-entropy plus any PRECODE KL terms.
client_loss = precode_loss


def shared_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Gradients:
    """The gradients a client shares for one batch (model in training mode, so
    PRECODE samples fresh noise)."""
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    loss = client_loss(model, model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    model.train(was_training)
    return {n: g.detach() for n, g in zip(params, grads, strict=True)}


def stack_gradients(per_problem: Sequence[Gradients]) -> Gradients:
    """Stack gradients of P victims into tensors with a leading problem axis."""
    if not per_problem:
        raise AttackError("need at least one victim gradient")
    return {n: torch.stack([g[n] for g in per_problem]) for n in per_problem[0]}


def _last_linear(model: nn.Module) -> str:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and not n.endswith(("encoder", "decoder")):
            name = n
    if name is None:
        raise AttackError("label recovery needs a final nn.Linear layer")
    return name


def recover_labels(model: nn.Module, grads: Gradients, batch_size: int) -> torch.Tensor:
    """Labels from the last layer's gradient (iDLG). With cross-entropy the
    output-bias gradient is mean_i(p_i - onehot(y_i)), negative exactly at the
    labels present. Batch size 1: the argmin (exact). Larger batches: greedy
    counting, each pick of class c adds 1/B back to its entry (a sample of class
    c contributes about -1/B), a heuristic that is exact while softmax
    outputs are small. Without a bias the weight-gradient row sums are used
    (valid when the layer's inputs are non-negative, e.g. after ReLU)."""
    last = _last_linear(model)
    if f"{last}.bias" in grads:
        score = grads[f"{last}.bias"].clone()
    elif f"{last}.weight" in grads:
        score = grads[f"{last}.weight"].sum(-1)
    else:
        raise AttackError(f"gradients lack the last layer {last!r}; cannot recover labels")
    score = score.reshape(-1, score.shape[-1])  # (P, classes)
    labels = torch.empty(score.shape[0], batch_size, dtype=torch.long)
    for b in range(batch_size):
        pick = score.argmin(dim=1)
        labels[:, b] = pick
        score[torch.arange(score.shape[0]), pick] += 1.0 / batch_size
    return labels


# ------------------------------------------------------------------ configs


@dataclass(frozen=True)
class IGConfig:
    """Inverting Gradients settings (defaults follow Geiping et al. except the
    iteration count, which is sized for small models on a CPU)."""

    iterations: int = 400
    lr: float = 0.1
    tv_weight: float = 1e-4
    restarts: int = 2
    signed: bool = True


@dataclass(frozen=True)
class DLGConfig:
    iterations: int = 30   # L-BFGS outer steps
    max_eval: int = 20     # function evaluations per step (torch's max_iter)
    lr: float = 1.0


@dataclass
class AttackResult:
    reconstruction: torch.Tensor   # (P, B, *image_shape), clamped to [0, 1]
    labels: torch.Tensor           # (P, B) labels used
    gradient_loss: torch.Tensor    # (P,) final gradient distance


# ----------------------------------------------------------------- machinery


def _objective(model: nn.Module, names: list[str], distance: str, tv_weight: float,
               noise_module: nn.Module | None) -> Callable:
    """One problem's loss: gradient distance (+ TV prior) for dummy images x."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def dummy_grads(x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None) -> list:
        def loss_fn(p: dict) -> torch.Tensor:
            if noise_module is not None:
                noise_module.noise = noise
            try:
                out = functional_call(model, (p, buffers), (x,))
                return client_loss(model, out, y)
            finally:
                if noise_module is not None:
                    noise_module.noise = None
        g = grad(loss_fn)(params)
        return [g[n] for n in names]

    def objective(x, y, target, noise):
        g = dummy_grads(x, y, noise)
        if distance == "cosine":
            dot = sum((a * b).sum() for a, b in zip(g, target, strict=True))
            gn = sum(a.pow(2).sum() for a in g).sqrt()
            tn = sum(b.pow(2).sum() for b in target).sqrt()
            loss = 1.0 - dot / (gn * tn + 1e-12)
        else:  # L2, relative to the target's norm so small gradients do not stall L-BFGS
            diff = sum((a - b).pow(2).sum() for a, b in zip(g, target, strict=True))
            loss = diff / (sum(b.pow(2).sum() for b in target) + 1e-20)
        if tv_weight:
            loss = loss + tv_weight * total_variation(x)
        return loss

    return objective


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def _prepare(model: nn.Module, target: Gradients, names: list[str] | None,
             labels: torch.Tensor | None, batch_size: int):
    names = list(target) if names is None else names
    missing = [n for n in names if n not in target]
    if missing:
        raise AttackError(f"target gradients lack parameters {missing[:3]}...")
    tgt = [target[n] for n in names]
    problems = tgt[0].shape[0]
    if labels is None:
        labels = recover_labels(model, target, batch_size)
    labels = labels.reshape(problems, batch_size)
    return names, tgt, problems, labels


def _check_model(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise AttackError("attacks here need models without BatchNorm (per-problem vmap)")


# ------------------------------------------------------------------- attacks


def inverting_gradients(model: nn.Module, target: Gradients, image_shape: Sequence[int],
                        batch_size: int = 1, labels: torch.Tensor | None = None,
                        config: IGConfig = IGConfig(), names: list[str] | None = None,
                        optimize_noise: bool = False, seed: int = 0,
                        progress: Progress | None = None) -> AttackResult:
    """Inverting Gradients on P stacked problems. ``target`` maps parameter
    name to a (P, *param_shape) gradient; ``names`` restricts the match to some
    parameters (the adaptive attack); ``optimize_noise`` makes PRECODE's
    noise a variable optimised jointly with the images."""
    _check_model(model)
    names, tgt, problems, labels = _prepare(model, target, names, labels, batch_size)
    vbs = list(bottlenecks(model))
    if optimize_noise and len(vbs) != 1:
        raise AttackError("optimize_noise needs a model with exactly one bottleneck")
    noise_module = vbs[0][1] if optimize_noise else None
    objective = _objective(model, names, "cosine", config.tv_weight, noise_module)
    r = config.restarts
    gen = torch.Generator().manual_seed(seed)
    n = problems * r
    x = torch.rand((n, batch_size, *image_shape), generator=gen)
    noise = (torch.randn((n, batch_size, noise_module.k), generator=gen)
             if noise_module is not None else torch.zeros(n))
    y = labels.repeat(r, 1)
    t = [g.repeat(r, *([1] * (g.dim() - 1))) for g in tgt]
    variables = [x.requires_grad_()] + ([noise.requires_grad_()] if noise_module else [])
    opt = torch.optim.Adam(variables, lr=config.lr)
    it = config.iterations
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(it * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
    argnums = (0, 3) if noise_module else 0
    step = vmap(grad_and_value(objective, argnums=argnums), randomness="different")
    model_mode = model.training
    model.train()  # the client computed its gradients in training mode
    try:
        for _ in range(it):
            grads, _loss = step(x.detach(), y, [a for a in t], noise.detach())
            grads = grads if isinstance(grads, tuple) else (grads,)
            for v, g in zip(variables, grads, strict=True):
                v.grad = g.sign() if config.signed else g
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            if progress:
                progress(1)
        final = vmap(objective, randomness="different")(x.detach(), y, t, noise.detach())
    finally:
        model.train(model_mode)
    # pick the best restart per problem by gradient distance
    final = final.reshape(r, problems)
    best = final.argmin(0)
    rec = x.detach().reshape(r, problems, batch_size, *image_shape)[best, torch.arange(problems)]
    return AttackResult(rec, labels, final[best, torch.arange(problems)].detach())


def adaptive_attack(model: nn.Module, target: Gradients, image_shape: Sequence[int],
                    batch_size: int = 1, labels: torch.Tensor | None = None,
                    config: IGConfig = IGConfig(), optimize_noise: bool = True,
                    seed: int = 0, progress: Progress | None = None) -> AttackResult:
    """Inverting Gradients that ignores the gradients of the PRECODE bottleneck
    and every layer after it; labels still come from the last layer."""
    names = parameters_before_bottleneck(model)
    if not names:
        raise AttackError("the bottleneck is the first layer: nothing before it to invert")
    if labels is None:
        labels = recover_labels(model, target, batch_size)
    return inverting_gradients(model, target, image_shape, batch_size, labels, config,
                               names=names, optimize_noise=optimize_noise, seed=seed,
                               progress=progress)


def analytic_first_layer(model: nn.Module, target: Gradients,
                         image_shape: Sequence[int]) -> AttackResult:
    """Closed-form inversion for batch size 1 when the first layer is a
    Linear with bias (Phong et al. 2017): dL/dW1 = delta x^T and dL/db1 = delta,
    so x = dW1[i] / db1[i] for any unit i with delta_i != 0. It reads only the
    first layer's gradient, so a bottleneck placed later cannot hide x."""
    first = next((n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))),
                 None)
    mod = model.get_submodule(first) if first is not None else None
    if not isinstance(mod, nn.Linear) or mod.bias is None:
        raise AttackError("the analytic attack needs a first nn.Linear layer with bias")
    gw, gb = target[f"{first}.weight"], target[f"{first}.bias"]  # (P, out, in), (P, out)
    best = gb.abs().argmax(dim=1)
    rows = torch.arange(gw.shape[0])
    x = gw[rows, best] / gb[rows, best].unsqueeze(1)
    rec = x.reshape(gw.shape[0], 1, *image_shape).clamp(0, 1)
    labels = recover_labels(model, target, 1)
    return AttackResult(rec, labels, torch.zeros(gw.shape[0]))


def dlg(model: nn.Module, target: Gradients, image_shape: Sequence[int],
        batch_size: int = 1, labels: torch.Tensor | None = None,
        config: DLGConfig = DLGConfig(), seed: int = 0,
        progress: Progress | None = None) -> AttackResult:
    """DLG with iDLG labels: L-BFGS on the (target-normalised) L2 gradient
    distance. The P problems are stacked into one L-BFGS run over their summed
    loss (separable, so the optimum is the same; the shared line search can
    make it converge more slowly than P separate runs)."""
    _check_model(model)
    names, tgt, problems, labels = _prepare(model, target, None, labels, batch_size)
    objective = _objective(model, names, "l2", 0.0, None)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((problems, batch_size, *image_shape), generator=gen).requires_grad_()
    dummy_noise = torch.zeros(problems)
    step = vmap(grad_and_value(objective), randomness="different")
    opt = torch.optim.LBFGS([x], lr=config.lr, max_iter=config.max_eval,
                            history_size=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        g, v = step(x.detach(), labels, tgt, dummy_noise)
        x.grad = g
        return v.sum()

    model_mode = model.training
    model.train()
    try:
        for _ in range(config.iterations):
            opt.step(closure)
            if progress:
                progress(1)
        final = vmap(objective, randomness="different")(x.detach(), labels, tgt, dummy_noise)
    finally:
        model.train(model_mode)
    # L-BFGS can diverge on PRECODE's stochastic objective (its line search
    # assumes a deterministic function): report a diverged pixel as 0.
    rec = torch.nan_to_num(x.detach(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
    return AttackResult(rec, labels, final.detach())


# ------------------------------------------------------------------- metrics


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for images in [0, 1] (inf for identical images)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (C, H, W) or (H, W) images in [0, 1]: scikit-image with its
    default 7x7 uniform window, channels averaged."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AttackError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 3 and a.shape[0] == 1:
        a, b = a[0], b[0]
    if min(a.shape[-2:]) < 7:
        raise AttackError("SSIM needs images of at least 7x7 pixels")
    kw = {"channel_axis": 0} if a.ndim == 3 else {}
    return float(structural_similarity(a, b, data_range=1.0, **kw))


@dataclass
class Scores:
    mse: list[float]
    psnr: list[float]
    ssim: list[float]

    @property
    def success_rate(self) -> float:
        return float(np.mean([s > SUCCESS_SSIM for s in self.ssim]))

    def summary(self) -> dict[str, float]:
        finite = [p for p in self.psnr if np.isfinite(p)]
        return {"mse": float(np.mean(self.mse)), "psnr": float(np.mean(finite)) if finite
                else float("inf"), "ssim": float(np.mean(self.ssim)),
                "success": self.success_rate, "n": len(self.ssim)}


def score_reconstructions(original: torch.Tensor, reconstruction: torch.Tensor) -> Scores:
    """Scores for (P, B, *img) tensors. Within a batch, the order of the
    reconstructed images is unknown, so they are matched to the originals by a
    minimum-MSE assignment before scoring."""
    o, r = original.detach().cpu().numpy(), reconstruction.detach().cpu().numpy()
    if o.shape != r.shape:
        raise AttackError(f"shapes differ: {o.shape} vs {r.shape}")
    out = Scores([], [], [])
    for op, rp in zip(o, r, strict=True):
        cost = ((op[:, None] - rp[None]) ** 2).reshape(len(op), len(rp), -1).mean(-1)
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols, strict=True):
            out.mse.append(mse(op[i], rp[j]))
            out.psnr.append(psnr(op[i], rp[j]))
            out.ssim.append(ssim(op[i], rp[j]))
    return out
