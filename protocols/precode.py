"""PRECODE (Scheliga, Maeder, Seeland, WACV 2022): a variational bottleneck that
makes shared gradients hard to invert.

The bottleneck maps features h (d values) to mean and scale of a K-dimensional
Gaussian (encoder Linear(d, 2K), scale = softplus), samples z = mu + eps * sigma
with the reparameterisation trick, and decodes back with Linear(K, d). The
training loss gains beta * KL(N(mu, sigma^2) || N(0, I)). Sampling happens in
training and, by default as in the paper, in evaluation too.

``python -m protocols.precode evaluate [--quick]`` trains MLPs and small CNNs
with and without PRECODE on digits and synthetic 32x32 images, attacks them
(protocols/attacks.py) and prints a table and writes a PNG grid; see
docs/precode_valuation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from protocols.datasets import Split, load_digit_images, synthetic_images


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


# ---------------------------------------------------------------- evaluation
# Everything below is the reproducible experiment behind
# `python -m protocols.precode evaluate`; torch is seeded explicitly so runs
# repeat (nothing here is a secret). protocols.attacks builds on the
# bottleneck above, so it is imported lazily here to avoid an import cycle.


def _attacks():
    import protocols.attacks as attacks

    return attacks


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


def train_classifier(model: nn.Module, split: Split, epochs: int, lr: float = 1e-3,
                     batch_size: int = 64, progress: Callable[[int], None] | None = None
                     ) -> float:
    """Adam on cross-entropy (+ PRECODE KL); returns test accuracy (eval mode,
    i.e. still sampling in a bottleneck with ``sample_in_eval``)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(split.y_train)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n).split(batch_size):
            opt.zero_grad()
            loss = add_kl(model, F.cross_entropy(model(split.x_train[idx]), split.y_train[idx]))
            loss.backward()
            opt.step()
        if progress:
            progress(1)
    return accuracy(model, split.x_test, split.y_test)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


@dataclass(frozen=True)
class EvalSettings:
    victims: int = 32
    epochs_digits: int = 30
    epochs_synthetic: int = 10
    ig_iterations: int = 200
    ig_restarts: int = 1
    dlg_iterations: int = 10
    batch_sizes: tuple[int, ...] = (1,)


QUICK = EvalSettings()
FULL = EvalSettings(victims=64, epochs_synthetic=15, ig_iterations=1000, ig_restarts=2, dlg_iterations=40,
                    batch_sizes=(1, 4))


DATASETS = ("digits", "synthetic")


def _datasets(quick: bool, which: tuple[str, ...]) -> dict[str, Split]:
    out = {}
    if "digits" in which:
        out["digits 8x8"] = load_digit_images()
    if "synthetic" in which:
        out["synthetic 32x32"] = synthetic_images(1000 if quick else 2000, 500)
    return out


def evaluate(settings: EvalSettings, seed: int = 0, grid_path: str | None = None,
             quick: bool = True, data: tuple[str, ...] = DATASETS) -> list[dict]:
    """Train every (data set, model, PRECODE or not), attack the first
    ``victims`` test images, return one row per (setting, attack, batch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows: list[dict] = []
    grid: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    data = _datasets(quick, data)
    columns = (TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns) as bar:
        for dname, split in data.items():
            epochs = settings.epochs_digits if "digits" in dname else settings.epochs_synthetic
            for arch, build in (("MLP", mlp), ("CNN", small_cnn)):
                for use_precode in (False, True):
                    label = f"{dname} {arch}{' +PRECODE' if use_precode else ''}"
                    torch.manual_seed(seed)
                    model = build(split.input_shape, split.num_classes)
                    if use_precode:
                        insert_bottleneck(model, "head")
                    task = bar.add_task(f"train {label}", total=epochs)
                    acc = train_classifier(model, split, epochs,
                                           progress=lambda k, t=task: bar.advance(t, k))
                    for bs in settings.batch_sizes:
                        rows += _attack_setting(model, split, dname, arch, use_precode, acc, bs,
                                                settings, seed, bar, grid)
    if grid_path:
        save_grid(grid, grid_path)
    return rows


def _attack_setting(model, split, dname, arch, use_precode, acc, bs, settings, seed, bar,
                    grid) -> list[dict]:
    A = _attacks()
    ig_cfg = A.IGConfig(iterations=settings.ig_iterations, restarts=settings.ig_restarts)
    dlg_cfg = A.DLGConfig(iterations=settings.dlg_iterations)
    problems = max(1, settings.victims // bs)
    x = split.x_test[: problems * bs].reshape(problems, bs, *split.input_shape)
    y = split.y_test[: problems * bs].reshape(problems, bs)
    torch.manual_seed(seed + 1)  # the client's PRECODE noise, reproducible for the experiment
    target = A.stack_gradients([A.shared_gradients(model, x[p], y[p]) for p in range(problems)])
    labels = A.recover_labels(model, target, bs)
    label_acc = float((labels.sort(1).values == y.sort(1).values).float().mean())
    attacks: list[tuple[str, Callable, int]] = [
        ("IG", lambda pr: A.inverting_gradients(model, target, split.input_shape, bs, labels,
                                              ig_cfg, seed=seed, progress=pr),
         ig_cfg.iterations),
        ("DLG", lambda pr: A.dlg(model, target, split.input_shape, bs, labels, dlg_cfg,
                               seed=seed, progress=pr), dlg_cfg.iterations)]
    if arch == "MLP" and bs == 1:
        attacks.append(("analytic 1st layer", lambda pr: A.analytic_first_layer(
            model, target, split.input_shape), 0))
    if use_precode:
        attacks.append(("adaptive IG", lambda pr: A.adaptive_attack(
            model, target, split.input_shape, bs, labels, ig_cfg, seed=seed,
            progress=pr), ig_cfg.iterations))
    rows = []
    for name, run, total in attacks:
        task = bar.add_task(f"{name} B={bs} {dname} {arch}{' +PRECODE' * use_precode}",
                            total=total)
        result = run(lambda k, t=task: bar.advance(t, k))
        summary = A.score_reconstructions(x, result.reconstruction).summary()
        rows.append({"data": dname, "model": arch, "precode": use_precode, "test_acc": acc,
                     "attack": name, "batch": bs, "label_acc": label_acc, **summary})
        bar.console.print(f"  {dname} {arch} PRECODE={use_precode} {name} B={bs}: "
                          f"acc {acc:.3f}, SSIM {summary['ssim']:.4f}, "
                          f"success {summary['success']:.2f}")
        if bs == 1:
            key = (dname, arch)
            grid.setdefault(key, {"original": x[:8, 0]})
            grid[key][f"{name}{' +PRECODE' if use_precode else ''}"] = \
                result.reconstruction[:8, 0]
    return rows


def save_grid(grid: dict, path: str) -> None:
    """Originals and reconstructions, one block of rows per (data, model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_names = [(key, name) for key, block in grid.items() for name in block]
    cols = max(len(block["original"]) for block in grid.values())
    fig, axes = plt.subplots(len(row_names), cols, figsize=(cols * 0.8, len(row_names) * 0.8),
                             squeeze=False)
    for r, (key, name) in enumerate(row_names):
        imgs = grid[key][name]
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                img = imgs[c].detach().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray",
                          vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_ylabel(f"{key[0].split()[0]} {key[1]}\n{name}", fontsize=5,
                              rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.25, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("data", "model", "PRECODE", "test acc", "attack", "B", "labels ok",
                "MSE", "PSNR dB", "SSIM", f"success (SSIM>{_attacks().SUCCESS_SSIM})", "n"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["data"], r["model"], "yes" if r["precode"] else "no",
                      f"{r['test_acc']:.3f}", r["attack"], str(r["batch"]),
                      f"{r['label_acc']:.2f}", f"{r['mse']:.4f}", f"{r['psnr']:.1f}",
                      f"{r['ssim']:.4f}", f"{r['success']:.2f}", str(r["n"]))
    Console(width=max(Console().width, 140)).print(table)  # files/pipes: no 80-column cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocols.precode")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("evaluate", help="train, attack, print table, write PNG grid")
    ev.add_argument("--quick", action="store_true", help="quick settings (default: full)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--data", nargs="+", choices=DATASETS, default=list(DATASETS))
    ev.add_argument("--grid", default="results/precode_grid.png", help="PNG output path")
    ev.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(1)  # oversubscribed threads were 10x slower on a shared 2-core box
    t0 = time.time()
    rows = evaluate(settings, seed=args.seed, grid_path=args.grid, quick=args.quick,
                    data=tuple(args.data))
    print_table(rows, f"PRECODE vs gradient inversion ({'quick' if args.quick else 'full'}"
                      f" settings, seed {args.seed}, {time.time() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    # run the imported module, not __main__, so class identities (isinstance
    # checks in protocols.attacks) are the same as for library users
    from protocols.precode import main as _main

    sys.exit(_main())
