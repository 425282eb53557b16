"""PRECODE against gradient inversion: train MLPs and small CNNs with and without
the bottleneck on digits and synthetic 32x32 images, attack them, print a table
and write a PNG grid (RESULTS.md, docs/precode_valuation.md).

    python -m benchmarks.precode_results [--smoke | --quick] [--data digits synthetic] [--grid PNG] [--json FILE]

Torch is seeded explicitly so runs repeat: nothing here is a secret.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from learning import attacks as A
from learning.datasets import Split, load_digit_images, synthetic_images
from learning.precode import insert_bottleneck, mlp, precode_loss, small_cnn
from learning.training import accuracy, train

from .results_io import run_and_report


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
# A first look in about a minute: digits, few victims, short attacks. Figures from it
# are indicative only; RESULTS.md quotes the quick settings.
SMOKE = EvalSettings(victims=8, epochs_digits=15, ig_iterations=100, dlg_iterations=5)
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
                    train(model, split.x_train, split.y_train, epochs=epochs, lr=1e-3,
                          loss=precode_loss, on_epoch=lambda _, t=task: bar.advance(t, 1))
                    acc = accuracy(model, split.x_test, split.y_test)
                    for bs in settings.batch_sizes:
                        rows += _attack_setting(model, split, dname, arch, use_precode, acc, bs,
                                                settings, seed, bar, grid)
    if grid_path:
        save_grid(grid, grid_path)
    return rows


def _attack_setting(model, split, dname, arch, use_precode, acc, bs, settings, seed, bar,
                    grid) -> list[dict]:
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
                "MSE", "PSNR dB", "SSIM", f"success (SSIM>{A.SUCCESS_SSIM})", "n"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["data"], r["model"], "yes" if r["precode"] else "no",
                      f"{r['test_acc']:.3f}", r["attack"], str(r["batch"]),
                      f"{r['label_acc']:.2f}", f"{r['mse']:.4f}", f"{r['psnr']:.1f}",
                      f"{r['ssim']:.4f}", f"{r['success']:.2f}", str(r["n"]))
    Console(width=max(Console().width, 140)).print(table)  # files/pipes: no 80-column cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precode_results",
                                     description=__doc__.splitlines()[0])
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--smoke", action="store_true",
                       help="about a minute: digits only, 8 victims, short attacks (indicative)")
    speed.add_argument("--quick", action="store_true",
                       help="the settings RESULTS.md quotes (minutes; default: full, ~1 hour)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", nargs="+", choices=DATASETS, default=None,
                        help="data sets (default: both; digits with --smoke)")
    parser.add_argument("--grid", default="results/precode_grid.png", help="PNG output path")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = {"smoke": SMOKE, "quick": QUICK, "full": FULL}[mode]
    data = tuple(args.data or (["digits"] if args.smoke else DATASETS))
    return run_and_report(
        lambda: evaluate(settings, seed=args.seed, grid_path=args.grid,
                         quick=mode != "full", data=data),
        lambda rows, secs: print_table(rows, f"PRECODE vs gradient inversion ({mode} settings, "
                                             f"seed {args.seed}, {secs:.0f} s)"),
        args.json)

if __name__ == "__main__":
    raise SystemExit(main())
