#!/usr/bin/env python3
"""Local simulation: a fresh deployment, the embedded broker, one OS process per party.

    python run_parties.py hashcomb-setup --owners 5
    python run_parties.py argmax2pc --batch 4 --classes 10
    python run_parties.py dssgd --parties 10 --rounds 30 --theta-u 0.1
    python run_parties.py fedavg --clients 10 --rounds 20 --dropout 0.2
    python run_parties.py demo                   # what `make demo` runs

Each run lives in runs/<timestamp>/ (deployment, keys, transcripts, results,
logs); the run is audited at the end and its directory is the last line printed.
Every process started here is stopped on success, failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from parties.audit import audit_run
from parties.broker import EmbeddedBroker
from parties.identity import Deployment, PrivateKeys, new_local_deployment

# wide enough for the results tables when output goes to a file or CI log
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass
class Scenario:
    """One protocol session: who plays which role, with which public parameters."""

    protocol: str
    parties: list[tuple[str, str]]
    params: dict = field(default_factory=dict)
    # run in the previous session's run dir with its deployment (same parties), so the
    # parties keep the private state earlier sessions stored (e.g. hcsetup's key for hcfl)
    same_run_dir: bool = False
    extra_args: dict[str, list[str]] = field(default_factory=dict)   # per party, e.g. --ledger
    keep_keys: dict[str, Path] = field(default_factory=dict)         # identities kept across runs
    ledgers: dict[str, Path] = field(default_factory=dict)           # for the audit
    report: Callable[[Path, dict], None] | None = None                # after the session: plots
    drills: dict[str, str] = field(default_factory=dict)   # party -> KIND:N of its planned crash
    light: tuple[str, int] | None = None   # (role, n): that role's parties run n to a process
    data_dir: Path | None = None   # each party reads DIR/<name>.csv|.npz|.parquet (--data-dir)

    def processes(self) -> list[list[str]]:
        """The parties each OS process runs: one each, or light ones n to a process."""
        if self.light is None:
            return [[name] for name, _ in self.parties]
        role, n = self.light
        light = [name for name, r in self.parties if r == role]
        return ([light[i:i + n] for i in range(0, len(light), n)]
                + [[name] for name, r in self.parties if r != role])


# name -> (help, add_arguments(parser), build(args) -> list[Scenario]); one block per scenario
SCENARIOS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], list[Scenario]]]] = {}


def scenario(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(build: Callable[[argparse.Namespace], list[Scenario]]):
        SCENARIOS[name] = (help_text, add_arguments, build)
        return build
    return register


def _hashcomb_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owners", type=int, default=5)
    p.add_argument("--threshold", type=int, default=0, help="Shamir threshold (default: majority)")
    p.add_argument("--levels", type=int, default=8)
    p.add_argument("--lo", type=float, default=-0.35)
    p.add_argument("--hi", type=float, default=0.35)
    p.add_argument("--delta", type=float, default=None,
                   help="margin around [lo, hi] (default 0.01; with --rdp-epsilon, planned)")


@scenario("hashcomb-setup", "owners jointly create the Hash-Comb secret", _hashcomb_setup_args)
def hashcomb_setup(args: argparse.Namespace) -> list[Scenario]:
    if args.owners < 2:
        raise SystemExit("hashcomb-setup needs at least 2 owners")
    owners = [(f"owner{i}", "owner") for i in range(1, args.owners + 1)]
    params = {"levels": args.levels, "lo": args.lo, "hi": args.hi,
              "delta": 0.01 if args.delta is None else args.delta}
    if args.threshold:
        params["threshold"] = args.threshold
    return [Scenario("hcsetup", owners + [("aggregator", "aggregator")], params)]


def _hashcomb_fl_args(p: argparse.ArgumentParser) -> None:
    _hashcomb_setup_args(p)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--dataset", default="digits", choices=["digits", "breast_cancer", "wine", "mnist"])
    _data_dir_args(p)
    p.add_argument("--split", default="iid", choices=["iid", "noniid"])
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet skew of --split noniid")
    p.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scale", type=float, default=1.0, help="updates x scale are encoded")
    p.add_argument("--rounding", default="stochastic", choices=["stochastic", "nearest"])
    p.add_argument("--no-mask", action="store_true", help="do not mask tokens per coordinate")
    p.add_argument("--seed", type=int, default=0, help="model init, shuffling and data split")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain FedAvg session")
    p.add_argument("--rdp-epsilon", type=float, default=0.0,
                   help="make each owner's whole run (epsilon, --rdp-delta)-DP: randomized "
                        "quantization for Hash-Comb, local Gaussian noise for the FedAvg baseline")
    p.add_argument("--rdp-delta", type=float, default=1e-5)
    p.add_argument("--budget", type=float, default=0.0,
                   help="each owner's ledger (default: epsilon x the sessions that use the data)")
    p.add_argument("--plot", help="also save the accuracy plot here")


def _plan_private_margin(args: argparse.Namespace, data: dict | None) -> None:
    """With --rdp-epsilon and no --delta: the margin (and so the noise) the RQM planner
    finds least noisy for this model, run and epsilon."""
    from privacy import rqm
    from protocols import study_data
    from protocols.hashcomb_fl import FLConfig, make_model

    cfg = FLConfig(dataset=args.dataset, model=args.model, hidden=args.hidden, data=data)
    features, classes = study_data.shape("hcfl", args.dataset, data, args.seed)
    dim = sum(p.numel() for p in make_model(cfg, features, classes).parameters())
    if args.delta is None:
        margin, q, std = rqm.plan(args.levels, args.lo, args.hi, args.rdp_epsilon, dim,
                                  args.rounds, args.rdp_delta)
        args.delta = margin
        console.print(f"RQM plan for epsilon {args.rdp_epsilon} over {args.rounds} rounds of {dim:,} "
                      f"coordinates: margin delta = {margin:.4g}, keep probability q = {q:.4g}, "
                      f"noise std per coordinate <= {std:.4g} (range [{args.lo}, {args.hi}])")


@scenario("hashcomb-fl", "federated training over Hash-Comb tokens, beside plain FedAvg",
          _hashcomb_fl_args)
def hashcomb_fl(args: argparse.Namespace) -> list[Scenario]:
    setup = hashcomb_setup(args)[0]
    fl = {"rounds": args.rounds, "dataset": args.dataset, "split": args.split, "alpha": args.alpha,
          "model": args.model, "hidden": args.hidden, "epochs": args.epochs, "lr": args.lr,
          "batch": args.batch, "scale": args.scale, "rounding": args.rounding,
          "mask": not args.no_mask, "seed": args.seed, "data_seed": args.seed}
    encodings = ["hashcomb"] + ([] if args.no_baseline else ["float"])
    if args.rdp_epsilon:
        budget = args.budget or args.rdp_epsilon * len(encodings)
        fl.update(rdp_epsilon=args.rdp_epsilon, delta=args.rdp_delta, epsilon_budget=budget)
        if len(encodings) > 1 and not args.budget:
            console.print(f"each owner's ledger: epsilon {budget:g}, since the FedAvg baseline "
                          "trains on the same records again (--budget to set it)")
    done: list[dict] = []

    def report(run_dir: Path, session: dict) -> None:
        done.append(session)
        if len(done) == len(encodings):
            _hashcomb_fl_report(args, run_dir, dict(zip(encodings, done, strict=True)))

    data = _own_data(args, [n for n, r in setup.parties if r == "owner"])
    if data is not None:
        fl["data"] = data
    if args.rdp_epsilon:
        _plan_private_margin(args, data)
        setup = hashcomb_setup(args)[0]
    return [setup] + [Scenario("hcfl", setup.parties, {**fl, "encoding": e}, same_run_dir=True,
                               report=report, data_dir=args.data_dir) for e in encodings]


def _hashcomb_fl_report(args: argparse.Namespace, run_dir: Path, sessions: dict[str, dict]) -> None:
    """Per-round table (accuracy, bytes and time per owner) and the accuracy plot."""
    curves: dict[str, list[dict]] = {}
    for enc, session in sessions.items():
        owners = [r for r in session["parties"].values() if r.get("role") == "owner"]
        if not owners or not all(r.get("ok") for r in owners):
            console.print(f"[red]{enc} session failed; no comparison[/]")
            return
        if len({r["result"]["model_digest"] for r in owners}) != 1:
            console.print(f"[red]{enc}: the owners ended with different models[/]")
        curves[enc] = owners[0]["result"]["rounds"]
    names = {"hashcomb": "Hash-Comb", "float": "FedAvg (float32)"}
    if args.rdp_epsilon:
        names = {"hashcomb": "Hash-Comb + RQM", "float": "DP-FedAvg (Gaussian)"}
    table = Table(title=f"hashcomb-fl: {args.dataset}, {args.split}, {args.owners} owners, "
                        f"L={args.levels}; test accuracy (common held-out 25 %) per round")
    table.add_column("round")
    for enc in curves:
        table.add_column(f"{names[enc]} accuracy")
    private = args.rdp_epsilon > 0
    if private:
        for enc in curves:
            table.add_column(f"{names[enc]} epsilon")
    for enc in curves:
        table.add_column(f"{names[enc]} s/round")
    for i in range(len(curves["hashcomb"])):
        table.add_row(str(i + 1), *[f"{c[i]['accuracy']:.4f}" for c in curves.values()],
                      *([f"{c[i]['epsilon']:.4g}" for c in curves.values()] if private else []),
                      *[f"{c[i]['seconds']:.3f}" for c in curves.values()])
    console.print(table)
    from statistics import mean, median

    dim = sessions["hashcomb"]["parties"]["owner1"]["result"]["dimension"]
    for enc, c in curves.items():
        console.print(f"{names[enc]}: final accuracy {c[-1]['accuracy']:.4f}; per owner and round "
                      f"{mean(r['bytes_sent'] for r in c):,.0f} B sent, "
                      f"{mean(r['bytes_received'] for r in c):,.0f} B received; median "
                      f"{median(r['seconds'] for r in c):.3f} s/round "
                      f"({dim:,} parameters: float32 update {4 * dim:,} B)")
    hc = curves["hashcomb"]
    float32 = 4 * dim
    console.print(f"Hash-Comb bytes against a float32 update ({float32:,} B): upload "
                  f"{mean(r['bytes_sent'] for r in hc) / float32:.3f}x, download "
                  f"{mean(r['bytes_received'] for r in hc) / float32:.3f}x per owner and round")
    if private:
        for enc, c in curves.items():
            console.print(f"{names[enc]}: ({c[-1]['epsilon']:.4g}, {args.rdp_delta:g})-DP for each "
                          f"owner's whole update over {len(c)} rounds ({c[0]['epsilon']:.4g} after one)")
    final = {enc: c[-1]["accuracy"] for enc, c in curves.items()}
    if "float" in final:
        console.print(f"difference Hash-Comb - FedAvg: {100 * (final['hashcomb'] - final['float']):+.2f} "
                      "points")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    style = {"float": {"lw": 4, "alpha": 0.45}, "hashcomb": {"ls": "--", "marker": "o", "ms": 3}}
    for enc in sorted(curves, reverse=True):  # the baseline underneath, Hash-Comb on top
        c = curves[enc]
        ax.plot([r["round"] for r in c], [r["accuracy"] for r in c], **style[enc],
                label=f"{names[enc]} (final {final[enc]:.3f})")
    ax.set(xlabel="round", ylabel="test accuracy",
           title=f"{args.dataset}, {args.split}, {args.owners} owners, L = {args.levels}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [run_dir / "hashcomb_fl.png"] + ([Path(args.plot)] if args.plot else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        console.print(f"plot: {path}")
    plt.close(fig)


def _argmax2pc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)


@scenario("argmax2pc", "2PC argmax between two processes with a dealer", _argmax2pc_args)
def argmax2pc(args: argparse.Namespace) -> list[Scenario]:
    return [Scenario("argmax2pc", [("alice", "holder"), ("bob", "holder"), ("dealer", "dealer")],
                     {"batch": args.batch, "classes": args.classes})]


def _capc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parties", type=int, default=5, help="data parties (QP and APs)")
    p.add_argument("--qps", type=int, default=1, help="how many parties act as QP in turn")
    p.add_argument("--dataset", default="digits", choices=["digits", "breast_cancer", "wine", "mnist"],
                   help="built-in data set, split among the data parties")
    p.add_argument("--split", default="iid", choices=["iid", "noniid"],
                   help="noniid: Dirichlet(0.5) label skew")
    p.add_argument("--heterogeneous", action="store_true", help="different model architectures")
    p.add_argument("--queries", type=int, default=100, help="unlabelled points the QP asks about")
    p.add_argument("--batch-size", type=int, default=50, help="queries per CKKS batch and 2PC")
    p.add_argument("--mode", default="crypto", choices=["crypto", "plaintext"],
                   help="plaintext: an INSECURE simulation with the same messages")
    p.add_argument("--threshold", type=float, default=None,
                   help="Confident-GNMax vote threshold (default: plain GNMax)")
    p.add_argument("--sigma-threshold", type=float, default=2.0,
                   help="Confident-GNMax: noise of the threshold check")
    p.add_argument("--sigma-gnmax", type=float, default=1.0, help="noise of the noisy argmax")
    p.add_argument("--budget", type=float, default=None,
                   help="PG's epsilon budget for a new ledger (default 10; a spent ledger refuses "
                        "further queries, raise it deliberately)")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of the (epsilon, delta) reported")
    p.add_argument("--epochs", type=int, default=60, help="training epochs of every party's model")
    p.add_argument("--seed", type=int, default=0, help="data split and model initialisation")
    p.add_argument("--qp-points", type=int, default=None,
                   help="the QP keeps only this many labelled points of its own")
    p.add_argument("--noise-seed", type=int, default=None,
                   help="INSECURE fixed PG noise, to compare runs; never in deployment")
    p.add_argument("--teachers-per-party", type=int, default=1,
                   help="teachers each answering party trains on disjoint shards of its data")
    p.add_argument("--teacher-arch", default=None,
                   help="their architecture: logreg or an HE-friendly MLP (default: the party's)")
    p.add_argument("--max-answers", type=int, default=None,
                   help="the guardian's cap on answers, fixed before the first query "
                        "(Confident-GNMax then charges GNMax for at most this many)")
    _data_dir_args(p)
    p.add_argument("--models-dir", type=Path,
                   help="answering parties with a file DIR/<name>.onnx or .pt answer with that "
                        "model instead of training one")


def _capc_files(args: argparse.Namespace, qps: list[str], aps: list[str]
                ) -> tuple[dict | None, dict[str, list[str]]]:
    """With --data-dir / --models-dir: the study's data description, and each party's
    --data/--queries/--model arguments, after every file was found and checked."""
    from learning.data_files import DataFileError, load_party_data, party_file, read_study
    from learning.model_files import MODEL_FORMATS, ModelFileError, load_model
    from protocols import study_data

    spec, extra = None, {n: [] for n in qps + aps}
    try:
        if args.data_dir is not None:
            spec = read_study(args.data_dir)
            if args.label_column:
                spec = dataclasses.replace(spec, label_column=args.label_column)
        features, classes = study_data.shape("capc", args.dataset, spec and spec.to_dict(), args.seed)
        for name in aps if args.models_dir else []:
            found = [args.models_dir / f"{name}{ext}" for ext in MODEL_FORMATS
                     if (args.models_dir / f"{name}{ext}").is_file()]
            if found:
                try:
                    load_model(found[0], features, classes)
                except ModelFileError as e:
                    raise SystemExit(f"--models-dir: party '{name}': model file {found[0]}: {e}") from None
                extra[name] += ["--model", str(found[0])]
        if spec is not None:
            for name in qps + aps:
                path = party_file(args.data_dir, name, required=name in qps or not extra[name])
                if path is not None:
                    load_party_data(path, spec, name)
                    extra[name] += ["--data", str(path)]
            for name in qps:
                path = party_file(args.data_dir, name, "-queries")
                if len(load_party_data(path, spec, name, labelled=False)) < args.queries:
                    raise SystemExit(f"--data-dir: {path} has fewer than --queries {args.queries} rows")
                extra[name] += ["--queries", str(path)]
    except DataFileError as e:
        raise SystemExit(f"--data-dir: {e}") from None
    return (spec.to_dict() if spec is not None else None), extra


@scenario("capc", "CaPC: private collaborative labelling, retraining, results", _capc_args)
def capc(args: argparse.Namespace) -> list[Scenario]:
    from parties.reports import capc_report

    if args.parties < 2 or not 1 <= args.qps <= args.parties:
        raise SystemExit("capc needs at least 2 parties and 1 <= --qps <= --parties")
    members = [f"party{i}" for i in range(1, args.parties + 1)]
    params = {"dataset": args.dataset, "split": args.split, "heterogeneous": args.heterogeneous,
              "queries": args.queries, "batch_size": args.batch_size, "mode": args.mode,
              "threshold": args.threshold, "sigma_threshold": args.sigma_threshold,
              "sigma_gnmax": args.sigma_gnmax, "delta": args.delta,
              "epochs": args.epochs, "seed": args.seed, "noise_seed": args.noise_seed,
              "qp_points": args.qp_points, "teachers": args.teachers_per_party,
              "teacher_arch": args.teacher_arch, "max_answers": args.max_answers}
    if args.budget is not None:
        params["epsilon_budget"] = args.budget
    if args.data_dir is not None and args.qps > 1:
        raise SystemExit("--data-dir takes one querying party (--qps 1)")
    data, files = _capc_files(args, members[:args.qps], members[args.qps:] if args.qps == 1 else members)
    if data is not None:
        params["data"] = data
    # One ledger for the guardian across every QP's session: all answers spend
    # the same answering parties' privacy. The guardian keeps one identity, whose
    # key signs every ledger line.
    stem = Path(args.runs_dir).resolve() / f"pg-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    ledger, guardian_key = Path(f"{stem}-ledger.jsonl"), Path(f"{stem}-guardian.key")
    return [Scenario("capc", [(m, "qp" if m == qp else "ap") for m in members]
                     + [("guardian", "pg"), ("dealer", "dealer")], params,
                     extra_args={"guardian": ["--ledger", str(ledger)],
                                 **{n: a for n, a in files.items() if n != qp or data is not None}},
                     report=capc_report,
                     keep_keys={"guardian": guardian_key}, ledgers={"guardian": ledger})
            for qp in members[:args.qps]]


def _dssgd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parties", type=int, default=10, help="participants (plus one parameter server)")
    p.add_argument("--dataset", default="digits", choices=["digits", "breast_cancer", "wine", "mnist"])
    _data_dir_args(p)
    p.add_argument("--split", default="iid", choices=["iid", "noniid"])
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet skew of --split noniid")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--theta-u", type=float, default=0.1, help="fraction of parameters uploaded")
    p.add_argument("--theta-d", type=float, default=1.0, help="fraction of parameters downloaded")
    p.add_argument("--order", default="round-robin", choices=["round-robin", "random", "async"])
    p.add_argument("--selection", default="largest", choices=["largest", "threshold"],
                   help="upload the largest changes, or random ones of at least --tau")
    p.add_argument("--download", default="counts", choices=["counts", "recent", "random"],
                   help="which global parameters to download when --theta-d < 1")
    p.add_argument("--tau", type=float, default=1e-4, help="threshold of --selection threshold and DP")
    p.add_argument("--gamma", type=float, default=0.1, help="uploaded values are clipped to +-gamma")
    p.add_argument("--dp-epsilon", type=float, default=None,
                   help="private uploads (sparse vector technique): epsilon per participant and round")
    p.add_argument("--budget", type=float, default=10.0,
                   help="each participant's epsilon budget (its ledger) with --dp-epsilon")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of the run's epsilon")
    p.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    p.add_argument("--lr", type=float, default=0.1, help="local SGD learning rate")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="data split, model init, shuffling")
    p.add_argument("--no-baselines", action="store_true", help="skip standalone and centralized")


@scenario("dssgd", "distributed selective SGD (Shokri and Shmatikov), beside standalone and "
          "centralized training", _dssgd_args)
def dssgd(args: argparse.Namespace) -> list[Scenario]:
    from learning.dssgd import centralized_accuracy
    from parties.reports import dssgd_report

    if args.parties < 1:
        raise SystemExit("dssgd needs at least 1 participant")
    params = {"dataset": args.dataset, "split": args.split, "alpha": args.alpha,
              "rounds": args.rounds, "theta_u": args.theta_u, "theta_d": args.theta_d,
              "order": args.order, "selection": args.selection, "download": args.download,
              "tau": args.tau, "gamma": args.gamma, "dp_epsilon": args.dp_epsilon,
              "epsilon_budget": args.budget, "delta": args.delta, "model": args.model,
              "hidden": args.hidden, "epochs": args.epochs, "lr": args.lr, "batch": args.batch,
              "seed": args.seed, "data_seed": args.seed, "baselines": not args.no_baselines}
    if args.dp_epsilon and args.dp_epsilon * args.rounds > args.budget:
        console.print(f"[yellow]note:[/] {args.rounds} rounds at epsilon {args.dp_epsilon:g} exceed "
                      f"each participant's budget {args.budget:g}: uploads stop after about "
                      f"{int(args.budget // args.dp_epsilon)} rounds (raise --budget deliberately)")

    names = [(f"participant{i}", "participant") for i in range(1, args.parties + 1)]
    data = _own_data(args, [n for n, _ in names])
    if data is not None:
        params["data"] = data

    def report(run_dir: Path, session: dict) -> None:
        # centralized training would pool every participant's records: not with own data
        central = None if args.no_baselines or data is not None else centralized_accuracy(
            args.dataset, data_seed=args.seed, model=args.model, hidden=args.hidden, seed=args.seed,
            epochs=args.rounds * args.epochs, lr=args.lr, batch=args.batch)
        summary = dssgd_report(run_dir, session, central)
        if summary is not None:
            session["summary"] = summary

    return [Scenario("dssgd", names + [("server", "server")], params, report=report,
                     data_dir=args.data_dir)]


def _data_dir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path,
                   help="each party trains on its own file DIR/<name>.csv, .npz or .parquet, "
                        "described by DIR/study.json (`confidant split-data` writes such a "
                        "directory); replaces --dataset")
    p.add_argument("--label-column", help="with --data-dir: the label column (default: the "
                                          "study's, else 'label')")


def _own_data(args: argparse.Namespace, readers: list[str]) -> dict | None:
    """With --data-dir: the study's data description for the parameters, after every
    reading party's file was found and checked (one line, before anything starts)."""
    if args.data_dir is None:
        return None
    from learning.data_files import DataFileError, load_party_data, party_file, read_study

    try:
        spec = read_study(args.data_dir)
        if args.label_column:
            spec = dataclasses.replace(spec, label_column=args.label_column)
        for name in readers:
            load_party_data(party_file(args.data_dir, name), spec, name)
    except DataFileError as e:
        raise SystemExit(f"--data-dir: {e}") from None
    console.print(f"own data: {len(readers)} parties' files in {args.data_dir} "
                  f"({spec.features} features, {spec.classes} classes)")
    return spec.to_dict()


def _fedavg_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--dataset", default="digits", choices=["digits", "breast_cancer", "wine", "mnist"])
    _data_dir_args(p)
    p.add_argument("--split", default="iid", choices=["iid", "noniid"])
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet skew of --split noniid")
    p.add_argument("--no-secagg", action="store_true", help="plain FedAvg only")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain FedAvg session")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="crash this fraction of the clients, each at a random stage of a random round")
    p.add_argument("--tolerate", type=float, default=None,
                   help="dropout fraction per round SecAgg+ is sized for (default: max(0.1, --dropout))")
    p.add_argument("--corrupt", type=float, default=0.1,
                   help="fraction of clients that may collude with the server")
    p.add_argument("--dp-epsilon", type=float, default=None,
                   help="differential privacy for one client's whole update over the run: Skellam "
                        "noise from each client (SecAgg+), Gaussian noise from the server (plain)")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of --dp-epsilon")
    p.add_argument("--l2-clip", type=float, default=1.0, help="with --dp-epsilon: L2 bound of an update")
    p.add_argument("--budget", type=float, default=10.0,
                   help="with --dp-epsilon: each client's epsilon budget (its ledger)")
    p.add_argument("--synthetic-dim", type=int, default=0,
                   help="light clients: no data or training, public synthetic updates of this "
                        "dimension, checked against the plain mean (scale runs)")
    p.add_argument("--clients-per-process", type=int, default=1,
                   help="run this many clients in each OS process (each with its own identity "
                        "and MQTT connection); for many light clients")
    p.add_argument("--clip", type=float, default=0.5, help="update coordinates clipped to +-clip")
    p.add_argument("--bits", type=int, default=16, help="quantization bits per coordinate")
    p.add_argument("--model", default="mlp", choices=["mlp", "logreg"])
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="model init, shuffling and data split")


# SecAgg+ stages a client can crash at (messages per round: see _crash_plan)
FEDAVG_STAGES = ("shares", "keys", "masked", "confirm", "unmask")


def _crash_plans(clients: list[str], fraction: float, rounds: int, tolerate: float, corrupt: float
                 ) -> dict[str, tuple[str, int, int]]:
    """Victim -> (stage, round, N): it dies instead of sending its N-th message of that stage.
    N is counted from how many messages of the stage each round takes, given who dropped
    before (a complete graph below ~40 clients; a sparse graph's degree is its average)."""
    from mpc import randomness, secagg

    rng = randomness.generator()
    victims = rng.choice(clients, size=round(fraction * len(clients)), replace=False)
    when = {str(v): (FEDAVG_STAGES[rng.integers(len(FEDAVG_STAGES))], int(rng.integers(1, rounds + 1)))
            for v in victims}
    plans, sent = {}, dict.fromkeys(FEDAVG_STAGES, 0)   # messages of each stage per client so far
    alive = len(clients)
    for r in range(1, rounds + 1):
        try:
            degree = secagg.choose_graph(alive, tolerate, corrupt).degree
        except secagg.SecAggError:   # too few left: that round fails, as it should
            degree = alive - 1
        early = sum(1 for st, rr in when.values() if rr == r and st in ("shares", "keys", "masked"))
        per_round = {"keys": degree + 1, "shares": degree, "masked": 1,
                     "confirm": alive - early - 1, "unmask": 1}
        for v, (stage, rr) in sorted(when.items()):
            if rr == r:
                plans[v] = (stage, r, sent[stage] + int(rng.integers(1, max(1, per_round[stage]) + 1)))
        sent = {st: sent[st] + per_round[st] for st in FEDAVG_STAGES}
        alive -= sum(1 for _, rr in when.values() if rr == r)
    return plans


@scenario("fedavg", "federated averaging with SecAgg+ secure aggregation, beside plain FedAvg",
          _fedavg_args)
def fedavg(args: argparse.Namespace) -> list[Scenario]:
    from mpc import secagg
    from parties.reports import fedavg_report

    if args.clients < 3:
        raise SystemExit("fedavg needs at least 3 clients")
    if not 0 <= args.dropout < 0.5:
        raise SystemExit("--dropout must be a fraction in [0, 0.5)")
    tolerate = max(0.1, args.dropout) if args.tolerate is None else args.tolerate
    params = {"dataset": args.dataset, "split": args.split, "alpha": args.alpha, "rounds": args.rounds,
              "dropout": tolerate, "corrupt": args.corrupt, "clip": args.clip, "bits": args.bits,
              "model": args.model, "hidden": args.hidden, "epochs": args.epochs, "lr": args.lr,
              "batch": args.batch, "seed": args.seed, "data_seed": args.seed,
              "dp_epsilon": args.dp_epsilon, "delta": args.delta, "l2_clip": args.l2_clip,
              "epsilon_budget": args.budget, "synthetic_dim": args.synthetic_dim}
    if args.clients_per_process < 1:
        raise SystemExit("--clients-per-process must be >= 1")
    if args.clients_per_process > 1 and args.dropout:
        raise SystemExit("--dropout crashes a client's process: use --clients-per-process 1 with it")
    kinds = ([] if args.no_secagg else [True]) + ([] if args.no_baseline and not args.no_secagg else [False])
    clients = [f"client{i:02d}" for i in range(1, args.clients + 1)]
    parties = [(c, "client") for c in clients] + [("server", "server")]
    plans = {}
    if args.dropout:
        try:
            secagg.choose_graph(args.clients, tolerate, args.corrupt)
        except secagg.SecAggError as e:
            raise SystemExit(f"fedavg: {e}") from None
        plans = _crash_plans(clients, args.dropout, args.rounds, tolerate, args.corrupt)
        console.print("crash drill: " + ", ".join(f"{v} at '{stage}' in round {r}"
                                                  for v, (stage, r, _) in plans.items()))
    done: list[dict] = []

    def report(run_dir: Path, session: dict) -> None:
        done.append(session)
        if len(done) == len(kinds):
            fedavg_report(run_dir, dict(zip(["secagg" if k else "plain" for k in kinds], done, strict=True)))

    def drills(secure: bool) -> dict[str, str]:
        if secure:
            return {v: f"fedavg.{stage}:{n}" for v, (stage, _, n) in plans.items()}
        # plain FedAvg: the same clients leave the same sums (one that dies after its masked
        # input is still in that round's sum)
        late = {v: r + (stage in ("confirm", "unmask")) for v, (stage, r, _) in plans.items()}
        return {v: f"fedavg.update:{r}" for v, r in late.items() if r <= args.rounds}

    data = _own_data(args, clients)
    if data is not None:
        if args.synthetic_dim:
            raise SystemExit("--data-dir and --synthetic-dim exclude each other")
        params["data"] = data
    return [Scenario("fedavg", parties, {**params, "secagg": k}, same_run_dir=i > 0, report=report,
                     drills=drills(k), light=("client", args.clients_per_process)
                     if args.clients_per_process > 1 else None,
                     data_dir=args.data_dir) for i, k in enumerate(kinds)]


# CaPC is for a data-poor querying party: the demo's QP keeps 50 labelled points and buys
# 100 labels. Four answering parties give PATE little privacy per query (data-independent
# accounting): the demo raises the guardian's budget deliberately and prints what was spent.
DEMO = (["capc", "--parties", "5", "--queries", "100", "--batch-size", "50", "--qp-points", "50",
         "--budget", "200"],
        ["hashcomb-setup", "--owners", "5"],
        ["argmax2pc", "--batch", "4"])


@scenario("demo", "what `make demo` runs: CaPC with 5 parties (crypto), then the Hash-Comb "
          "secret set-up with 5 owners and a 2PC argmax between processes", lambda p: None)
def demo(args: argparse.Namespace) -> list[Scenario]:
    parser = build_parser()
    return [s for argv in DEMO
            for s in scenarios_for(parser.parse_args(["--runs-dir", args.runs_dir, *argv]))]


async def _pump(stream: asyncio.StreamReader, name: str) -> None:
    async for raw in stream:
        line = raw.decode(errors="replace").strip()
        try:
            obj = json.loads(line)
            msg, who = obj["progress"], obj.get("party", name)
        except (ValueError, KeyError, TypeError):
            msg, who = line, name
        console.print(f"  [cyan]{who:>12}[/] {msg}")


async def run_session(run_dir: Path, scenario: Scenario, broker_url: str, timeout: float,
                      broker: EmbeddedBroker | None = None) -> dict:
    if scenario.same_run_dir and (run_dir / "deployment.toml").exists():
        deployment = Deployment.load(run_dir / "deployment.toml")
        if sorted((n, p.role) for n, p in deployment.parties.items()) != sorted(scenario.parties):
            raise SystemExit(f"{scenario.protocol}: same_run_dir needs the previous session's parties")
    else:
        for name, path in (scenario.keep_keys or {}).items():  # made by the first session
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                PrivateKeys.generate(name).save(path)
        deployment = new_local_deployment(run_dir, scenario.parties, broker_url, name=run_dir.name,
                                          keep=scenario.keep_keys)
    if broker is not None:
        broker.admit(deployment)  # these parties, with these passwords, may log in
    session = secrets.token_hex(8)
    (run_dir / "logs").mkdir(exist_ok=True)
    params_file = run_dir / f"params-{scenario.protocol}.json"
    params_file.write_text(json.dumps(scenario.params))
    procs: dict[str, asyncio.subprocess.Process] = {}
    groups = {(g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}"): g for g in scenario.processes()}
    pumps = []
    import protocols
    insecure = protocols.check_params(scenario.protocol, scenario.params).insecure()
    if insecure:
        console.print("[yellow]INSECURE simulation:[/] " + "; ".join(insecure))
    for name, _ in scenario.parties:  # an earlier session's result must not stand in for this one
        (run_dir / "results" / f"{name}.json").unlink(missing_ok=True)
    try:
        for name, group in groups.items():
            log = open(run_dir / "logs" / f"{name}.log", "ab")
            key = run_dir / "keys" / (f"{name}.key" if len(group) == 1 else "")
            procs[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "parties.party", "--deployment", str(run_dir / "deployment.toml"),
                "--name", ",".join(group), "--key", str(key),
                "--protocol", scenario.protocol, "--session", session,
                "--params", f"@{params_file}", "--workdir", str(run_dir),
                *scenario.extra_args.get(name, []),
                *(["--crash-before", scenario.drills[name]] if name in scenario.drills else []),
                *(["--data", str(scenario.data_dir)] if scenario.data_dir else []),
                # the user of this one-machine simulation asked for these parameters
                *(["--allow-insecure"] if insecure else []),
                stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True)
            log.close()
            pumps.append(asyncio.create_task(_pump(procs[name].stdout, name)))
        waiting = asyncio.gather(*(p.wait() for p in procs.values()))
        # On Ctrl-C the gather ends cancelled; mark that seen so asyncio does not print it
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait_for(waiting, timeout)
    except TimeoutError:
        console.print(f"[red]session did not finish within {timeout:g} s; stopping every party[/]")
    finally:
        _stop_all(procs)
        for p in procs.values():
            await p.wait()
        await asyncio.gather(*pumps, return_exceptions=True)
    records = {}
    process_of = {member: label for label, group in groups.items() for member in group}
    for name, _ in scenario.parties:
        path = run_dir / "results" / f"{name}.json"
        code = procs[process_of[name]].returncode
        records[name] = (json.loads(path.read_text()) if path.exists() else
                         {"party": name, "ok": False, "error": (
                             f"crashed as planned (crash drill: before {scenario.drills[name]})"
                             if name in scenario.drills and code == -signal.SIGKILL else
                             f"exited with code {code} and no result; see logs/{process_of[name]}.log")})
    return {"protocol": scenario.protocol, "session": session, "deployment": deployment.name,
            "parties": records}


def _only_drills(errors: list, victims: set[str]) -> bool:
    """The audit's errors are what planned crashes leave: the victims' unsealed transcripts
    and messages to them never received."""
    return bool(victims) and all(
        (e.code == "unsealed" and e.party in victims)
        or (e.code == "undelivered" and any(f"{v} did not finish" in e.message
                                            for v in victims))
        for e in errors)


def _stop_all(procs: dict[str, asyncio.subprocess.Process]) -> None:
    for p in procs.values():
        if p.returncode is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _summary(result: dict, width: int = 300) -> str:
    """A party's result in one cell: scalars and short lists, whole items only."""
    parts = []
    for key, value in result.items():
        if key == "role":
            continue
        if isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, (int, str, bool)) or value is None:
            text = "none" if value is None else str(value)
        elif isinstance(value, list) and len(value) <= 10 and all(
                isinstance(v, (int, float, str)) for v in value):
            text = json.dumps(value)
        else:
            continue  # tables, curves, labels: in results.json
        parts.append(f"{key}={text}")
    shown = ""
    for part in parts:
        if len(shown) + len(part) + 2 > width:
            return shown + ", …"
        shown = f"{shown}, {part}" if shown else part
    return shown


def print_results(session: dict) -> None:
    table = Table(title=f"{session['protocol']} (session {session['session']})")
    for col in ("party", "role", "ok", "seconds", "messages sent", "bytes sent", "result"):
        table.add_column(col)
    for name, rec in session["parties"].items():
        res = rec.get("result") or {}
        shown = _summary(res) if rec.get("ok") else rec.get("error", "")
        tr = rec.get("transport", {})
        table.add_row(name, str(rec.get("role", "?")), "yes" if rec.get("ok") else "[red]NO[/]",
                      str(rec.get("seconds", "")), str(tr.get("sent_messages", "")),
                      str(tr.get("sent_bytes", "")), shown)
    console.print(table)


async def main_async(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.runs_dir)
    ok = True
    run_dirs = []
    broker = None if args.broker else EmbeddedBroker(log_path=None)
    try:
        if broker:
            broker.start()
            console.print(f"embedded broker on {broker.url}")
        url = args.broker or broker.url
        for i, scenario in enumerate(scenarios):
            if not (scenario.same_run_dir and run_dirs):
                run_dir = base / (stamp + (f"-{scenario.protocol}" if len(scenarios) > 1 else "")
                                  + f"-{secrets.token_hex(2)}")
                run_dir.mkdir(parents=True)
                run_dirs.append(run_dir)
                dir_sessions = []
                crashed: set[str] = set()   # planned crashes of every session in this run dir
            console.print(f"[bold]{scenario.protocol}[/]: {len(scenario.parties)} party processes "
                          f"({i + 1}/{len(scenarios)})")
            session = await run_session(run_dir, scenario, url, args.timeout, broker)
            print_results(session)
            if scenario.report is not None:
                scenario.report(run_dir, session)
            report = audit_run(run_dir, ledgers=scenario.ledgers)
            session["audit"] = report.to_json()
            dir_sessions.append(session)
            summary = session if len(dir_sessions) == 1 else {"sessions": dir_sessions}
            (run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            all_ok = all(r.get("ok") for n, r in session["parties"].items() if n not in scenario.drills)
            crashed |= set(scenario.drills)   # the audit reads every session of the run dir
            audit_ok = report.ok or _only_drills(report.errors, crashed)
            console.print(f"audit: {'[green]clean[/]' if report.ok else f'[red]{len(report.errors)} problem(s)[/]'}"
                          + (f", all from the planned crashes of {', '.join(sorted(crashed))}"
                             if audit_ok and not report.ok else "")
                          + ("" if report.ok else f" (confidant audit {run_dir})"))
            ok = ok and all_ok and audit_ok
    finally:
        if broker:
            broker.close()
    for d in run_dirs:
        print(d)
    return 0 if ok else 1


class _WithDefaults(argparse.HelpFormatter):
    """Every option's default in its help line, also where the help text says nothing else."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text
                and action.default not in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=_WithDefaults)
    parser.add_argument("--broker", help="use this broker (mqtt://host:port) instead of the embedded "
                        "one; it must let in the fresh parties of each run (e.g. anonymous on loopback)")
    parser.add_argument("--runs-dir", default="runs", help="where each run's directory is made")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per session")
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, (help_text, add_arguments, _) in SCENARIOS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text,
                                     formatter_class=_WithDefaults))
    return parser


def scenarios_for(args: argparse.Namespace) -> list[Scenario]:
    return SCENARIOS[args.scenario][2](args)


def check_scenarios(scenarios: list[Scenario]) -> str | None:
    """Every session's parameters, checked before any process starts; the problem, or None."""
    import protocols

    for scenario in scenarios:
        try:
            protocols.check_params(scenario.protocol, scenario.params)
        except protocols.ParameterError as e:
            return str(e)
    return None


def main() -> int:
    args = build_parser().parse_args()
    scenarios = scenarios_for(args)
    problem = check_scenarios(scenarios)
    if problem:
        console.print(f"[red]bad parameters:[/] {problem}")
        return 2
    try:
        return asyncio.run(main_async(args, scenarios))
    except KeyboardInterrupt:
        console.print("[red]interrupted; every party process was stopped[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
