"""Federated training over Hash-Comb tokens (issue 6), with a plain FedAvg mode to compare.

Roles: K ``owner`` parties and one ``aggregator``. Run ``hcsetup`` first in the
same work directory: it leaves each owner the shared key, seed and public
hyper-parameters in its private state; the aggregator never gets the key.

Each round (``encoding="hashcomb"``):

1. every owner trains the current global model on its own data (same local
   recipe and shuffling seeds in both modes) and takes the weight change;
2. it multiplies the change by the public ``scale``, stochastically rounds it
   to a leaf bin (unbiased: E[bin centre] = value inside the range), clips to
   the tree's interval, encodes it under the shared key with a per-round
   context (seed, session, round), XORs each token with a per-coordinate,
   per-round mask (ChaCha20 keystream) and sends the histogram (``tokens``);
3. the aggregator, without the key, sums the histograms coordinate by
   coordinate and returns the aggregate to every owner (``aggregate``);
4. owners unmask, decode the frequency-weighted mean of bin centres, divide
   by ``scale``, apply it, and evaluate the new global model on the common test
   split (the stratified 25 % held out by :func:`learning.datasets.load_table`).

``encoding="float"`` is plain FedAvg: owners send float32 changes (``floats``),
the aggregator returns their mean (``mean``). Both modes weight owners equally.
The steps differ by name, so a transcript shows which mode ran.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from learning.datasets import SPLITS, TABLES
from learning.model_files import model_files
from learning.models import public_mlp
from learning.training import evaluate, get_flat, round_seed, set_flat, train
from mpc import randomness, wire
from privacy.hashcomb_codec import (
    HashComb,
    HashCombError,
    HashCombParams,
    TokenHistogram,
    aggregate_histograms,
    sample_levels,
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
    mask: bool = True           # per-coordinate token masking
    timeout: float = 120.0

    def insecure(self) -> list[str]:
        return [] if self.mask else ["mask=false: equal tokens show equal values across coordinates"]

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
        ]
        return [msg for ok, msg in checks if not ok] + study_data.spec_problems(self.data)


Params = FLConfig


# --------------------------------------------------------------------------- token helpers

def round_context(seed: bytes, session: str, rnd: int) -> bytes:
    """Token-table context of one round: tables of different rounds and sessions are unrelated."""
    return b"hcfl/v1" + seed + session.encode() + b"/" + rnd.to_bytes(4, "big")


def coordinate_mask(key: bytes, context: bytes, dim: int) -> np.ndarray:
    """One uint64 per coordinate from a ChaCha20 keystream under a key derived from the secret.

    XORed onto tokens it keeps equality within a coordinate (all owners use the
    same mask there, so the aggregator can still count) and removes it across
    coordinates, so a frequency count over the whole vector no longer works.
    """
    k = hashlib.blake2b(context, key=key, digest_size=32, person=b"hcfl-mask").digest()
    stream = Cipher(algorithms.ChaCha20(k, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * dim)), dtype="<u8").astype(np.uint64)


def quantize_tokens(hc: HashComb, values: np.ndarray, rounding: str,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Tokens of ``values``, clipped to the tree's interval.

    Stochastic rounding adds a uniform dither of one bin width before binning,
    so the decoded bin centre equals the value in expectation (for values at
    least half a bin inside the interval); plain binning has a bias of up to
    half a bin, the same sign for every owner, which FedAvg would not average
    away. With the randomized release (p set) each value is dithered by the
    width of its own random level. ``rng`` defaults to one seeded from the OS.
    """
    rng = rng if rng is not None else randomness.generator()
    v = np.asarray(values, dtype=np.float64)
    a, b = hc.interval
    p = hc.params.p
    if p is None:
        if rounding == "stochastic":
            w = hc.bin_width()
            v = v + rng.uniform(-w / 2, w / 2, v.shape)
        return hc.encode(np.clip(v, a, b), clip=True)
    levels = sample_levels(v.size, hc.levels, p, rng)
    out = np.empty(v.shape, dtype=np.uint64)
    for k in np.unique(levels).tolist():
        sel = levels == k
        x = v[sel]
        if rounding == "stochastic":
            w = hc.bin_width(k)
            x = x + rng.uniform(-w / 2, w / 2, x.shape)
        out[sel] = hc.encode_level(np.clip(x, a, b), int(k), clip=True)
    return out


def unmask_histogram(hist: TokenHistogram, mask: np.ndarray | None) -> TokenHistogram:
    """The aggregate with each coordinate's mask removed (tokens need not stay sorted to decode)."""
    if mask is None:
        return hist
    coords = np.repeat(np.arange(hist.dim, dtype=np.int64), np.diff(hist.offsets))
    return TokenHistogram(hist.dim, hist.offsets, hist.tokens ^ mask[coords], hist.counts,
                          hist.fingerprint)


def make_model(cfg: FLConfig, features: int, classes: int) -> torch.nn.Module:
    """The public architecture, initialised identically by every party from ``cfg.seed``."""
    return public_mlp(cfg.model, features, classes, cfg.hidden, cfg.seed)


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                shuffle_seed: int) -> None:
    train(model, x, y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch, optimizer="sgd",
          seed=shuffle_seed)


# an owner reads its own file when the study declares its data
RESOURCES = {"owner": lambda p: study_data.needs_data(p.data)}


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


async def owner(ctx: RoleContext) -> RoleResult:
    cfg = FLConfig.from_dict(ctx.params)
    owners = ctx.with_role("owner")
    aggregator = ctx.one_with_role("aggregator")
    index = owners.index(ctx.me)
    chatty = index == 0  # one owner reports every round; the others only start and end
    ch = ctx.channel
    hashcomb = cfg.encoding == "hashcomb"
    if hashcomb:
        key, seed, hp = _secret_state(ctx)
    x, y, x_test, y_test, classes = study_data.training_data(ctx, NAME, cfg, len(owners), index)
    model = make_model(cfg, x.shape[1], classes)
    dim = sum(p.numel() for p in model.parameters())
    rng = randomness.generator()   # stochastic rounding is noise: OS-seeded
    ctx.progress(f"{cfg.encoding} FL on {cfg.dataset} ({cfg.split}): {len(y)} local samples, "
                 f"{dim} parameters, {cfg.rounds} rounds")
    rounds = []
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        w0 = get_flat(model)
        local_train(model, x, y, cfg, round_seed(cfg.seed, index, r))
        change = get_flat(model) - w0
        t_train = time.perf_counter() - t0
        if hashcomb:
            context = round_context(seed, ch.session, r)
            hc = HashComb.from_params(hp, key=key, context=context)
            scaled = change.astype(np.float64) * float(cfg.scale)
            lo, hi = hc.interval
            clipped = float(np.mean((scaled < lo) | (scaled > hi)))
            tokens = quantize_tokens(hc, scaled, cfg.rounding, rng)
            mask = coordinate_mask(key, context, dim) if cfg.mask else None
            if mask is not None:
                tokens = tokens ^ mask
            payload = {"round": r, "hist": TokenHistogram.from_tokens(tokens, hc.fingerprint).to_wire()}
            step_out, step_in = "tokens", "aggregate"
        else:
            clipped = 0.0
            payload = {"round": r, "update": change.astype(np.float32)}
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
                agg = unmask_histogram(TokenHistogram.from_wire(reply["hist"]), mask)
                counts = agg.coordinate_totals()
                if agg.dim != dim or np.any(counts != len(owners)):
                    raise PeerMisbehaved(aggregator, f"round {r}: the aggregate does not hold one contribution "
                                        f"from each of the {len(owners)} owners per coordinate")
                mean = (hc.decode_histogram(agg) / float(cfg.scale)).astype(np.float32)
            except (HashCombError, KeyError) as e:
                raise PeerMisbehaved(aggregator, f"round {r}: its aggregate does not decode: {e}") from None
        else:
            mean = np.asarray(reply.get("mean"))
            if mean.shape != (dim,) or mean.dtype != np.float32:
                raise PeerMisbehaved(aggregator, f"round {r}: its mean has shape {mean.shape} "
                                    f"and dtype {mean.dtype}, expected ({dim},) float32")
        set_flat(model, w0 + mean)
        acc, loss = evaluate(model, x_test, y_test)
        rounds.append({"round": r + 1, "accuracy": round(acc, 4), "loss": round(loss, 4),
                       "bytes_sent": sent, "bytes_received": received, "clipped": round(clipped, 5),
                       "train_seconds": round(t_train, 4),
                       "seconds": round(time.perf_counter() - t0, 4)})
        if chatty:
            ctx.progress(f"round {r + 1}/{cfg.rounds}: test accuracy {acc:.3f}, loss {loss:.3f}, "
                         f"sent {sent} B" + (f", clipped {clipped:.2%}" if hashcomb else ""))
    final = get_flat(model)
    ctx.progress(f"done: final test accuracy {rounds[-1]['accuracy']:.3f}")
    public = {"role": "owner", "encoding": cfg.encoding, "final_accuracy": rounds[-1]["accuracy"],
              "samples": len(y), "dimension": dim,
              "model_digest": hashlib.sha256(final.tobytes()).hexdigest()[:16]}
    if hashcomb:
        public["hashcomb"] = {**hp.as_dict(), "masked": cfg.mask, "rounding": cfg.rounding}
    public.update(config=cfg.to_dict(), rounds=rounds)
    return RoleResult(public, private={f"hcfl_model_{cfg.encoding}": final},
                      outputs=model_files(model, x.shape[1], f"hcfl_{cfg.encoding}_model"))


async def _abort(ctx: RoleContext, owners: list[str], step: str, r: int, message: str) -> None:
    for name in owners:
        await ctx.channel.send(name, f"{NAME}.{step}", {"round": r, "error": message})
    raise ProtocolError(message)


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
                agg = aggregate_histograms([TokenHistogram.from_wire(g.get("hist"))
                                            for g in got.values()])
            except HashCombError as e:
                await _abort(ctx, owners, step_out, r, f"cannot aggregate round {r}: {e}")
            reply = {"round": r, "hist": agg.to_wire()}
            distinct = round(agg.tokens.size / max(agg.dim, 1), 3)
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
                     + ("token histograms" if hashcomb else "float updates")
                     + (f" ({distinct} distinct tokens per coordinate)" if hashcomb else ""))
    return RoleResult({"role": "aggregator", "encoding": cfg.encoding, "owners": len(owners),
                       "rounds": stats})


ROLES = {"owner": owner, "aggregator": aggregator}
