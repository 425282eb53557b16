"""Federated training over Hash-Comb tokens (issues 6 and 17), with a plain FedAvg mode to compare.

Roles: K ``owner`` parties and one ``aggregator``. Run ``hcsetup`` first in the
same work directory: it leaves each owner the shared key, seed and public
hyper-parameters in its private state; the aggregator never gets the key.

Each round (``encoding="hashcomb"``):

1. every owner trains the current global model on its own data (same local
   recipe and shuffling seeds in both modes) and takes the weight change;
2. it multiplies the change by the public ``scale`` and picks a node of the
   tree for each coordinate: a leaf by stochastic rounding (unbiased: E[bin
   centre] = value inside the range), a node at a random level when owners
   release random levels (p set), or, with ``rdp_epsilon``, a leaf by the
   Randomized Quantization Mechanism (privacy/rqm.py: Rényi DP, charged to the
   owner's ledger before anything leaves);
3. it names each node by a compact token, a keyed permutation of the node's
   label that differs per coordinate and round (privacy/hashcomb_tokens.py:
   L bits per coordinate, L + 1 with random levels), and sends them packed
   (``tokens``);
4. the aggregator, without the key, counts the tokens coordinate by coordinate
   and returns the counts, coded compactly, to every owner (``aggregate``);
5. owners invert the permutation, decode the count-weighted mean of bin
   centres (exact integer sums), divide by ``scale``, apply it, and evaluate
   the new global model on the common test split.

``encoding="float"`` is plain FedAvg: owners send float32 changes (``floats``),
the aggregator returns their mean (``mean``); with ``rdp_epsilon`` each owner
first clips every coordinate to [lo, hi] and adds Gaussian noise calibrated to the
same epsilon for the same neighbouring relation (local DP-FedAvg, the paper's
comparison). Both modes weight owners equally. The steps differ by name, so a
transcript shows which mode ran.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from learning.datasets import SPLITS, TABLES
from learning.model_files import model_files
from learning.models import public_mlp
from learning.training import evaluate, get_flat, round_seed, set_flat, train
from mpc import randomness, wire
from privacy import gaussian, rqm
from privacy.hashcomb_codec import HashCombError, HashCombParams, sample_levels
from privacy.hashcomb_tokens import (
    TokenCounts,
    TokenFormatError,
    TokenPermutation,
    pack_upload,
    permutation_key,
    token_bits,
    unpack_upload,
)

from . import study_data
from .context import RoleContext, RoleResult
from .errors import ParameterError, PeerMisbehaved, ProtocolError
from .params import Params

NAME = "hcfl"
RULES = {
    ("owner", "aggregator", "tokens"),
    ("aggregator", "owner", "aggregate"),
    ("owner", "aggregator", "floats"),
    ("aggregator", "owner", "mean"),
}
ENCODINGS = ("hashcomb", "float")


@dataclass(frozen=True)
class FLConfig(Params):
    """The public training settings; every party must run with the same ones."""

    PROTOCOL = NAME
    encoding: str = "hashcomb"
    dataset: str = "digits"
    split: str = "iid"
    alpha: float = 0.5          # Dirichlet concentration of the non-IID split
    data_seed: int = 0          # test split and partition
    data: dict | None = None    # the study's data spec: each owner trains on its own file
    seed: int = 0               # model initialisation and local shuffling
    model: str = "mlp"          # "mlp" (one hidden layer) or "logreg"
    hidden: int = 32
    rounds: int = 20
    epochs: int = 1
    lr: float = 0.3
    batch: int = 32
    scale: float = 1.0          # update x scale is what gets encoded
    rounding: str = "stochastic"  # or "nearest" (deterministic bin of the value)
    mask: bool = True           # per-coordinate keyed permutation of the tokens
    rdp_epsilon: float = 0.0    # > 0: each owner's whole run is (rdp_epsilon, delta)-DP
    delta: float = 1e-5
    epsilon_budget: float = 10.0  # each owner's ledger (with rdp_epsilon)
    timeout: float = 120.0

    def insecure(self) -> list[str]:
        return [] if self.mask else ["mask=false: tokens are the nodes' plain labels (bin indices)"]

    def check(self) -> list[str]:
        checks = [
            (self.encoding in ENCODINGS, f"encoding must be one of {ENCODINGS}"),
            (self.dataset in TABLES, f"dataset must be one of {TABLES}"),
            (self.split in SPLITS, f"split must be one of {SPLITS}"),
            (self.model in ("mlp", "logreg"), "model must be 'mlp' or 'logreg'"),
            (self.rounding in ("stochastic", "nearest"), "rounding must be 'stochastic' or 'nearest'"),
            (min(self.rounds, self.epochs, self.batch, self.hidden) >= 1,
             "rounds, epochs, batch and hidden must be >= 1"),
            (min(self.lr, self.scale, self.alpha, self.timeout) > 0,
             "lr, scale, alpha and timeout must be > 0"),
            (self.rdp_epsilon >= 0 and 0 < self.delta < 1, "rdp_epsilon must be >= 0 and delta in (0, 1)"),
            (self.rdp_epsilon <= self.epsilon_budget,
             f"a run of epsilon {self.rdp_epsilon} exceeds each owner's budget {self.epsilon_budget}: "
             "raise epsilon_budget deliberately"),
        ]
        return [msg for ok, msg in checks if not ok] + study_data.spec_problems(self.data)


Params = FLConfig


# --------------------------------------------------------------------------- token helpers

def round_context(seed: bytes, session: str, rnd: int) -> bytes:
    """The round's context: permutations of different rounds and sessions are unrelated."""
    return b"hcfl/v2" + seed + session.encode() + b"/" + rnd.to_bytes(4, "big")


def setup_tag(key: bytes, context: bytes, hp: HashCombParams) -> bytes:
    """8 keyed bytes that let the aggregator refuse owners whose setups differ, learning
    nothing else."""
    return hashlib.blake2b(context + hp.canonical(), key=key, digest_size=8, person=b"hcfl-tag").digest()


def node_labels(hp: HashCombParams, values: np.ndarray, rounding: str,
                rng: np.random.Generator | None = None, mech: rqm.RQM | None = None) -> np.ndarray:
    """Each value's tree node: its leaf index, or its heap position 2^k + i when owners
    release random levels (p set).

    Stochastic rounding adds a uniform dither of one bin width (of the value's level)
    before binning, so the decoded bin centre equals the value in expectation (for values
    at least half a bin inside the interval); plain binning has a bias of up to half a bin,
    the same sign for every owner, which FedAvg would not average away. ``mech`` (RQM on
    the leaves) replaces both. ``rng`` defaults to one seeded from the OS."""
    if mech is not None:
        return mech.sample(values)
    rng = rng if rng is not None else randomness.generator()
    v = np.asarray(values, dtype=np.float64)
    a, b = hp.lo - hp.delta, hp.hi + hp.delta
    k = np.full(v.shape, hp.levels, dtype=np.int64) if hp.p is None else \
        sample_levels(v.size, hp.levels, hp.p, rng).astype(np.int64).reshape(v.shape)
    w = (b - a) / np.exp2(k)
    if rounding == "stochastic":
        v = v + rng.uniform(-0.5, 0.5, v.shape) * w
    i = np.clip(np.floor((np.clip(v, a, b) - a) / w).astype(np.int64), 0, (1 << k) - 1)
    return i if hp.p is None else (1 << k) + i


def decode_mean(hp: HashCombParams, labels: np.ndarray, counts: np.ndarray,
                coords: np.ndarray, dim: int, owners: int) -> np.ndarray:
    """Per coordinate, the count-weighted mean of the labelled nodes' centres.

    The centre of node (k, i) is a + m u with u = (b - a) / 2^(L+1) and the integer
    m = (2 i + 1) 2^(L - k), so the sums are exact integers (in float64, below 2^53)."""
    L = hp.levels
    lab = labels.astype(np.int64)
    if hp.p is None:
        m = 2 * lab + 1
    else:
        if lab.size and int(lab.min()) < 2:
            raise TokenFormatError("a token names no node of the tree")
        k = np.floor(np.log2(lab)).astype(np.int64)
        m = (2 * (lab - (1 << k)) + 1) << (L - k)
    sums = np.bincount(coords, weights=(m * counts).astype(np.float64), minlength=dim)
    a, b = hp.lo - hp.delta, hp.hi + hp.delta
    return a + (b - a) / 2.0 ** (L + 1) * (sums / owners)


def rqm_mechanism(hp: HashCombParams, cfg: FLConfig, dim: int) -> rqm.RQM:
    """The Randomized Quantization Mechanism on the tree's leaves that meets ``rdp_epsilon``
    over the run; every owner derives the same one from the same setup."""
    if hp.p is not None:
        raise ParameterError("rdp_epsilon releases leaves through randomized quantization; set up "
                             "Hash-Comb without random levels (p) for it")
    try:
        q = rqm.calibrate_q(hp.levels, hp.lo, hp.hi, hp.delta, cfg.rdp_epsilon, dim, cfg.rounds,
                            cfg.delta)
        return rqm.RQM.on_leaves(hp.levels, hp.lo, hp.hi, hp.delta, q)
    except rqm.RQMError as e:
        raise ParameterError(f"hcfl: {e}") from None


def make_model(cfg: FLConfig, features: int, classes: int) -> torch.nn.Module:
    """The public architecture, initialised identically by every party from ``cfg.seed``."""
    return public_mlp(cfg.model, features, classes, cfg.hidden, cfg.seed)


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                shuffle_seed: int) -> None:
    train(model, x, y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch, optimizer="sgd",
          seed=shuffle_seed)


# an owner reads its own file when the study declares its data, and charges its own ledger
# when the run is differentially private
RESOURCES = {"owner": lambda p: study_data.needs_data(p.data) + (("budget",) if p.rdp_epsilon else ())}


# --------------------------------------------------------------------------- roles

def _secret_state(ctx: RoleContext) -> tuple[bytes, bytes, HashCombParams]:
    missing = [k for k in ("hashcomb_key", "hashcomb_seed", "hashcomb_params") if k not in ctx.state]
    if missing:
        raise ParameterError(f"owner '{ctx.me}' has no Hash-Comb secret ({', '.join(missing)} "
                            "missing from its state): run the hcsetup protocol first in the same "
                            "work directory (python run_parties.py hashcomb-fl does both)")
    try:
        hp = dict(ctx.state["hashcomb_params"])
        hp["p"] = hp.get("p") or None   # states from before: p = 0.0 meant no randomization
        return (bytes(ctx.state["hashcomb_key"]), bytes(ctx.state["hashcomb_seed"]),
                HashCombParams(**hp))
    except (HashCombError, KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"owner '{ctx.me}' has unusable Hash-Comb parameters in its state: {e}") \
            from None


class _Privacy:
    """An owner's DP release, if the run has one: the mechanism, the ledger charge per
    round and the epsilon so far."""

    def __init__(self, ctx: RoleContext, cfg: FLConfig, hp: HashCombParams | None, dim: int):
        self.ctx, self.cfg, self.hp, self.dim = ctx, cfg, hp, dim
        self.mech = self.sigma = None
        if not cfg.rdp_epsilon:
            return
        if cfg.encoding == "hashcomb":
            self.mech = rqm_mechanism(hp, cfg, dim)
        else:   # local Gaussian on coordinates clipped to [lo, hi]: L2 sensitivity (hi - lo) sqrt(dim)
            self.sigma = gaussian.calibrate(cfg.rdp_epsilon, cfg.rounds, cfg.delta)

    def charge(self, r: int) -> None:
        if not self.cfg.rdp_epsilon:
            return
        budget, what = self.ctx.resources.budget, f"hcfl round {r + 1}"
        if self.mech is not None:
            hp = self.hp
            decision = budget.request_rqm(hp.levels, hp.lo, hp.hi, hp.delta, self.mech.q, self.dim, what)
        else:
            decision = budget.request_gaussian(self.sigma, what)
        if not decision.granted:
            raise ProtocolError(f"owner '{self.ctx.me}': its privacy budget refuses {what} "
                                f"({decision.reason})")

    def epsilon(self, rounds: int) -> float | None:
        if self.mech is not None:
            return rqm.epsilon(self.mech, self.dim, rounds, self.cfg.delta)
        if self.sigma is not None:
            return gaussian.epsilon(rounds, self.sigma, self.cfg.delta)
        return None

    def noisy(self, scaled: np.ndarray) -> np.ndarray:
        """The Gaussian baseline's release of a scaled update."""
        lo, hi = self.hp.lo, self.hp.hi
        std = self.sigma * (hi - lo) * np.sqrt(self.dim)
        return np.clip(scaled, lo, hi) + randomness.normal(scaled.shape, std)


async def owner(ctx: RoleContext) -> RoleResult:
    cfg = FLConfig.from_dict(ctx.params)
    owners = ctx.with_role("owner")
    aggregator = ctx.one_with_role("aggregator")
    index = owners.index(ctx.me)
    chatty = index == 0  # one owner reports every round; the others only start and end
    ch = ctx.channel
    hashcomb = cfg.encoding == "hashcomb"
    key = seed = hp = None
    if hashcomb or cfg.rdp_epsilon:
        key, seed, hp = _secret_state(ctx)
    x, y, x_test, y_test, classes = study_data.training_data(ctx, NAME, cfg, len(owners), index)
    model = make_model(cfg, x.shape[1], classes)
    dim = sum(p.numel() for p in model.parameters())
    private = _Privacy(ctx, cfg, hp, dim)
    bits = token_bits(hp.levels, hp.p is not None) if hashcomb else None
    rng = randomness.generator()   # stochastic rounding is noise: OS-seeded
    ctx.progress(f"{cfg.encoding} FL on {cfg.dataset} ({cfg.split}): {len(y)} local samples, "
                 f"{dim} parameters, {cfg.rounds} rounds"
                 + (f", epsilon {cfg.rdp_epsilon} (delta {cfg.delta}) over the run"
                    if cfg.rdp_epsilon else ""))
    rounds = []
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        w0 = get_flat(model)
        local_train(model, x, y, cfg, round_seed(cfg.seed, index, r))
        change = get_flat(model) - w0
        t_train = time.perf_counter() - t0
        scaled = change.astype(np.float64) * float(cfg.scale)
        private.charge(r)   # before anything derived from the data leaves
        if hashcomb:
            context = round_context(seed, ch.session, r)
            lo, hi = (hp.lo, hp.hi) if private.mech else (hp.lo - hp.delta, hp.hi + hp.delta)
            clipped = float(np.mean((scaled < lo) | (scaled > hi)))
            labels = node_labels(hp, scaled, cfg.rounding, rng, private.mech)
            perm = TokenPermutation(permutation_key(key, context), dim, bits) if cfg.mask else None
            tokens = perm.forward(labels) if perm else labels
            payload = {"round": r, "bits": bits, "dim": dim, "tag": setup_tag(key, context, hp),
                       "tokens": pack_upload(tokens, bits)}
            step_out, step_in = "tokens", "aggregate"
        else:
            clipped = float(np.mean((scaled < hp.lo) | (scaled > hp.hi))) if private.sigma else 0.0
            release = private.noisy(scaled) / float(cfg.scale) if private.sigma else change
            payload = {"round": r, "update": release.astype(np.float32)}
            step_out, step_in = "floats", "mean"
        sent = len(wire.encode(payload))
        await ch.send(aggregator, f"{NAME}.{step_out}", payload)
        reply = await ch.recv(aggregator, f"{NAME}.{step_in}", cfg.timeout)
        received = len(wire.encode(reply))
        if not isinstance(reply, dict) or reply.get("round") != r:
            raise PeerMisbehaved(aggregator, f"answered round {r} with "
                                f"{reply.get('round') if isinstance(reply, dict) else reply!r}")
        if "error" in reply:
            raise ProtocolError(f"the aggregator aborted round {r}: {reply['error']}")
        if hashcomb:
            try:
                agg = TokenCounts.from_wire(reply.get("counts"), dim=dim, owners=len(owners), bits=bits)
                coords = agg.coordinates()
                got = perm.inverse(agg.tokens, coords) if perm else agg.tokens
                mean = (decode_mean(hp, got, agg.counts, coords, dim, len(owners))
                        / float(cfg.scale)).astype(np.float32)
            except TokenFormatError as e:
                raise PeerMisbehaved(aggregator, f"round {r}: its aggregate does not decode: {e}") from None
        else:
            mean = np.asarray(reply.get("mean"))
            if mean.shape != (dim,) or mean.dtype != np.float32:
                raise PeerMisbehaved(aggregator, f"round {r}: its mean has shape {mean.shape} "
                                    f"and dtype {mean.dtype}, expected ({dim},) float32")
        set_flat(model, w0 + mean)
        acc, loss = evaluate(model, x_test, y_test)
        eps = private.epsilon(r + 1)
        rounds.append({"round": r + 1, "accuracy": round(acc, 4), "loss": round(loss, 4),
                       "bytes_sent": sent, "bytes_received": received, "clipped": round(clipped, 5),
                       "epsilon": None if eps is None else round(eps, 4),
                       "train_seconds": round(t_train, 4),
                       "seconds": round(time.perf_counter() - t0, 4)})
        if chatty:
            ctx.progress(f"round {r + 1}/{cfg.rounds}: test accuracy {acc:.3f}, loss {loss:.3f}, "
                         f"sent {sent} B, received {received} B"
                         + (f", clipped {clipped:.2%}" if clipped else "")
                         + (f", epsilon {eps:.4g}" if eps is not None else ""))
    final = get_flat(model)
    ctx.progress(f"done: final test accuracy {rounds[-1]['accuracy']:.3f}")
    public = {"role": "owner", "encoding": cfg.encoding, "final_accuracy": rounds[-1]["accuracy"],
              "samples": len(y), "dimension": dim,
              "model_digest": hashlib.sha256(final.tobytes()).hexdigest()[:16],
              "epsilon": rounds[-1]["epsilon"], "delta": cfg.delta if cfg.rdp_epsilon else None,
              "epsilon_per_round": None if private.epsilon(1) is None else round(private.epsilon(1), 4),
              "ledger_epsilon": ctx.resources.budget.epsilon_spent() if cfg.rdp_epsilon else None}
    if hashcomb:
        public["hashcomb"] = {**hp.as_dict(), "masked": cfg.mask, "rounding": cfg.rounding,
                              "token_bits": bits}
        if private.mech is not None:
            public["hashcomb"]["rqm_q"] = private.mech.q
    public.update(config=cfg.to_dict(), rounds=rounds)
    return RoleResult(public, private={f"hcfl_model_{cfg.encoding}": final},
                      outputs=model_files(model, x.shape[1], f"hcfl_{cfg.encoding}_model"))


async def _abort(ctx: RoleContext, owners: list[str], step: str, r: int, message: str) -> None:
    for name in owners:
        await ctx.channel.send(name, f"{NAME}.{step}", {"round": r, "error": message})
    raise ProtocolError(message)


def _count_tokens(got: dict[str, dict]) -> TokenCounts:
    """The owners' uploads counted per coordinate; raises on uploads that do not fit together."""
    shape = {(g.get("bits"), g.get("dim")) for g in got.values()}
    tags = {g.get("tag") for g in got.values()}
    if len(tags) != 1 or len(shape) != 1:
        raise TokenFormatError("owners sent tokens of different Hash-Comb configurations (keys, "
                               "hyper-parameters or rounds differ): run hcsetup again")
    ((b, dim),) = shape
    if not isinstance(b, int) or not 2 <= b <= 16 or not isinstance(dim, int) or dim < 1:
        raise TokenFormatError(f"uploads of {dim!r} tokens of {b!r} bits")
    return TokenCounts.of(np.stack([unpack_upload(g["tokens"], b, dim) for g in got.values()]), b)


async def aggregator(ctx: RoleContext) -> RoleResult:
    cfg = FLConfig.from_dict(ctx.params)
    owners = ctx.with_role("owner")
    hashcomb = cfg.encoding == "hashcomb"
    step_in, step_out = ("tokens", "aggregate") if hashcomb else ("floats", "mean")
    stats = []
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        got = {name: await ctx.channel.recv(name, f"{NAME}.{step_in}", cfg.timeout)
               for name in owners}
        late = [n for n, g in got.items() if not isinstance(g, dict) or g.get("round") != r]
        if late:
            await _abort(ctx, owners, step_out, r, f"owners {late} sent a message for another "
                         f"round than {r}")
        if hashcomb:
            try:
                counts = _count_tokens(got)
            except TokenFormatError as e:
                await _abort(ctx, owners, step_out, r, f"cannot aggregate round {r}: {e}")
            reply = {"round": r, "counts": counts.to_wire()}
            distinct = round(counts.tokens.size / max(counts.dim, 1), 3)
        else:
            ups = [np.asarray(g.get("update")) for g in got.values()]
            shapes = {(u.shape, u.dtype.str) for u in ups}
            if len(shapes) != 1 or ups[0].ndim != 1 or ups[0].dtype != np.float32:
                await _abort(ctx, owners, step_out, r, f"owners sent updates of different or "
                             f"non-float32 shapes {sorted(map(str, shapes))}")
            reply = {"round": r, "mean": np.mean(np.stack(ups).astype(np.float64), 0)
                     .astype(np.float32)}
            distinct = None
        for name in owners:
            await ctx.channel.send(name, f"{NAME}.{step_out}", reply)
        stats.append({"round": r + 1, "distinct_per_coordinate": distinct,
                      "bytes_out_each": len(wire.encode(reply)),
                      "seconds": round(time.perf_counter() - t0, 4)})
        ctx.progress(f"round {r + 1}/{cfg.rounds}: aggregated {len(owners)} "
                     + ("token uploads" if hashcomb else "float updates")
                     + (f" ({distinct} distinct tokens per coordinate)" if hashcomb else ""))
    return RoleResult({"role": "aggregator", "encoding": cfg.encoding, "owners": len(owners),
                       "rounds": stats})


ROLES = {"owner": owner, "aggregator": aggregator}
