"""Distributed selective SGD (Shokri and Shmatikov, CCS 2015).

Roles: N ``participant`` parties and one ``server`` (the parameter server). All agree
on the architecture (public, initialised from ``seed``). Each participant, each round:

1. asks for the global parameters (``pull``); the server sends a fraction theta_d of
   them (``params``: those it updated most often, most recently, or at random), and
   the participant overwrites its local copies;
2. trains on its own data and takes the change of every parameter;
3. uploads (``push``) at most theta_u of the changes: the largest in magnitude, or a
   random subset of those >= tau; clipped to [-gamma, gamma]. With ``dp_epsilon`` the
   sparse vector technique chooses and perturbs them instead (:mod:`privacy.svt`),
   charged first to the participant's own budget ledger; a round the budget refuses
   uploads nothing;
4. the server adds the uploaded changes to the global parameters and counts them.

Orders: ``round-robin`` (participants one after another, same order each round),
``random`` (a fresh public order each round), ``async`` (nobody waits for anybody;
the server applies uploads as they come). A participant that dies or breaks the
public limits is dropped and named; the others go on. After the last round each
participant downloads the whole global model once and evaluates it. A participant
also trains alone on its own data for the same epochs (the standalone baseline).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from learning import dssgd
from learning.datasets import SPLITS, TABLES
from learning.model_files import model_files
from learning.models import public_mlp
from learning.training import evaluate, get_flat, round_seed, set_flat, train
from mpc import randomness, wire
from mpc.channel import ChannelError
from privacy import svt

from . import study_data
from .context import RoleContext, RoleResult
from .errors import ParameterError, PeerMisbehaved, ProtocolError
from .params import Params

NAME = "dssgd"
RULES = {
    ("participant", "server", "pull"),
    ("server", "participant", "params"),
    ("participant", "server", "push"),
}
ORDERS = ("round-robin", "random", "async")


@dataclass(frozen=True)
class DssgdParams(Params):
    """The public settings; every party runs with the same ones."""

    PROTOCOL = NAME
    dataset: str = "digits"
    split: str = "iid"
    alpha: float = 0.5          # Dirichlet concentration of the non-IID split
    data_seed: int = 0
    data: dict | None = None    # the study's data spec: each participant trains on its own file
    seed: int = 0               # model initialisation, shuffling, random order
    model: str = "mlp"
    hidden: int = 32
    rounds: int = 30
    epochs: int = 1             # local epochs per round
    lr: float = 0.1
    batch: int = 32
    theta_u: float = 0.1        # fraction of parameters uploaded
    theta_d: float = 1.0        # fraction of parameters downloaded
    order: str = "round-robin"
    selection: str = "largest"  # or "threshold"
    download: str = "counts"    # or "recent", "random"
    tau: float = 1e-4
    gamma: float | None = 0.1   # clip bound of uploaded values; None: no clipping
    dp_epsilon: float | None = None   # per participant and round (the paper's epsilon)
    epsilon_budget: float = 10.0      # each participant's ledger (with dp_epsilon)
    delta: float = 1e-5
    baselines: bool = True      # participants also train alone (standalone baseline)
    timeout: float = 300.0

    def check(self) -> list[str]:
        checks = [
            (self.dataset in TABLES, f"dataset must be one of {TABLES}"),
            (self.split in SPLITS, f"split must be one of {SPLITS}"),
            (self.model in ("mlp", "logreg"), "model must be 'mlp' or 'logreg'"),
            (self.order in ORDERS, f"order must be one of {ORDERS}"),
            (self.selection in dssgd.UPLOADS, f"selection must be one of {dssgd.UPLOADS}"),
            (self.download in dssgd.DOWNLOADS, f"download must be one of {dssgd.DOWNLOADS}"),
            (min(self.rounds, self.epochs, self.batch, self.hidden) >= 1,
             "rounds, epochs, batch and hidden must be >= 1"),
            (0 < self.theta_u <= 1 and 0 < self.theta_d <= 1, "theta_u and theta_d must be in (0, 1]"),
            (min(self.lr, self.alpha, self.timeout, self.epsilon_budget) > 0,
             "lr, alpha, timeout and epsilon_budget must be > 0"),
            (self.tau >= 0, "tau must be >= 0"),
            (self.gamma is None or self.gamma > 0, "gamma must be > 0 (or null for no clipping)"),
            (self.gamma is None or self.gamma >= self.tau,
             "gamma must be >= tau, or no clipped value could reach the threshold"),
            (self.dp_epsilon is None or self.dp_epsilon > 0, "dp_epsilon must be > 0"),
            (self.dp_epsilon is None or self.gamma is not None,
             "dp_epsilon needs gamma: the clip bound is what bounds the sensitivity"),
            (0 < self.delta < 1, "delta must be in (0, 1)"),
        ]
        return [msg for ok, msg in checks if not ok] + study_data.spec_problems(self.data)


Params = DssgdParams
# Only a private run charges anything: the ledger is opened for it alone.
RESOURCES = {"participant": lambda p: (("budget",) if p.dp_epsilon else ())
              + study_data.needs_data(p.data)}


def initial_model(cfg: DssgdParams, features: int, classes: int):
    return public_mlp(cfg.model, features, classes, cfg.hidden, cfg.seed)


def _wire_upload(r: int, index: np.ndarray, values: np.ndarray) -> dict:
    return {"round": r, "index": index.astype(np.uint32), "value": values.astype(np.float64)}


# --------------------------------------------------------------------------- participant

async def participant(ctx: RoleContext) -> RoleResult:
    cfg = DssgdParams.from_dict(ctx.params)
    names = ctx.with_role("participant")
    server = ctx.one_with_role("server")
    index = names.index(ctx.me)
    chatty = index == 0
    budget = ctx.resources.budget
    if cfg.dp_epsilon and budget is None:
        raise ParameterError("a private DSSGD run needs the participant's budget ledger "
                             "(Resources.budget)")
    x, y, x_test, y_test, classes = study_data.training_data(ctx, NAME, cfg, len(names), index)
    model = initial_model(cfg, x.shape[1], classes)
    dim = sum(p.numel() for p in model.parameters())
    try:
        count = dssgd.upload_count(dim, cfg.theta_u)
    except dssgd.DssgdError as e:
        raise ParameterError(f"{NAME}: {e}") from None
    rng = randomness.generator()   # the threshold selection's random subset
    ch = ctx.channel
    ctx.progress(f"DSSGD on {cfg.dataset} ({cfg.split}): {len(y)} local samples, {dim} parameters, "
                 f"uploads <= {count} per round, {cfg.rounds} rounds, order {cfg.order}"
                 + (f", epsilon {cfg.dp_epsilon:g} per round" if cfg.dp_epsilon else ""))
    rounds, up_bytes, down_bytes, refused = [], 0, 0, 0

    async def download(r: int) -> None:
        nonlocal down_bytes
        await ch.send(server, f"{NAME}.pull", {"round": r})
        got = await ch.recv(server, f"{NAME}.params", cfg.timeout)
        down_bytes += len(wire.encode(got))
        try:
            values = np.asarray(got["value"])
            idx = np.arange(dim) if got["index"] is None else np.asarray(got["index"], dtype=np.int64)
            if got["round"] != r or idx.shape != values.shape or (idx.size and (
                    idx.min() < 0 or idx.max() >= dim)):
                raise ValueError(f"round {got['round']}, {idx.size} indices, {values.size} values")
        except (KeyError, TypeError, ValueError) as e:
            raise PeerMisbehaved(server, f"sent unusable parameters for round {r}: {e}") from None
        flat = get_flat(model)
        flat[idx] = values.astype(np.float32)
        set_flat(model, flat)

    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        await download(r)
        before = get_flat(model)
        train(model, x, y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch, optimizer="sgd",
              seed=round_seed(cfg.seed, index, r))
        change = get_flat(model).astype(np.float64) - before.astype(np.float64)
        epsilon = None
        if cfg.dp_epsilon:
            decision = budget.request_pure(cfg.dp_epsilon, f"{ch.session}/round {r}", "dssgd-svt")
            if decision.granted:
                idx, values = svt.svt_upload(change, count, cfg.tau, cfg.gamma, cfg.dp_epsilon)
                epsilon = decision.epsilon_if_granted
            else:   # out of budget: nothing derived from the data goes up any more
                refused += 1
                idx, values = np.zeros(0, np.int64), np.zeros(0)
        elif cfg.selection == "largest":
            idx = dssgd.select_largest(change, count)
            values = dssgd.clip(change[idx], cfg.gamma)
        else:
            idx = dssgd.select_threshold(change, count, cfg.tau, rng)
            values = dssgd.clip(change[idx], cfg.gamma)
        payload = _wire_upload(r, idx, values)
        up_bytes += len(wire.encode(payload))
        await ch.send(server, f"{NAME}.push", payload)
        acc, loss = evaluate(model, x_test, y_test)
        rounds.append({"round": r + 1, "accuracy": round(acc, 4), "loss": round(loss, 4),
                       "uploaded": int(idx.size), "epsilon": epsilon,
                       "seconds": round(time.perf_counter() - t0, 4)})
        ctx.partial["rounds"] = rounds
        if chatty:
            ctx.progress(f"round {r + 1}/{cfg.rounds}: local test accuracy {acc:.3f}, "
                         f"uploaded {idx.size} of {dim}")

    await download(cfg.rounds)   # the final global model, in full
    global_acc, _ = evaluate(model, x_test, y_test)
    public = {"role": "participant", "samples": len(y), "dimension": dim, "max_upload": count,
              "local_accuracy": rounds[-1]["accuracy"], "global_accuracy": round(global_acc, 4),
              "bytes_up": up_bytes, "bytes_down": down_bytes, "rounds": rounds,
              "config": cfg.to_dict()}
    if cfg.dp_epsilon:
        charged = cfg.rounds - refused
        public["privacy"] = {**svt.run_epsilon(cfg.dp_epsilon, charged, cfg.delta),
                             "per_parameter": cfg.dp_epsilon / count, "rounds_charged": charged,
                             "rounds_refused": refused, "ledger_epsilon": budget.epsilon_spent(),
                             "budget": budget.epsilon_budget}
    if cfg.baselines:
        alone = initial_model(cfg, x.shape[1], classes)
        for r in range(cfg.rounds):
            train(alone, x, y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch, optimizer="sgd",
                  seed=round_seed(cfg.seed, index, r))
        public["standalone_accuracy"] = round(evaluate(alone, x_test, y_test)[0], 4)
    ctx.progress(f"done: global model {global_acc:.3f}"
                 + (f", alone {public['standalone_accuracy']:.3f}" if cfg.baselines else ""))
    return RoleResult(public, private={"dssgd_model": get_flat(model)},
                      outputs=model_files(model, x.shape[1], "dssgd_model"))


# --------------------------------------------------------------------------- server

async def server(ctx: RoleContext) -> RoleResult:
    cfg = DssgdParams.from_dict(ctx.params)
    names = ctx.with_role("participant")
    features, classes = study_data.shape(NAME, cfg.dataset, cfg.data, cfg.data_seed)
    init = get_flat(initial_model(cfg, features, classes))
    ps = dssgd.ParameterServer(init, dssgd.upload_count(init.size, cfg.theta_u), cfg.gamma)
    rng = randomness.generator()   # the random download selection
    ch = ctx.channel
    dropped: dict[str, str] = {}
    traffic = {n: {"bytes_in": 0, "bytes_out": 0, "uploads": 0, "values": 0} for n in names}
    done_rounds = dict.fromkeys(names, 0)
    t_start = time.perf_counter()

    async def serve(name: str, r: int) -> None:
        """One participant's round r: its pull, our parameters, its push applied."""
        pull = await ch.recv(name, f"{NAME}.pull", cfg.timeout)
        if not isinstance(pull, dict) or pull.get("round") != r:
            raise PeerMisbehaved(name, f"asked for round {pull.get('round') if isinstance(pull, dict) else pull!r}, "
                                 f"expected {r}")
        final = r == cfg.rounds
        idx = (np.arange(ps.params.size) if final
               else dssgd.select_download(ps.counts, ps.last, cfg.theta_d, cfg.download, rng))
        everything = idx.size == ps.params.size   # no index list for a full download
        reply = {"round": r, "index": None if everything else idx.astype(np.uint32),
                 "value": ps.params[idx]}
        traffic[name]["bytes_out"] += len(wire.encode(reply))
        await ch.send(name, f"{NAME}.params", reply)
        if final:
            return
        push = await ch.recv(name, f"{NAME}.push", cfg.timeout)
        traffic[name]["bytes_in"] += len(wire.encode(push))
        try:
            if push["round"] != r:
                raise dssgd.DssgdError(f"pushed round {push['round']}, expected {r}")
            ps.apply(np.asarray(push["index"], dtype=np.int64), np.asarray(push["value"], np.float64))
        except (KeyError, TypeError, ValueError) as e:
            raise PeerMisbehaved(name, f"round {r}: its upload breaks the public limits: {e}") from None
        traffic[name]["uploads"] += 1
        traffic[name]["values"] += int(np.asarray(push["index"]).size)
        done_rounds[name] = r + 1

    async def attempt(name: str, r: int) -> bool:
        """Serve, or drop the participant (named, with why) when it died or misbehaved."""
        if name in dropped:
            return False
        try:
            await serve(name, r)
            return True
        except (ChannelError, PeerMisbehaved) as e:
            dropped[name] = f"round {r + 1}: {e}"
            ctx.progress(f"dropped '{name}' ({e}); going on with {len(names) - len(dropped)}")
            return False

    reported = 0

    def report() -> None:
        """A progress line for each round every remaining participant has finished."""
        nonlocal reported
        alive = [done_rounds[n] for n in names if n not in dropped]
        while alive and reported < min(min(alive), cfg.rounds):
            reported += 1
            ctx.progress(f"round {reported}/{cfg.rounds}: {int((ps.counts > 0).sum())} of "
                         f"{ps.params.size} parameters updated so far, {ps.step} uploads applied")

    if cfg.order == "async":   # nobody waits for anybody: one task per participant
        async def run_one(name: str) -> None:
            for r in range(cfg.rounds + 1):
                if not await attempt(name, r):
                    return
                report()
        await asyncio.gather(*(run_one(n) for n in names))
    else:
        for r in range(cfg.rounds + 1):
            order = list(names)
            if cfg.order == "random":   # a public order: reproducible from the seed
                order = [names[i] for i in np.random.default_rng([cfg.seed, r]).permutation(len(names))]
            for name in order:
                await attempt(name, r)
            report()
    alive = [n for n in names if n not in dropped]
    if not alive:
        raise ProtocolError(f"every participant was dropped: {dropped}")
    return RoleResult(
        {"role": "server", "order": cfg.order, "participants": len(names), "dropped": dropped,
         "uploads_applied": ps.step, "parameters": int(ps.params.size),
         "parameters_ever_updated": int((ps.counts > 0).sum()), "traffic": traffic,
         "seconds": round(time.perf_counter() - t_start, 3)},
        private={"dssgd_global": ps.params, "dssgd_counts": ps.counts})


ROLES = {"participant": participant, "server": server}
