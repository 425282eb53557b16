"""Result tables and plots for finished sessions (files belong to parties/)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def capc_table(sessions: list[dict]) -> Table:
    table = Table(title="CaPC: one row per querying party")
    for col in ("QP", "mode", "data", "APs", "acc before", "acc after", "queries", "answered",
                "refused", "abstained", "labels correct", "epsilon", "delta"):
        table.add_column(col, justify="right")
    for session in sessions:
        for name, rec in session["parties"].items():
            r = rec.get("result") or {}
            if r.get("role") != "qp":
                continue
            answered = r["answered"]
            data = "own files" if r.get("own_data") else f"{r['dataset']}/{r['split']}"
            correct = ("unknown" if r["labelled_correctly"] is None
                       else f"{r['labelled_correctly']}/{answered}")
            table.add_row(name, r["mode"], data, str(r["answering_parties"]),
                          f"{r['accuracy_before']:.3f}", f"{r['accuracy_after']:.3f}", str(r["queries"]),
                          str(answered), str(r["refused"]), str(r["abstained"]),
                          correct, f"{r['epsilon']:.3g}", f"{r['delta']:g}")
    return table


def capc_plot(sessions: list[dict], path: Path) -> Path | None:
    """Accuracy and epsilon against the number of queries, one line per QP."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(name, rec["result"]) for s in sessions for name, rec in s["parties"].items()
              if (rec.get("result") or {}).get("role") == "qp" and rec["result"].get("curve")]
    if not curves:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in curves:
        xs = [0] + [p["queries"] for p in r["curve"]]
        ax1.plot(xs, [r["accuracy_before"]] + [p["accuracy"] for p in r["curve"]], marker="o", label=name)
        ax2.plot(xs, [0.0] + [p["epsilon"] for p in r["curve"]], marker="o", label=name)
    ax1.set(xlabel="queries", ylabel="QP test accuracy", title="accuracy after retraining")
    ax2.set(xlabel="queries", ylabel="epsilon (data-independent)", title="privacy spent")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def capc_story(session: dict) -> list[str]:
    """One sentence per querying party: what it gained, and what it paid."""
    lines = []
    for name, rec in session["parties"].items():
        r = rec.get("result") or {}
        if r.get("role") != "qp":
            continue
        gain = r["accuracy_after"] - r["accuracy_before"]
        lines.append(
            f"{name} started with {r.get('own_points', '?')} labelled points of its own (test "
            f"accuracy {r['accuracy_before']:.3f}); it bought {r['answered']} labels from "
            f"{r['answering_parties']} organisations' models without seeing them or showing its "
            f"queries, and retrained to {r['accuracy_after']:.3f} ({gain:+.3f}). The price is "
            f"epsilon {r['epsilon']:.3g} at delta {r['delta']:g}, counted data-independently: with "
            f"{r['answering_parties']} voters PATE's guarantee is weak (many teachers make it "
            "strong; RESULTS.md), while the confidentiality of data and models does not depend "
            "on it.")
        if r.get("refused"):
            lines.append(f"{r['refused']} of {r['queries']} queries were refused: the privacy "
                         "guardian's budget was spent (default epsilon 10; raise it deliberately "
                         "with --budget, or add noise with --sigma-gnmax).")
    return lines


def capc_report(run_dir: Path, session: dict) -> None:
    console.print(capc_table([session]))
    for line in capc_story(session):
        console.print(line)
    png = capc_plot([session], run_dir / "capc.png")
    if png:
        console.print(f"plot: {png}")


def dssgd_summary(session: dict) -> dict | None:
    """Means over the participants that finished: accuracy per round, final accuracies,
    bytes, privacy; None when none finished."""
    from statistics import mean

    done = [rec["result"] for rec in session["parties"].values()
            if rec.get("ok") and (rec.get("result") or {}).get("role") == "participant"]
    if not done:
        return None
    cfg = done[0]["config"]
    rounds = len(done[0]["rounds"])
    out = {"config": cfg, "participants": len(done),
           "curve": [mean(d["rounds"][i]["accuracy"] for d in done) for i in range(rounds)],
           "global": mean(d["global_accuracy"] for d in done),
           "local": mean(d["local_accuracy"] for d in done),
           "standalone": (mean(d["standalone_accuracy"] for d in done)
                          if "standalone_accuracy" in done[0] else None),
           "bytes_up": mean(d["bytes_up"] for d in done), "bytes_down": mean(d["bytes_down"] for d in done),
           "dimension": done[0]["dimension"], "privacy": done[0].get("privacy")}
    server = next((rec for rec in session["parties"].values() if rec.get("role") == "server"), {})
    out["dropped"] = (server.get("result") or {}).get("dropped", {})
    return out


def dssgd_report(run_dir: Path, session: dict, centralized: float | None = None) -> dict | None:
    """The final table (DSSGD beside standalone and centralized), privacy, and the plot."""
    s = dssgd_summary(session)
    if s is None:
        console.print("[red]no participant finished; no DSSGD results[/]")
        return None
    cfg = s["config"]
    table = Table(title=f"DSSGD: {cfg['dataset']}, {cfg['split']}, {s['participants']} participants, "
                        f"order {cfg['order']}, theta_u {cfg['theta_u']:g}, theta_d {cfg['theta_d']:g}, "
                        f"{cfg['selection'] if not cfg['dp_epsilon'] else 'SVT (DP)'}, "
                        f"{len(s['curve'])} rounds; test accuracy, mean over participants")
    for col in ("training", "accuracy", "bytes up / participant", "bytes down / participant", "epsilon"):
        table.add_column(col, justify="right")
    p = s["privacy"]
    eps = (f"{p['per_round']:g}/round; run: {min(p['basic'], p['zcdp']):.4g}" if p else "none (no DP)")
    table.add_row("DSSGD, global model", f"{s['global']:.4f}", f"{s['bytes_up']:,.0f}",
                  f"{s['bytes_down']:,.0f}", eps)
    table.add_row("DSSGD, local model after last round", f"{s['local']:.4f}", "", "", "")
    if s["standalone"] is not None:
        table.add_row("standalone (each alone)", f"{s['standalone']:.4f}", "0", "0", "none")
    if centralized is not None:
        table.add_row("centralized (data pooled)", f"{centralized:.4f}", "all data", "", "none")
    console.print(table)
    console.print(f"a float32 model is {4 * s['dimension']:,} B; an upload carries "
                  "4 B of index and 8 B of value per parameter")
    if p:
        console.print(
            f"privacy, per participant: epsilon {p['per_round']:g} per round is the paper's figure "
            f"(per parameter: {p['per_parameter']:.3g}); over {p['rounds_charged']} charged rounds the "
            f"data costs epsilon {p['basic']:.4g} by basic composition, {p['zcdp']:.4g} through zCDP "
            f"(delta {p['delta']:g}); the ledger's accountant says {p['ledger_epsilon']:.4g}"
            + (f"; {p['rounds_refused']} rounds uploaded nothing (budget {p['budget']:g} spent)"
               if p["rounds_refused"] else ""))
    if s["dropped"]:
        console.print(f"dropped: {s['dropped']}")
    s["centralized"] = centralized
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = range(1, len(s["curve"]) + 1)
    ax.plot(xs, s["curve"], marker="o", ms=3, label=f"DSSGD local models (global {s['global']:.3f})")
    if s["standalone"] is not None:
        ax.axhline(s["standalone"], color="grey", ls="--", label=f"standalone ({s['standalone']:.3f})")
    if centralized is not None:
        ax.axhline(centralized, color="green", ls=":", label=f"centralized ({centralized:.3f})")
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1),
           title=f"DSSGD {cfg['dataset']} {cfg['split']}, theta_u {cfg['theta_u']:g}, {cfg['order']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run_dir / "dssgd.png", dpi=110)
    plt.close(fig)
    console.print(f"plot: {run_dir / 'dssgd.png'}")
    return s


def _fedavg_curve(session: dict) -> dict | None:
    """One session's rounds: the server's (who was in each sum, stage seconds) beside a
    finished client's accuracy (every client holds the same model), and client means."""
    from statistics import mean

    recs = session["parties"]
    server = (recs.get("server") or {}).get("result")
    done = [rec["result"] for rec in recs.values()
            if rec.get("ok") and (rec.get("result") or {}).get("role") == "client"]
    if server is None or not done:
        return None
    client_stages = [r.get("stages", {}) for d in done for r in d["rounds"]]
    return {"accuracy": [r["accuracy"] for r in done[0]["rounds"]], "server": server["rounds"],
            "train_seconds": mean(r["train_seconds"] for d in done for r in d["rounds"]),
            "client_stages": {k: mean(s[k] for s in client_stages) for k in client_stages[0]},
            "bytes_per_round": mean(recs[d_name]["transport"]["sent_bytes"] / len(recs[d_name]["result"]["rounds"])
                                    for d_name, rec in recs.items() if rec.get("ok")
                                    and rec["result"].get("role") == "client"),
            "model_bytes": server["bytes_model"], "config": done[0]["config"], "dp": server.get("dp"),
            "ledger_epsilon": max((d.get("ledger_epsilon") or 0.0) for d in done) or None}


def fedavg_report(run_dir: Path, sessions: dict[str, dict]) -> dict | None:
    """SecAgg+ beside plain FedAvg: accuracy per round, who dropped, bytes, seconds per stage;
    and the plot."""
    from statistics import mean

    curves = {kind: _fedavg_curve(s) for kind, s in sessions.items()}
    for kind, c in curves.items():
        if c is None:
            console.print(f"[red]{kind}: the server or every client failed; no results[/]")
    curves = {k: c for k, c in curves.items() if c is not None}
    if not curves:
        return None
    names = {"secagg": "SecAgg+", "plain": "plain FedAvg"}
    cfg = next(iter(curves.values()))["config"]
    synthetic = bool(cfg.get("synthetic_dim"))
    quality = "max error vs the plain mean" if synthetic else "accuracy"
    table = Table(title=(f"fedavg: light clients, synthetic updates of dimension {cfg['synthetic_dim']:,}"
                         if synthetic else f"fedavg: {cfg['dataset']}, {cfg['split']}, test accuracy "
                         "per round (common held-out set)"))
    table.add_column("round", justify="right")
    for k in curves:
        table.add_column(f"{names[k]} {quality}", justify="right")
        table.add_column(f"{names[k]} clients in sum", justify="right")
    for k in curves:
        table.add_column(f"{names[k]} dropped", justify="left")
    for i in range(max(len(c["server"]) for c in curves.values())):
        row = [str(i + 1)]
        for c in curves.values():
            ok = i < len(c["accuracy"])
            shown = (f"{c['server'][i]['max_error']:.2e}" if synthetic else f"{c['accuracy'][i]:.4f}")
            row += [shown if ok else "", str(c["server"][i]["clients"]) if ok else ""]
        row += [", ".join(c["server"][i]["dropped"]) if i < len(c["server"]) else "" for c in curves.values()]
        table.add_row(*row)
    console.print(table)
    stage_table = Table(title="seconds per round and stage (means over rounds; clients: mean over clients)")
    for col in ("run", "party", "stage", "seconds"):
        stage_table.add_column(col, justify="left" if col != "seconds" else "right")
    for k, c in curves.items():
        stage_table.add_row(names[k], "client", "local training", f"{c['train_seconds']:.4f}")
        for stage, sec in c["client_stages"].items():
            stage_table.add_row(names[k], "client", stage.replace("_", " "), f"{sec:.4f}")
        rounds = c["server"]
        for stage in (rounds[0].get("stages") or {}):
            stage_table.add_row(names[k], "server", stage.replace("_", " "),
                                f"{mean(r['stages'][stage] for r in rounds if stage in r['stages']):.4f}")
        stage_table.add_row(names[k], "server", "whole round", f"{mean(r['seconds'] for r in rounds):.4f}")
    console.print(stage_table)
    for k, c in curves.items():
        console.print(f"{names[k]}: " + ("" if synthetic else f"final accuracy {c['accuracy'][-1]:.4f}; ")
                      + f"each client sent "
                      f"{c['bytes_per_round']:,.0f} B per round (all messages, envelopes included; "
                      f"the float64 model the server returns is {c['model_bytes']:,} B)")
    for k, c in curves.items():
        if c["dp"]:
            dp = c["dp"]
            console.print(f"{names[k]}: {dp['mechanism']} DP for one client's whole update (clipped to L2 "
                          f"{dp['l2_clip']:g}): target epsilon {dp['target_epsilon']:g}, released sums "
                          f"cost epsilon {dp['epsilon']:.4g} (delta {dp['delta']:g})"
                          + (f"; each client's ledger: {c['ledger_epsilon']:.4g}" if c["ledger_epsilon"] else ""))
    if synthetic:
        step = curves[next(iter(curves))]["server"][0].get("quantization_step")
        console.print(f"quantization step: {step:.2e} (SecAgg+'s error must stay below it)" if step else "")
        return {k: {"max_error": [r.get("max_error") for r in c["server"]]} for k, c in curves.items()}
    if len(curves) == 2:
        gap = max(abs(a - b) for a, b in zip(curves["secagg"]["accuracy"], curves["plain"]["accuracy"], strict=False))
        why = ("each run draws its own DP noise" if cfg.get("dp_epsilon") else
               f"quantization: {cfg['bits']} bits over +-{cfg['clip']:g}")
        console.print(f"largest per-round accuracy gap SecAgg+ - plain: {gap:.4f} ({why})")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    style = {"plain": {"lw": 4, "alpha": 0.45}, "secagg": {"ls": "--", "marker": "o", "ms": 3}}
    for k in sorted(curves, reverse=True):   # the baseline underneath
        acc = curves[k]["accuracy"]
        ax.plot(range(1, len(acc) + 1), acc, **style[k], label=f"{names[k]} (final {acc[-1]:.3f})")
    ax.set(xlabel="round", ylabel="test accuracy", title=f"FedAvg {cfg['dataset']} {cfg['split']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run_dir / "fedavg.png", dpi=110)
    plt.close(fig)
    console.print(f"plot: {run_dir / 'fedavg.png'}")
    return {k: {"accuracy": c["accuracy"], "bytes_per_round": c["bytes_per_round"]} for k, c in curves.items()}
