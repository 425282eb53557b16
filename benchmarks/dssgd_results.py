"""DSSGD results (RESULTS.md): accuracy against the sharing fraction in each order, IID and
non-IID, beside standalone and centralized training; the private variant with its honest
epsilon; and what the server learns from single-example uploads (first-layer inversion).

    python -m benchmarks.dssgd_results [--quick] [--json FILE]

Runs the protocol's role code in one process (protocols.runner, the same code as between
processes, where `python run_parties.py dssgd` runs it; tests/test_dssgd_processes.py).
Writes results/dssgd_sharing.md/.png, results/dssgd_dp.md and results/dssgd_leakage.md/.png.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from statistics import mean

import numpy as np
import torch

from learning.attacks import analytic_first_layer, ssim
from learning.datasets import load_table
from learning.dssgd import centralized_accuracy, select_largest, upload_count
from learning.models import public_mlp
from learning.training import get_flat
from mpc import randomness, secagg
from privacy.svt import svt_upload
from protocols.fedavg import FedAvgParams, quantizer, round_setup
from protocols.runner import run_session

from .results_io import one_torch_thread, write_json

OUT = Path(__file__).resolve().parents[1] / "results"
BASE = {"dataset": "digits", "rounds": 30, "lr": 0.1, "gamma": 0.1, "hidden": 32}


def run(params: dict, participants: int = 10) -> dict:
    """One DSSGD session in process: mean accuracies over the participants."""
    roles = {**{f"p{i:02d}": "participant" for i in range(1, participants + 1)}, "server": "server"}
    res = asyncio.run(run_session("dssgd", roles, params))
    bad = {n: r for n, r in res.items() if isinstance(r, BaseException)}
    if bad:
        raise RuntimeError(f"DSSGD run failed: {bad}")
    ps = [r.public for n, r in res.items() if n != "server"]
    return {"global": mean(p["global_accuracy"] for p in ps), "local": mean(p["local_accuracy"] for p in ps),
            "standalone": mean(p["standalone_accuracy"] for p in ps) if "standalone_accuracy" in ps[0] else None,
            "bytes_up": mean(p["bytes_up"] for p in ps), "privacy": ps[0].get("privacy"),
            "curve": [mean(p["rounds"][i]["accuracy"] for p in ps) for i in range(len(ps[0]["rounds"]))]}


def sharing(quick: bool, progress) -> list[dict]:
    rows = []
    thetas = (0.01, 0.1, 1.0)
    for split in ("iid", "noniid"):
        central = centralized_accuracy("digits", data_seed=0, model="mlp", hidden=BASE["hidden"], seed=0,
                                       epochs=BASE["rounds"], lr=BASE["lr"], batch=32)
        for order, lr in (("round-robin", 0.1), ("random", 0.1), ("async", 0.1), ("async", 0.01)):
            for theta in thetas:
                r = run({**BASE, "split": split, "order": order, "theta_u": theta, "lr": lr})
                rows.append({"split": split, "order": order, "lr": lr, "theta_u": theta, **r,
                             "centralized": central})
                progress(f"sharing {split} {order} lr {lr} theta_u {theta}: {r['global']:.3f}")
    return rows


def private(quick: bool, progress) -> list[dict]:
    rows = []
    for theta, gamma in ((0.01, 0.1), (0.1, 0.1), (0.1, 0.01)):
        for eps in ((1.0, 1000.0) if quick else (1.0, 10.0, 100.0, 1000.0, 10000.0)):
            r = run({**BASE, "theta_u": theta, "gamma": gamma, "dp_epsilon": eps, "epsilon_budget": 1e9})
            rows.append({"theta_u": theta, "gamma": gamma, "epsilon_round": eps, **r})
            progress(f"DP theta_u {theta} gamma {gamma} epsilon {eps:g}/round: {r['global']:.3f}")
    return rows


def leakage(victims: int, progress) -> tuple[list[dict], dict]:
    """The server inverts single-example uploads (one SGD step on one digit): the first
    layer's weight change of unit i is -lr * delta_i * x, its bias change -lr * delta_i,
    so x = dW[i] / db[i] wherever both went up."""
    data = load_table("digits", seed=0)
    x, y = data.x_train[:victims], data.y_train[:victims]
    model = public_mlp("mlp", 64, 10, 32, 0)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    lr, gamma = 0.1, 0.1
    settings = [("theta_u 1 (everything)", 1.0, None), ("theta_u 0.1, largest", 0.1, None),
                ("theta_u 0.01, largest", 0.01, None), ("theta_u 0.1, DP eps 1000/round", 0.1, 1000.0),
                ("theta_u 0.1, DP eps 10/round", 0.1, 10.0)]
    rows, images = [], {"original": x.reshape(victims, 1, 8, 8)}
    control = data.x_test[:victims].reshape(victims, 1, 8, 8)   # digits nobody uploaded
    w0 = get_flat(model)
    dim = w0.size
    for label, theta, eps in settings:
        recs = []
        for i in range(victims):
            m = public_mlp("mlp", 64, 10, 32, 0)
            opt = torch.optim.SGD(m.parameters(), lr=lr)
            torch.nn.functional.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
            opt.step()
            change = get_flat(m).astype(np.float64) - w0
            count = upload_count(dim, theta)
            if eps is None:
                idx = select_largest(change, count)
                values = change[idx]
            else:
                idx, values = svt_upload(change, count, 1e-4, gamma, eps)
            seen = np.zeros(dim)
            seen[idx] = values
            grads = -torch.as_tensor(seen, dtype=torch.float32) / lr
            target, at = {}, 0
            for n, s in zip(names, shapes, strict=True):
                k = int(np.prod(s))
                target[n] = grads[at:at + k].reshape(1, *s)
                at += k
            rec = analytic_first_layer(model, target, (8, 8)).reconstruction
            recs.append(torch.nan_to_num(rec[0], nan=0.0))
        recs_t = torch.stack(recs)
        own = [ssim(images["original"][j].numpy(), recs_t[j].numpy()) for j in range(victims)]
        rows.append(_leak_row(label, own, [ssim(control[j].numpy(), recs_t[j].numpy())
                                           for j in range(victims)]))
        images[label] = recs_t
        progress(f"leakage {label}: SSIM {np.mean(own):.3f}")
    # what a SecAgg+ aggregate of 10 such uploads reveals: their sum, and with distributed DP
    # a noisy sum; the same first-layer attack, on every hidden unit's row
    changes = []
    for i in range(10):
        m = public_mlp("mlp", 64, 10, 32, 0)
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        torch.nn.functional.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
        opt.step()
        changes.append(get_flat(m).astype(np.float64) - w0)
    clip = float(np.median([np.linalg.norm(c) for c in changes]))
    for label, eps in (("plain sum of 10 clients' uploads", None), ("SecAgg+ aggregate of 10 clients", None),
                       ("SecAgg+ with distributed DP, eps 8 (one round)", 8.0),
                       ("SecAgg+ with distributed DP, eps 1 (one round)", 1.0)):
        total = (np.sum(changes, axis=0) if label.startswith("plain")
                 else secagg_sum(changes, eps, clip))
        rows.append(_attack_sum(torch.as_tensor(total, dtype=torch.float32), lr, label,
                                images["original"][:10], control[:10]))
        progress(f"leakage {label}: mean best SSIM {rows[-1]['ssim']:.3f}")
    return rows, images


def secagg_sum(changes: list[np.ndarray], dp_epsilon: float | None, l2_clip: float) -> np.ndarray:
    """What a SecAgg+ server decodes from these clients' changes in one round, made with
    protocols.fedavg's own round setup, encodings, masks and unmasking (transport aside, no
    dropouts): the sum of the quantized changes, or with ``dp_epsilon`` of the clipped,
    Skellam-noised ones (FedAvg's distributed DP for a one-round run)."""
    names = [f"c{i:02d}" for i in range(len(changes))]
    cfg = FedAvgParams(rounds=1, dp_epsilon=dp_epsilon, l2_clip=l2_clip, epsilon_budget=1e9)
    setup = round_setup(cfg, names, "dssgd-leakage", 0, changes[0].size)
    keys = {u: secagg.new_key() for u in names}
    public = {u: secagg.public_bytes(keys[u]) for u in names}
    self_seeds = {u: randomness.token_bytes(secagg.SEED_BYTES) for u in names}
    rng = randomness.generator()
    total = np.zeros(setup.length, dtype=np.uint64)
    for u, change in zip(names, changes, strict=True):
        if setup.dp:
            noise = randomness.skellam(change.size, setup.dp.noise_per_client())
            x_in = setup.dp.encode(change, rng, noise).astype(np.uint64) & secagg.modulus_mask(setup.k)
        else:
            x_in = quantizer(cfg).encode(change, 1, rng)
        pairs = {v: (secagg.pair_seed(keys[u], public[v], setup.context, u, v), secagg.pair_sign(u, v))
                 for v in setup.graph[u]}
        np.add(total, secagg.masked_input(x_in, setup.k, self_seeds[u], pairs), out=total)
    total = secagg.unmask(total, setup.k, list(self_seeds.values()), [])
    if setup.dp:
        return secagg.to_signed(total, setup.k) / setup.dp.scale
    mean, weight = quantizer(cfg).decode_sum(total)
    return mean * weight


def _attack_sum(total: torch.Tensor, lr: float, setting: str, victims: torch.Tensor,
                control: torch.Tensor) -> dict:
    """Every hidden unit's row of the summed first layer gives a candidate image dW[u] / db[u];
    a unit that only one of the examples switched on gives that example back. Each victim
    is scored by its best candidate, and so is each control digit."""
    gw, gb = (-total[:64 * 32].reshape(32, 64) / lr), (-total[64 * 32:64 * 32 + 32] / lr)
    units = [(gw[u] / gb[u]).clamp(0, 1).reshape(1, 8, 8) for u in range(32) if gb[u].abs() > 1e-12]
    best = [max(ssim(v.numpy(), c.numpy()) for c in units) for v in victims]
    return _leak_row(f"{setting}, best of its {len(units)} unit images per client", best,
                     [max(ssim(v.numpy(), c.numpy()) for c in units) for v in control])


def _leak_row(setting: str, own: list[float], control: list[float]) -> dict:
    """SSIM of each reconstruction to its victim, and to a digit nobody uploaded (what
    any digit-like picture scores): only the gap, and exact copies, mean leakage."""
    return {"setting": setting, "ssim": float(np.mean(own)), "control_ssim": float(np.mean(control)),
            "exact": float(np.mean([v > 0.99 for v in own])), "n": len(own)}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write(share: list[dict], dp: list[dict], leak: list[dict], images: dict, seconds: float,
          quick: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    cmd = f"`python -m benchmarks.dssgd_results{' --quick' if quick else ''}`"
    md = ["### DSSGD: 10 participants on digits, 30 rounds, test accuracy (mean over participants)\n",
          _table(["split", "order", "lr", "theta_u", "DSSGD global", "DSSGD local", "standalone",
                  "centralized", "bytes up / participant"],
                 [[r["split"], r["order"], f"{r['lr']:g}", f"{r['theta_u']:g}", f"{r['global']:.3f}",
                   f"{r['local']:.3f}", f"{r['standalone']:.3f}", f"{r['centralized']:.3f}",
                   f"{r['bytes_up']:,.0f}"] for r in share]),
          f"\nCommand: {cmd} ({seconds:.0f} s for all three tables on this machine).\n"]
    (OUT / "dssgd_sharing.md").write_text("\n".join(md))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("iid", "noniid"), strict=True):
        rows = [r for r in share if r["split"] == split]
        for order, lr in dict.fromkeys((r["order"], r["lr"]) for r in rows):
            sel = [r for r in rows if r["order"] == order and r["lr"] == lr]
            ax.plot([r["theta_u"] for r in sel], [r["global"] for r in sel], marker="o",
                    label=f"DSSGD {order}, lr {lr:g}")
        ax.axhline(rows[0]["centralized"], color="green", ls=":", label="centralized")
        ax.axhline(mean(r["standalone"] for r in rows if r["lr"] == 0.1), color="grey", ls="--",
                   label="standalone")
        ax.set(xscale="log", xlabel="theta_u (fraction uploaded)", ylabel="test accuracy",
               title=f"digits, {split}, 10 participants", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(OUT / "dssgd_sharing.png", dpi=100)
    plt.close(fig)

    md = ["### DSSGD with the sparse vector technique: digits, IID, 10 participants, 30 rounds\n",
          _table(["theta_u", "gamma", "epsilon per round (paper)", "per parameter", "run: basic composition",
                  "run: zCDP (delta 1e-5)", "DSSGD global", "DSSGD local"],
                 [[f"{r['theta_u']:g}", f"{r['gamma']:g}", f"{r['epsilon_round']:g}", f"{r['privacy']['per_parameter']:.3g}",
                   f"{r['privacy']['basic']:.4g}", f"{r['privacy']['zcdp']:.4g}", f"{r['global']:.3f}",
                   f"{r['local']:.3f}"] for r in dp]),
          f"\nCommand: {cmd}.\n"]
    (OUT / "dssgd_dp.md").write_text("\n".join(md))

    md = ["### What the server sees: first-layer inversion of single-example uploads (digits, 20 victims)\n",
          _table(["what the server gets", "SSIM to the victim", "SSIM to a digit nobody sent (control)",
                  "exact copies (SSIM > 0.99)"],
                 [[r["setting"], f"{r['ssim']:.3f}", f"{r['control_ssim']:.3f}", f"{r['exact']:.0%}"]
                  for r in leak]),
          f"\nCommand: {cmd}.\n"]
    (OUT / "dssgd_leakage.md").write_text("\n".join(md))
    keys = [k for k in images]
    n = min(8, len(images["original"]))
    fig, axes = plt.subplots(len(keys), n, figsize=(n * 1.1, len(keys) * 1.25))
    for row, key in enumerate(keys):
        for col in range(n):
            ax = axes[row, col]
            ax.imshow(images[key][col].reshape(8, 8).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(key.replace(", ", ",\n"), fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(OUT / "dssgd_leakage.png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer DP settings")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    from rich.console import Console
    console = Console(highlight=False)
    import time
    t0 = time.time()
    with one_torch_thread():
        share = sharing(args.quick, console.print)
        dp = private(args.quick, console.print)
        leak, images = leakage(20, console.print)
    seconds = time.time() - t0
    write(share, dp, leak, images, seconds, args.quick)
    for name in ("dssgd_sharing.md", "dssgd_dp.md", "dssgd_leakage.md"):
        console.print((OUT / name).read_text())
    write_json({"sharing": share, "dp": dp, "leakage": leak}, args.json)
    console.print(f"wrote {OUT}/dssgd_*.md and .png ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
