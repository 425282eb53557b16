"""Federated averaging, with secure aggregation (``secagg``: SecAgg+, Bonawitz et al. 2017
over the sparse graph of Bell et al. 2020) or in the clear, weighted by sample counts.

Roles: N ``client`` parties and one ``server``. Every client trains the current global
model on its own data each round and takes the change; the server learns only the
weighted mean of the changes, and sends the new global model back (``model``).

A secure round (the maths in :mod:`mpc.secagg`):

1. ``shares``: every client makes a fresh X25519 mask key pair and a fresh self-mask seed
   b, and Shamir-shares (t of k) both among its neighbours (a public random graph of degree
   k, the same for everyone). Messages go client to client through the broker, signed and
   encrypted end to end by the envelope, so the server can neither swap a key nor read a
   share.
2. ``keys``: then it sends its public key to its neighbours and to the server. Shares go
   first so that a neighbour that masks toward it (it has its key) knows every neighbour
   was sent a share: a crash at any point leaves its masks removable.
3. ``masked``: it sends the server y = x + PRG(b) + sum of +-PRG(s_uv) mod 2^k over the
   neighbours whose key and shares it received (listed with y), x its quantized weighted
   update.
4. ``survivors``: the server names the clients whose y arrived. ``confirm``: every client
   sends a digest of that list to every client of the round and goes on only when a
   quorum (more than (n + corrupt)/2 of the round's clients) confirmed the same list, and
   no client is listed as both surviving and dropped; otherwise it aborts.
5. ``unmask``: each client releases, for each neighbour, the share of b if the neighbour
   survived, the share of its mask key if it dropped, never both (it refuses a second
   kind for the same neighbour). The server rebuilds the seeds from t shares each and
   removes the masks: the exact sum of the survivors' x.

Clients that drop at any stage are left out as long as every needed seed still has t
shares; otherwise the round fails with :class:`AggregationFailed` naming who is missing,
and nobody gets a partial result.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np

from learning.datasets import SPLITS, TABLES
from learning.model_files import model_files
from learning.models import public_mlp
from learning.training import evaluate, get_flat, round_seed, set_flat, train
from mpc import randomness, secagg, shamir, wire
from mpc.channel import ChannelError
from privacy import gaussian, skellam

from . import study_data
from .context import RoleContext, RoleResult
from .errors import ParameterError, PeerMisbehaved, ProtocolError
from .params import Params

NAME = "fedavg"
RULES = {
    ("client", "client", "keys"),
    ("client", "server", "keys"),
    ("client", "client", "shares"),
    ("client", "server", "masked"),
    ("server", "client", "survivors"),
    ("client", "client", "confirm"),
    ("client", "server", "unmask"),
    ("client", "server", "update"),      # plain FedAvg: the weighted update in the clear
    ("server", "client", "model"),
}


class AggregationFailed(ProtocolError):
    """Too few clients left to unmask the sum; no partial result is released."""


@dataclass(frozen=True)
class FedAvgParams(Params):
    PROTOCOL = NAME
    secagg: bool = True
    dataset: str = "digits"
    split: str = "iid"
    alpha: float = 0.5
    data_seed: int = 0
    seed: int = 0
    model: str = "mlp"
    hidden: int = 32
    rounds: int = 20
    epochs: int = 1
    lr: float = 0.1
    batch: int = 32
    clip: float = 0.5            # update coordinates clipped to [-clip, clip] before quantizing
    bits: int = 16               # quantization bits per coordinate
    max_weight: int = 10_000     # the largest sample count a client may weight its update by
    dropout: float = 0.1         # tolerated dropout fraction (chooses the graph and threshold)
    corrupt: float = 0.1         # tolerated fraction of corrupt clients colluding with the server
    timeout: float = 120.0
    # distributed DP (secagg) or central DP (plain: a trusted server adds Gaussian noise)
    dp_epsilon: float | None = None   # over the whole run, for one client's whole update
    delta: float = 1e-5
    l2_clip: float = 1.0              # with dp_epsilon: each update clipped to this L2 norm
    epsilon_budget: float = 10.0      # each client's ledger (secagg with dp_epsilon)
    synthetic_dim: int = 0            # > 0: light clients with public synthetic updates (scale runs)
    data: dict | None = None          # the study's data spec: each client trains on its own file

    def check(self) -> list[str]:
        checks = [
            (self.dataset in TABLES, f"dataset must be one of {TABLES}"),
            (self.split in SPLITS, f"split must be one of {SPLITS}"),
            (self.model in ("mlp", "logreg"), "model must be 'mlp' or 'logreg'"),
            (min(self.rounds, self.epochs, self.batch, self.hidden, self.max_weight) >= 1,
             "rounds, epochs, batch, hidden and max_weight must be >= 1"),
            (1 <= self.bits <= 32, "bits must be in 1..32"),
            (min(self.lr, self.clip, self.alpha, self.timeout) > 0, "lr, clip, alpha, timeout must be > 0"),
            (0 <= self.dropout < 0.5 and 0 <= self.corrupt < 0.5,
             "dropout and corrupt must be fractions in [0, 0.5)"),
            (self.dp_epsilon is None or self.dp_epsilon > 0, "dp_epsilon must be > 0 (or null: no DP)"),
            (0 < self.delta < 1 and self.l2_clip > 0, "delta must be in (0, 1) and l2_clip > 0"),
            (self.synthetic_dim >= 0, "synthetic_dim must be >= 0 (0: train on data)"),
            (not self.dp_epsilon or not self.secagg or self.dp_epsilon <= self.epsilon_budget,
             f"a run of epsilon {self.dp_epsilon} exceeds each client's budget "
             f"{self.epsilon_budget}: raise epsilon_budget deliberately"),
        ]
        return [msg for ok, msg in checks if not ok] + study_data.spec_problems(self.data)


Params = FedAvgParams
# a private secure run charges each client's own ledger, round by round
RESOURCES = {"client": lambda p: (("budget",) if p.dp_epsilon and p.secagg else ())
              + study_data.needs_data(p.data)}


@dataclass(frozen=True)
class RoundSetup:
    """What every party derives alike for a round: the graph, threshold, modulus, quorum."""

    clients: list[str]
    graph: dict[str, list[str]]
    threshold: int
    k: int
    quorum: int
    context: bytes
    how: str
    dim: int                                     # model parameters
    dp: skellam.SkellamEncoding | None = None   # distributed DP: the clients' encoding

    @property
    def needed(self) -> int:
        """Fewest masked inputs a sum may be released from: the consistency quorum, and
        with DP the survivors whose noise adds up to the calibrated mu."""
        return max(self.quorum, self.dp.min_survivors if self.dp else 0)

    @property
    def length(self) -> int:
        """Elements per masked input: the update, plus its weight when not private."""
        return self.dim if self.dp else self.dim + 1


def dp_encoding(cfg: FedAvgParams, clients: int, dim: int) -> skellam.SkellamEncoding:
    """The public Skellam encoding of a round with ``clients``: scale so rounding inflates
    the norm bound by at most 1/64, noise calibrated to the run's target, and split
    over the clients that must survive when the tolerated fraction drops."""
    base = skellam.SkellamEncoding(cfg.l2_clip, 64 * math.sqrt(dim) / cfg.l2_clip, dim, 1.0,
                                   clients - int(cfg.dropout * clients))
    mu = _calibrated_mu(cfg.dp_epsilon, cfg.rounds, base.l1, base.l2, cfg.delta)
    return dataclasses.replace(base, mu=mu)


@functools.lru_cache(maxsize=64)
def _calibrated_mu(eps: float, rounds: int, l1: float, l2: float, delta: float) -> float:
    return skellam.calibrate(eps, rounds, l1, l2, delta)


def round_setup(cfg: FedAvgParams, clients: list[str], session: str, rnd: int, dim: int) -> RoundSetup:
    context = f"{session}/{rnd}".encode()
    dp = dp_encoding(cfg, len(clients), dim) if cfg.dp_epsilon else None
    try:
        choice = secagg.choose_graph(len(clients), cfg.dropout, cfg.corrupt)
        k = dp.modulus_bits(len(clients)) if dp else quantizer(cfg).modulus_bits(len(clients))
    except (secagg.SecAggError, skellam.SkellamError) as e:
        raise ParameterError(f"{NAME}: {e}") from None
    graph = secagg.neighbours(clients, choice.degree, hashlib.sha256(b"graph|" + context).digest())
    return RoundSetup(clients, graph, choice.threshold, k,
                      secagg.consistency_quorum(len(clients), cfg.corrupt), context, choice.how, dim, dp)


def quantizer(cfg: FedAvgParams) -> secagg.Quantizer:
    return secagg.Quantizer(cfg.clip, cfg.bits, cfg.max_weight)


def survivors_digest(context: bytes, survivors: list[str], dropped: list[str]) -> str:
    body = b"|".join([context, ",".join(survivors).encode(), ",".join(dropped).encode()])
    return hashlib.sha256(b"confidant/secagg/survivors/v1|" + body).hexdigest()


def initial_model(cfg: FedAvgParams, features: int, classes: int):
    return public_mlp(cfg.model, features, classes, cfg.hidden, cfg.seed)


class _Stages:
    """Seconds spent per stage of a round, for the per-stage timing table."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._t, 4)
        self._t = now


# --------------------------------------------------------------------------- client

async def _secure_round(ctx: RoleContext, cfg: FedAvgParams, setup: RoundSetup, server: str,
                        x: np.ndarray) -> dict:
    """Steps 1-5 of one secure round for this client; returns what it saw."""
    ch, me = ctx.channel, ctx.me
    clock = _Stages()
    mine = setup.graph[me]
    t = setup.threshold
    key = secagg.new_key()
    pk = secagg.public_bytes(key)
    # 1. shares of b and of the mask key, one per neighbour (index = position in my list),
    # all of them before any key: a neighbour masks toward me only once it has my key, so
    # whenever anyone masks toward me, every neighbour was sent a share and a crash of mine
    # at any point stays recoverable (t of k). Keys first would let a crash mid-shares leave
    # a mask toward me that fewer than t shares can remove.
    b = randomness.token_bytes(secagg.SEED_BYTES)
    b_shares = shamir.share_key(b, len(mine), t)
    s_shares = shamir.share_key(secagg.private_bytes(key), len(mine), t)
    for i, v in enumerate(mine):
        await ch.send(v, f"{NAME}.shares", {"context": setup.context, "b": b_shares[i].to_dict(),
                                             "s": s_shares[i].to_dict()})
    # 2. keys to the neighbours and the server
    for v in mine:
        await ch.send(v, f"{NAME}.keys", {"context": setup.context, "pk": pk})
    await ch.send(server, f"{NAME}.keys", {"context": setup.context, "pk": pk})
    keys, held = {}, {}        # neighbour -> its public key, the shares it gave me
    for v in mine:
        try:
            held[v] = await ch.recv(v, f"{NAME}.shares", cfg.timeout)
            got = await ch.recv(v, f"{NAME}.keys", cfg.timeout)
        except ChannelError:
            continue           # it dropped before masking: no mask toward it (its shares are
                               # kept: others may have its key and mask toward it)
        if got.get("context") != setup.context or held[v].get("context") != setup.context:
            raise PeerMisbehaved(v, "sent keys or shares of another round")
        keys[v] = bytes(got["pk"])
    clock.lap("keys_shares")
    # 3. the masked input
    pairs = {v: (secagg.pair_seed(key, keys[v], setup.context, me, v), secagg.pair_sign(me, v))
             for v in keys}
    y = secagg.masked_input(x, setup.k, b, pairs)
    clock.lap("masking")
    await ch.send(server, f"{NAME}.masked", {"context": setup.context, "y": secagg.pack(y, setup.k),
                                             "masked_with": sorted(keys)})
    # 4. the survivor list, confirmed by a quorum of the round's clients
    listed = await ch.recv(server, f"{NAME}.survivors", cfg.timeout)
    clock.lap("waiting_for_survivors")
    if "error" in listed:
        raise AggregationFailed(f"the server could not aggregate: {listed['error']}")
    survivors, dropped = list(listed["survivors"]), list(listed["dropped"])
    if set(survivors) & set(dropped):
        raise PeerMisbehaved(server, f"listed {sorted(set(survivors) & set(dropped))} as both "
                                     "surviving and dropped")
    if me not in survivors or not set(survivors) | set(dropped) <= set(setup.clients):
        raise PeerMisbehaved(server, "sent a survivor list that leaves me out or names strangers")
    if len(survivors) < setup.needed:   # with DP: too little noise would reach the sum
        raise AggregationFailed(f"only {len(survivors)} survivors; {setup.needed} needed"
                                + (" for the DP noise to add up" if setup.dp else "")
                                + "; refusing to unmask")
    digest = survivors_digest(setup.context, sorted(survivors), sorted(dropped))
    for v in survivors:
        if v != me:
            await ch.send(v, f"{NAME}.confirm", {"digest": digest})
    agreeing = 1
    for v in survivors:
        if v == me:
            continue
        try:
            theirs = await ch.recv(v, f"{NAME}.confirm", cfg.timeout)
        except ChannelError:
            continue           # dropped during the check: its vote is missing, not against
        if theirs.get("digest") != digest:
            raise ProtocolError(f"client '{v}' was given a different survivor list than I was: "
                                "the server is inconsistent; refusing to unmask")
        agreeing += 1
    if agreeing < setup.quorum:
        raise AggregationFailed(f"only {agreeing} of {len(setup.clients)} clients confirmed the "
                                f"survivor list; {setup.quorum} needed")
    clock.lap("consistency")
    # 5. one kind of share per neighbour, never both: the lists are disjoint (checked) and
    # this is the round's only unmask message
    out: dict[str, dict] = {"b": {}, "s": {}}
    for v, shares in held.items():
        if v in survivors:
            out["b"][v] = shares["b"]
        elif v in dropped:
            out["s"][v] = shares["s"]
    await ch.send(server, f"{NAME}.unmask", {"context": setup.context, **out})
    clock.lap("unmask_shares")
    return {"neighbours": len(mine), "masked_with": len(keys), "survivors": len(survivors),
            "stages": clock.laps}


class _Trainer:
    """A client's model and data: trains a round, applies the aggregate, evaluates."""

    def __init__(self, ctx: RoleContext, cfg: FedAvgParams, clients: list[str], index: int, me: str):
        self.x, self.y, self.x_test, self.y_test, classes = study_data.training_data(
            ctx, NAME, cfg, len(clients), index)
        if len(self.y) > cfg.max_weight:
            raise ParameterError(f"{NAME}: client '{me}' has {len(self.y)} samples, more than "
                                 f"max_weight {cfg.max_weight}; raise max_weight")
        self.cfg, self.index, self.samples = cfg, index, len(self.y)
        self.model = initial_model(cfg, self.x.shape[1], classes)

    def round_update(self, r: int) -> np.ndarray:
        self.w0 = get_flat(self.model).astype(np.float64)
        train(self.model, self.x, self.y, epochs=self.cfg.epochs, lr=self.cfg.lr,
              batch_size=self.cfg.batch, optimizer="sgd", seed=round_seed(self.cfg.seed, self.index, r))
        return get_flat(self.model).astype(np.float64) - self.w0

    def apply(self, mean: np.ndarray) -> dict:
        set_flat(self.model, (self.w0 + mean).astype(np.float32))
        acc, loss = evaluate(self.model, self.x_test, self.y_test)
        return {"accuracy": round(acc, 4), "loss": round(loss, 4)}

    def final(self) -> dict:
        return {"fedavg_model": get_flat(self.model)}

    def outputs(self) -> dict[str, bytes]:
        return model_files(self.model, self.x.shape[1], "fedavg_model")


class _SyntheticClient:
    """A light client for scale runs: no data and no training; its update in round r is a
    public pseudo-random vector (seeded by its index and r), so the server can check the
    aggregate against the plain mean (``synthetic_update``)."""

    def __init__(self, cfg: FedAvgParams, index: int):
        self.cfg, self.index, self.samples = cfg, index, 1

    def round_update(self, r: int) -> np.ndarray:
        return synthetic_update(self.cfg, self.index, r)

    def apply(self, mean: np.ndarray) -> dict:
        return {"accuracy": None}

    def final(self) -> dict:
        return {}

    def outputs(self) -> dict[str, bytes]:
        return {}


def synthetic_update(cfg: FedAvgParams, index: int, r: int) -> np.ndarray:
    """Public test data, not a secret: numpy's seeded generator is right here."""
    return np.random.default_rng([cfg.seed, index, r]).uniform(-cfg.clip, cfg.clip, cfg.synthetic_dim)


async def client(ctx: RoleContext) -> RoleResult:
    cfg = FedAvgParams.from_dict(ctx.params)
    clients = ctx.with_role("client")
    server = ctx.one_with_role("server")
    index = clients.index(ctx.me)
    chatty = index == 0
    learner = _SyntheticClient(cfg, index) if cfg.synthetic_dim else _Trainer(ctx, cfg, clients, index, ctx.me)
    q = quantizer(cfg)
    rng = randomness.generator()     # stochastic rounding: OS-seeded
    ch = ctx.channel
    rounds = []
    alive = list(clients)      # the round's clients: all at first, then those in the last sum
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        change = learner.round_update(r)
        train_s = time.perf_counter() - t0
        if cfg.secagg:
            setup = round_setup(cfg, alive, ch.session, r, change.size)
            if setup.dp:
                _charge(ctx, setup.dp, f"{ch.session}/round {r + 1}")
                noise = randomness.skellam(change.size, setup.dp.noise_per_client())
                x_in = setup.dp.encode(change, rng, noise).astype(np.uint64)   # two's complement
                x_in &= secagg.modulus_mask(setup.k)
            else:
                x_in = q.encode(change, learner.samples, rng)
            seen = await _secure_round(ctx, cfg, setup, server, x_in)
        elif cfg.dp_epsilon:      # central DP: clipped, unweighted; the server adds the noise
            norm = float(np.linalg.norm(change))
            clipped = change * min(1.0, cfg.l2_clip / norm) if norm > 0 else change
            await ch.send(server, f"{NAME}.update", {"round": r, "change": clipped, "weight": 1})
            seen = {}
        else:
            await ch.send(server, f"{NAME}.update", {"round": r, "change": change.astype(np.float32),
                                                     "weight": learner.samples})
            seen = {}
        reply = await ch.recv(server, f"{NAME}.model", cfg.timeout)
        if reply.get("round") != r:
            raise PeerMisbehaved(server, f"sent the model of round {reply.get('round')}, expected {r}")
        if "error" in reply:
            raise AggregationFailed(f"round {r + 1}: {reply['error']}")
        alive = list(reply["clients"])
        if ctx.me not in alive:
            raise ProtocolError(f"round {r + 1}: the server left me out of the sum (too slow?)")
        quality = learner.apply(np.asarray(reply["mean"], dtype=np.float64))
        rounds.append({"round": r + 1, **quality, "clients_in_sum": len(alive), **seen,
                       "train_seconds": round(train_s, 4), "seconds": round(time.perf_counter() - t0, 4)})
        ctx.partial["rounds"] = rounds
        if chatty:
            ctx.progress(f"round {r + 1}/{cfg.rounds}: "
                         + (f"test accuracy {quality['accuracy']:.3f} " if quality["accuracy"] is not None
                            else "")
                         + f"({len(alive)} clients in the sum)")
    budget = ctx.resources.budget if cfg.dp_epsilon and cfg.secagg else None
    return RoleResult({"role": "client", "secagg": cfg.secagg, "samples": learner.samples,
                       "final_accuracy": rounds[-1]["accuracy"], "rounds": rounds,
                       "ledger_epsilon": budget.epsilon_spent() if budget else None,
                       "config": cfg.to_dict()},
                      private=learner.final(), outputs=learner.outputs())


def _charge(ctx: RoleContext, dp: skellam.SkellamEncoding, what: str) -> None:
    """Charge this client's ledger for one noisy sum before anything derived from its data
    leaves; a refusal ends its participation, by name."""
    decision = ctx.resources.budget.request_skellam(dp.l1, dp.l2, dp.mu, what)
    if not decision.granted:
        raise ProtocolError(f"client '{ctx.me}': its privacy budget refuses {what} ({decision.reason})")


# --------------------------------------------------------------------------- server

def realized_epsilon(cfg: FedAvgParams, rounds: int, mus: list[float], sigma: float,
                     dp: skellam.SkellamEncoding | None) -> float:
    """The epsilon of the sums released so far: with the Skellam mu that actually reached
    each one (more survivors, more noise), or the central Gaussian's."""
    if not cfg.secagg:
        return gaussian.epsilon(rounds, sigma, cfg.delta)
    return skellam.epsilon_of(mus, dp.l1, dp.l2, cfg.delta)


async def _gather(ctx: RoleContext, names: list[str], kind: str, timeout: float) -> dict[str, dict]:
    """Each named client's message of ``kind`` within ``timeout`` for the whole stage;
    clients that dropped or were too slow are left out."""
    got, deadline = {}, time.monotonic() + timeout
    for name in names:
        try:
            got[name] = await ctx.channel.recv(name, f"{NAME}.{kind}", max(0.01, deadline - time.monotonic()))
        except ChannelError:
            pass
    return got


def _rebuild(shares: list[dict], owner: str, what: str) -> bytes:
    """A 32-byte seed or key from its shares; shares that do not fit fail the round."""
    try:
        got = [shamir.Share.from_dict(d) for d in shares]
        if any(s.kind != "key" for s in got):
            raise shamir.ShamirError("not a share_key sharing")
        secret = shamir.reconstruct(got)
    except shamir.ShamirError as e:
        raise AggregationFailed(f"the shares of {owner}'s {what} do not fit together ({e}): a "
                                "client sent a corrupted share; no partial result") from None
    if len(secret) != secagg.SEED_BYTES:
        raise AggregationFailed(f"{owner}'s {what} rebuilt to {len(secret)} bytes, not 32")
    return secret


async def _aggregate_secure(ctx: RoleContext, cfg: FedAvgParams, setup: RoundSetup, dim: int
                            ) -> tuple[np.ndarray, list[str], dict]:
    """Steps 1-5 on the server's side: the exact sum of the survivors' inputs."""
    clock = _Stages()
    keys = await _gather(ctx, setup.clients, "keys", cfg.timeout)
    masked = await _gather(ctx, list(keys), "masked", cfg.timeout)
    clock.lap("waiting_for_masked")   # includes the clients' local training
    survivors = sorted(masked)
    dropped = sorted(set(setup.clients) - set(survivors))
    if len(survivors) < setup.needed:   # the waiting clients hear it in place of a survivor list
        failure = AggregationFailed(f"only {len(survivors)} of {len(setup.clients)} clients sent "
                                    f"masked inputs ({setup.needed} needed); missing: {dropped}")
        for name in survivors:
            await ctx.channel.send(name, f"{NAME}.survivors", {"error": str(failure)})
        failure.told = survivors
        raise failure
    for name in survivors:
        await ctx.channel.send(name, f"{NAME}.survivors", {"survivors": survivors, "dropped": dropped})
    shares = await _gather(ctx, survivors, "unmask", cfg.timeout)
    clock.lap("waiting_for_shares")
    one_sided = [(u, v) for u in survivors for v in masked[u]["masked_with"]
                 if v in masked and u not in masked[v]["masked_with"]]
    if one_sided:   # u masked toward v but not v toward u: that mask would not cancel
        raise AggregationFailed(f"pairs masked on one side only (a key or share message was lost): "
                                f"{one_sided}")
    total = np.zeros(setup.length, dtype=np.uint64)
    for name in survivors:
        try:
            y = secagg.unpack(bytes(masked[name]["y"]), setup.k, setup.length)
        except (secagg.SecAggError, TypeError) as e:
            raise PeerMisbehaved(name, f"sent a malformed masked input: {e}") from None
        np.add(total, y, out=total)
    np.bitwise_and(total, secagg.modulus_mask(setup.k), out=total)
    self_seeds, dropped_pairs, missing = [], [], []
    for v in survivors:            # its self mask, from the b shares its neighbours released
        got = [s["b"][v] for s in shares.values() if v in s.get("b", {})]
        if len(got) < setup.threshold:
            missing.append(v)
            continue
        self_seeds.append(_rebuild(got[:setup.threshold], v, "self-mask seed"))
    for v in dropped:              # masks survivors added toward it, from its mask key
        toward = [u for u in survivors if v in masked[u]["masked_with"]]
        if not toward:
            continue
        got = [s["s"][v] for s in shares.values() if v in s.get("s", {})]
        if len(got) < setup.threshold:
            missing.append(v)
            continue
        sk = _rebuild(got[:setup.threshold], v, "mask key")
        for u in toward:
            seed = secagg.pair_seed(sk, bytes(keys[u]["pk"]), setup.context, u, v)
            dropped_pairs.append((seed, secagg.pair_sign(u, v)))
    if missing:
        raise AggregationFailed(f"fewer than t = {setup.threshold} shares reached the server for "
                                f"{missing}; clients missing from the unmasking: "
                                f"{sorted(set(survivors) - set(shares))}")
    total = secagg.unmask(total, setup.k, self_seeds, dropped_pairs)
    clock.lap("unmasking")
    return total, survivors, clock.laps


async def server(ctx: RoleContext) -> RoleResult:
    cfg = FedAvgParams.from_dict(ctx.params)
    clients = ctx.with_role("client")
    if cfg.synthetic_dim:
        dim = cfg.synthetic_dim
    else:
        features, classes = study_data.shape(NAME, cfg.dataset, cfg.data, cfg.data_seed)
        dim = get_flat(initial_model(cfg, features, classes)).size
    q = quantizer(cfg)
    alive = list(clients)
    stats = []
    mus: list[float] = []     # the Skellam mu that reached each round's sum
    sigma = gaussian.calibrate(cfg.dp_epsilon, cfg.rounds, cfg.delta) \
        if cfg.dp_epsilon and not cfg.secagg else 0.0
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        if cfg.secagg:
            setup = round_setup(cfg, alive, ctx.channel.session, r, dim)
            if r == 0:
                ctx.progress(f"SecAgg+: {len(alive)} clients, degree {len(setup.graph[alive[0]])}, "
                             f"threshold {setup.threshold}, modulus 2^{setup.k}, quorum {setup.quorum} "
                             f"({setup.how})" + (f"; Skellam mu {setup.dp.mu:.4g} over >= "
                                                 f"{setup.dp.min_survivors} clients (scale "
                                                 f"{setup.dp.scale:.4g})" if setup.dp else ""))
            try:
                total, in_sum, stages = await _aggregate_secure(ctx, cfg, setup, dim)
            except AggregationFailed as e:
                for name in set(alive) - set(getattr(e, "told", ())):
                    try:
                        await ctx.channel.send(name, f"{NAME}.model", {"round": r, "error": str(e)})
                    except ChannelError:
                        pass
                raise
            if setup.dp:
                mean = secagg.to_signed(total, setup.k) / setup.dp.scale / len(in_sum)
                weight = len(in_sum)
                mus.append(setup.dp.noise_per_client() * len(in_sum))
            else:
                mean, weight = q.decode_sum(total)
        else:
            got = await _gather(ctx, alive, "update", cfg.timeout)
            in_sum = sorted(got)
            if not in_sum:
                raise AggregationFailed(f"round {r + 1}: no client sent an update")
            weights = np.array([g["weight"] for g in got.values()], dtype=np.float64)
            changes = np.stack([np.asarray(g["change"], dtype=np.float64) for g in got.values()])
            if cfg.dp_epsilon:   # central DP: a trusted server adds N(0, (sigma C)^2) to the sum
                if any(np.linalg.norm(c) > cfg.l2_clip * (1 + 1e-9) for c in changes) or set(weights) != {1.0}:
                    raise AggregationFailed(f"round {r + 1}: an update is not clipped or weighted as agreed")
                noisy = changes.sum(0) + randomness.normal(dim, sigma * cfg.l2_clip)
                mean, weight = noisy / len(in_sum), len(in_sum)
            else:
                mean, weight = (weights[:, None] * changes).sum(0) / weights.sum(), int(weights.sum())
            stages = {}
        dropped = sorted(set(alive) - set(in_sum))
        alive = in_sum
        for name in alive:
            await ctx.channel.send(name, f"{NAME}.model", {"round": r, "mean": mean.astype(np.float64),
                                                          "clients": alive})
        check = {}
        if cfg.synthetic_dim:     # public updates: check the aggregate against the plain mean
            plain = np.mean([synthetic_update(cfg, clients.index(c), r) for c in in_sum], axis=0)
            check = {"max_error": float(np.max(np.abs(mean - plain))),
                     "quantization_step": 2 * cfg.clip / q.levels}
        stats.append({"round": r + 1, "clients": len(alive), "dropped": dropped, "weight": weight, **check,
                      "stages": stages, "seconds": round(time.perf_counter() - t0, 4),
                      **({"epsilon": round(realized_epsilon(cfg, r + 1, mus, sigma,
                                                              setup.dp if cfg.secagg else None), 4)}
                         if cfg.dp_epsilon else {})})
        ctx.progress(f"round {r + 1}/{cfg.rounds}: averaged {len(alive)} clients"
                     + (f" (dropped: {', '.join(dropped)})" if dropped else ""))
    return RoleResult({"role": "server", "secagg": cfg.secagg, "rounds": stats,
                       "dp": ({"mechanism": "distributed Skellam" if cfg.secagg else "central Gaussian",
                               "target_epsilon": cfg.dp_epsilon, "delta": cfg.delta,
                               "epsilon": stats[-1]["epsilon"], "l2_clip": cfg.l2_clip,
                               **({"sigma": sigma} if not cfg.secagg else {"mu": mus})}
                              if cfg.dp_epsilon else None),
                       "bytes_model": len(wire.encode(np.zeros(dim)))})


ROLES = {"client": client, "server": server}
