"""CaPC: confidential and private collaborative labelling (PAPERS.md section 3).

Roles: one querying party ``qp``, answering parties ``ap``, the privacy guardian
``pg`` and the ``dealer`` of correlated randomness for every 2PC (a role of its
own, taking no other part). Per batch of the QP's unlabelled queries:

1. QP encrypts the batch under its own CKKS key (:mod:`he`) and sends the
   ciphertexts (and, once, its public context) to every AP.
2. Each AP evaluates its own model on them with masking; QP decrypts
   f_i(x) - r_i, the AP keeps r_i: additive shares of AP i's logits.
3. QP and each AP run a 2PC argmax (CrypTen, :mod:`mpc.crypten_glue`): each
   gets a share of AP i's one-hot vote; nobody learns the vote.
4. Each AP sends its vote share to PG. PG sums them, asks its budget ledger to
   charge each query's worst-case (data-independent) cost, and tells QP which
   queries it will answer and whose votes count; a query the budget cannot
   afford is refused. PG adds Gaussian noise (GNMax, or Confident-GNMax with a
   threshold) to its share of the vote histogram, in the ring encoding.
5. QP and PG run the final 2PC: threshold check and noisy argmax. PG sends its
   output shares to QP only: QP alone learns the label (and whether the
   threshold was met); PG learns neither, nor any single vote.
6. QP retrains its model on its own data plus the newly labelled queries.

``mode="plaintext"`` runs the same messages without cryptography (queries in
the clear, 2PCs done by one side): a fast simulation for accuracy results,
which gives the same labels as the cryptographic run for the same noise.
The conformance rules below make it checkable from the transcripts that no
vote, logit or label goes anywhere else.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import torch

from mpc import additive, encoding
from mpc.channel import Channel, ChannelError

from . import ProtocolError, RoleContext, RoleResult, pate
from .models import ARCHITECTURES, DEFAULT_ARCH, accuracy, build_model, party_data, train

NAME = "capc"
RULES = {
    ("ap", "qp", "depth"),           # public: the AP model's multiplicative depth (CKKS parameters)
    ("qp", "ap", "query"),           # encrypted queries (+ the QP's public CKKS context)
    ("ap", "qp", "answer"),          # Enc(f_i(x) - r_i)
    ("qp", "ap", "crypten"), ("ap", "qp", "crypten"),   # 2PC argmax traffic
    ("qp", "pg", "crypten"), ("pg", "qp", "crypten"),   # final 2PC traffic
    ("qp", "dealer", "schedule"),    # which pair the dealer serves next
    ("qp", "dealer", "tuple_req"), ("ap", "dealer", "tuple_req"), ("pg", "dealer", "tuple_req"),
    ("dealer", "qp", "tuple"), ("dealer", "ap", "tuple"), ("dealer", "pg", "tuple"),
    ("ap", "pg", "vote_share"),      # AP's share of its one-hot vote
    ("pg", "qp", "decision"),        # answered/refused queries, whose votes count, epsilon
    ("pg", "qp", "reveal"),          # PG's shares of the final output: to the QP only
    # plaintext simulation mode only (no cryptography):
    ("qp", "ap", "plain"), ("ap", "qp", "plain"), ("qp", "pg", "plain"), ("pg", "qp", "plain"),
}
RESOURCES = {"pg": ("ledger",)}      # the party runner hands the PG its budget ledger

DEFAULTS: dict[str, Any] = {
    "dataset": "digits", "split": "iid", "seed": 0, "queries": 100, "batch_size": 50,
    "mode": "crypto", "heterogeneous": False, "epochs": 60,
    "sigma_gnmax": 1.0, "sigma_threshold": 2.0, "threshold": None,
    "epsilon_budget": 1e6, "delta": 1e-5, "noise_seed": None, "flood": None,
    "timeout": 600.0,
    "qp_points": None,   # keep only this many of the QP's own labelled points (a data-poor QP)
}


def settings(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ProtocolError(f"unknown CaPC parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **params}
    if s["mode"] not in ("crypto", "plaintext"):
        raise ProtocolError(f"mode must be 'crypto' or 'plaintext', got {s['mode']!r}")
    if int(s["queries"]) < 1 or int(s["batch_size"]) < 1:
        raise ProtocolError("queries and batch_size must be positive")
    return s


def batches(s: dict) -> list[range]:
    q, b = int(s["queries"]), int(s["batch_size"])
    return [range(i, min(i + b, q)) for i in range(0, q, b)]


def data_parties(ctx: RoleContext) -> list[str]:
    """Everyone holding data (QP and APs), sorted: fixes the data split."""
    return sorted(ctx.with_role("qp") + ctx.with_role("ap"))


def architecture(ctx: RoleContext, s: dict, name: str) -> str:
    if not s["heterogeneous"]:
        return DEFAULT_ARCH
    archs = sorted(ARCHITECTURES)
    return archs[data_parties(ctx).index(name) % len(archs)]


def noise_source(s: dict) -> pate.NoiseSource:
    seed = s["noise_seed"]
    return pate.NoiseSource.secure() if seed is None else pate.NoiseSource.for_simulation(int(seed))


def _train_own(ctx: RoleContext, s: dict, x: torch.Tensor, y: torch.Tensor,
               num_classes: int) -> torch.nn.Sequential:
    """This party's architecture, trained from scratch on (x, y) with its own seed."""
    seed = s["seed"] * 1000 + data_parties(ctx).index(ctx.me)
    model = build_model(architecture(ctx, s, ctx.me), x.shape[1], num_classes, seed=seed)
    return train(model, x, y, epochs=int(s["epochs"]), seed=seed)


# --- the two secure computations, and their plaintext stand-ins -----------------------
def _argmax_local(share: np.ndarray) -> np.ndarray:
    from mpc.crypten_glue import share_of, tensor_from_shares
    return share_of(tensor_from_shares(share).argmax(dim=-1, one_hot=True))


def _final_local(s_threshold: np.ndarray, s_argmax: np.ndarray, threshold: float | None):
    from mpc.crypten_glue import share_of, tensor_from_shares
    onehot = tensor_from_shares(s_argmax).argmax(dim=-1, one_hot=True)
    if threshold is None:
        return share_of(onehot), None
    top, _ = tensor_from_shares(s_threshold).max(dim=-1)
    confident = top >= threshold
    return share_of(onehot * confident.unsqueeze(-1)), share_of(confident)


async def _two_pc(ch: Channel, peer: str, dealer: str, s: dict, tag: str, fn, *args):
    from mpc.crypten_glue import TwoParty
    async with TwoParty(ch, peer, dealer, prefix=NAME, timeout=s["timeout"], tag=tag) as tp:
        return await tp.run(fn, *args)


async def _plain_two_pc(ch: Channel, peer: str, compute, *shares: np.ndarray):
    """Simulation stand-in for a 2PC: the party whose name sorts first reconstructs,
    computes in the clear and re-shares the outputs. No security whatsoever."""
    kind = f"{NAME}.plain"
    if ch.me > peer:
        await ch.send(peer, kind, list(shares))
        return tuple(await ch.recv(peer, kind))
    theirs = await ch.recv(peer, kind)
    values = [encoding.decode(additive.reconstruct([a, b])) for a, b in zip(shares, theirs, strict=True)]
    outputs = compute(*values)
    mine, back = [], []
    for out in outputs:
        if out is None:
            mine.append(None)
            back.append(None)
            continue
        a, b = additive.share(encoding.encode(out), 2)
        mine.append(a)
        back.append(b)
    await ch.send(peer, kind, back)
    return tuple(mine)


def _plain_argmax(logits: np.ndarray):
    return (np.eye(logits.shape[-1])[logits.argmax(-1)],)


def _plain_final(threshold: float | None):
    def compute(v_threshold: np.ndarray, v_argmax: np.ndarray):
        onehot = np.eye(v_argmax.shape[-1])[v_argmax.argmax(-1)]
        if threshold is None:
            return onehot, None
        confident = (v_threshold.max(-1) >= threshold).astype(np.float64)
        return onehot * confident[:, None], confident
    return compute


# --- roles ------------------------------------------------------------------------------
async def querying_party(ctx: RoleContext) -> RoleResult:
    s = settings(ctx.params)
    ch, crypto = ctx.channel, s["mode"] == "crypto"
    aps, pg, dealer = ctx.with_role("ap"), ctx.one_with_role("pg"), ctx.one_with_role("dealer")
    if not aps:
        raise ProtocolError("CaPC needs at least one answering party")
    data = party_data(s["dataset"], data_parties(ctx), ctx.me, split=s["split"],
                      queries=int(s["queries"]), seed=int(s["seed"]))
    if s["qp_points"]:
        data.x, data.y = data.x[:int(s["qp_points"])], data.y[:int(s["qp_points"])]
    # CPU-heavy steps run in a worker thread so the event loop keeps the transport alive
    model = await asyncio.to_thread(_train_own, ctx, s, data.x, data.y, data.num_classes)
    acc_before = accuracy(model, data.x_test, data.y_test)
    ctx.progress(f"own model: test accuracy {acc_before:.3f} on {len(data.x)} private points")
    # inference: encrypt, AP evaluation, transport, decrypt; then the 2PCs; retraining apart
    timing = dict.fromkeys(("keygen", "inference", "argmax_2pc", "pg_and_final_2pc", "retrain"), 0.0)

    keys = public = None
    if crypto:
        import he
        depths = {ap: await ch.recv(ap, f"{NAME}.depth", s["timeout"]) for ap in aps}
        t = time.perf_counter()
        keys = await asyncio.to_thread(he.keygen, depth=max(int(d) for d in depths.values()),
                                       single_query=False)
        public = keys.public(galois=False)
        timing["keygen"] += time.perf_counter() - t

    labels: dict[int, int] = {}
    counts = {"answered": 0, "refused": 0, "abstained": 0}
    live_aps = list(aps)
    curve, epsilon = [], 0.0
    plan = batches(s)
    for b, rows in enumerate(plan):
        xb = data.x_queries[list(rows)]
        # 1-2. private inference: shares of every AP's logits
        t = time.perf_counter()
        if crypto:
            import he
            enc = await asyncio.to_thread(he.encrypt, keys, xb, packing="batch")
            payload = {"batch": b, "ct": enc.serialize()}
            if b == 0:
                payload["context"] = public.serialize()
        else:
            payload = {"batch": b, "x": xb.numpy()}
        for ap in live_aps:
            await ch.send(ap, f"{NAME}.query", payload)
        shares: dict[str, np.ndarray] = {}
        for ap in list(live_aps):
            try:
                answer = await ch.recv(ap, f"{NAME}.answer", s["timeout"])
            except ChannelError as e:
                ctx.progress(f"answering party {ap} dropped out: {e}")
                live_aps.remove(ap)
                continue
            if crypto:
                out = he.EncryptedOutput.load(public, answer["ct"])
                y = (await asyncio.to_thread(he.decrypt, keys, out)).numpy()
            else:
                y = np.asarray(answer["y"])
            shares[ap] = encoding.encode(y)
        timing["inference"] += time.perf_counter() - t
        # 3. 2PC argmax with each AP: shares of one-hot votes
        t = time.perf_counter()
        vote_shares: dict[str, np.ndarray] = {}
        for ap in list(shares):
            try:
                if crypto:
                    tag = f"{b}:{ap}"
                    await ch.send(dealer, f"{NAME}.schedule", {"pair": [ctx.me, ap], "tag": tag})
                    vote_shares[ap] = await _two_pc(ch, ap, dealer, s, tag, _argmax_local, shares[ap])
                else:
                    vote_shares[ap] = (await _plain_two_pc(ch, ap, _plain_argmax, shares[ap]))[0]
            except ChannelError as e:
                ctx.progress(f"answering party {ap} dropped out during its 2PC: {e}")
                live_aps.remove(ap)
        timing["argmax_2pc"] += time.perf_counter() - t
        # 4. PG's decision; 5. final 2PC, output to QP only
        t = time.perf_counter()
        decision = await ch.recv(pg, f"{NAME}.decision", s["timeout"])
        missing = set(decision["aps"]) - set(vote_shares)
        if missing:
            raise ProtocolError(f"PG counted votes of {sorted(missing)}, whose 2PC failed here")
        granted = [int(i) for i in decision["granted"]]
        counts["refused"] += len(rows) - len(granted)
        epsilon = float(decision["epsilon"])
        if granted:
            votes = sum((vote_shares[ap][granted] for ap in decision["aps"]),
                        np.zeros((len(granted), data.num_classes), dtype=np.uint64))
            if crypto:
                tag = f"{b}:final"
                await ch.send(dealer, f"{NAME}.schedule", {"pair": [ctx.me, pg], "tag": tag})
                mine = await _two_pc(ch, pg, dealer, s, tag, _final_local, votes, votes, s["threshold"])
            else:
                mine = await _plain_two_pc(ch, pg, _plain_final(s["threshold"]), votes, votes)
            theirs = await ch.recv(pg, f"{NAME}.reveal", s["timeout"])
            onehot = encoding.decode(additive.reconstruct([mine[0], theirs[0]]))
            confident = (np.ones(len(granted)) if s["threshold"] is None else
                         encoding.decode(additive.reconstruct([mine[1], theirs[1]])))
            for j, row in enumerate(granted):
                if confident[j] > 0.5:
                    labels[rows[row]] = int(onehot[j].argmax())
                    counts["answered"] += 1
                else:
                    counts["abstained"] += 1
        timing["pg_and_final_2pc"] += time.perf_counter() - t
        # 6. retrain on own data + labels so far
        t = time.perf_counter()
        acc_now = (await asyncio.to_thread(_retrain_accuracy, ctx, s, data, dict(labels))
                   if labels else acc_before)
        timing["retrain"] += time.perf_counter() - t
        curve.append({"queries": rows.stop, "labelled": len(labels), "accuracy": acc_now,
                      "epsilon": epsilon})
        ctx.progress(f"batch {b + 1}/{len(plan)}: {len(labels)} labelled, "
                     f"accuracy {acc_now:.3f}, epsilon {epsilon:.3g}")
    if crypto:
        await ch.send(dealer, f"{NAME}.schedule", {"done": True})
    correct = sum(int(data.y_queries[i]) == lab for i, lab in labels.items())
    return RoleResult({
        "role": "qp", "mode": s["mode"], "dataset": s["dataset"], "split": s["split"],
        "architecture": architecture(ctx, s, ctx.me), "answering_parties": len(aps),
        "answering_parties_at_end": len(live_aps), "queries": int(s["queries"]),
        **counts, "labelled_correctly": correct,
        "accuracy_before": acc_before, "accuracy_after": curve[-1]["accuracy"] if curve else acc_before,
        "epsilon": epsilon, "delta": float(s["delta"]), "accounting": "data-independent, worst case",
        "labels": {str(k): v for k, v in sorted(labels.items())}, "curve": curve,
        "timing_seconds": {k: round(v, 3) for k, v in timing.items()},
    })


def _retrain_accuracy(ctx: RoleContext, s: dict, data, labels: dict[int, int]) -> float:
    """Test accuracy of a model retrained on own data plus the labelled queries."""
    idx = sorted(labels)
    x = torch.cat([data.x, data.x_queries[idx]])
    y = torch.cat([data.y, torch.tensor([labels[i] for i in idx], dtype=torch.long)])
    return accuracy(_train_own(ctx, s, x, y, data.num_classes), data.x_test, data.y_test)


async def answering_party(ctx: RoleContext) -> RoleResult:
    s = settings(ctx.params)
    ch, crypto = ctx.channel, s["mode"] == "crypto"
    qp, pg, dealer = ctx.one_with_role("qp"), ctx.one_with_role("pg"), ctx.one_with_role("dealer")
    data = party_data(s["dataset"], data_parties(ctx), ctx.me, split=s["split"],
                      queries=int(s["queries"]), seed=int(s["seed"]))
    model = await asyncio.to_thread(_train_own, ctx, s, data.x, data.y, data.num_classes)
    acc = accuracy(model, data.x_test, data.y_test)
    ctx.progress(f"own model ({architecture(ctx, s, ctx.me)}): test accuracy {acc:.3f}")
    plan = public = None
    if crypto:
        import he
        plan = he.compile(model, (data.x.shape[1],))
        await ch.send(qp, f"{NAME}.depth", plan.depth)
    timing = {"he_evaluate": 0.0, "argmax_2pc": 0.0}
    for b, _rows in enumerate(batches(s)):
        query = await ch.recv(qp, f"{NAME}.query", s["timeout"])
        if int(query["batch"]) != b:
            raise ProtocolError(f"QP sent batch {query['batch']}, expected {b}")
        t = time.perf_counter()
        if crypto:
            import he
            if public is None:
                public = he.PublicContext.load(query["context"])
            enc = he.EncryptedBatch.load(public, query["ct"])
            out, r = await asyncio.to_thread(plan.evaluate, enc, mask=True, flood=s["flood"],
                                             context=public)
            await ch.send(qp, f"{NAME}.answer", {"ct": out.serialize()})
            r = r.numpy()
        else:
            from he.mask import uniform_mask
            with torch.no_grad():
                logits = model(torch.as_tensor(query["x"])).double().numpy()
            r = uniform_mask(logits.shape)
            await ch.send(qp, f"{NAME}.answer", {"y": logits - r})
        timing["he_evaluate"] += time.perf_counter() - t
        t = time.perf_counter()
        if crypto:
            vote = await _two_pc(ch, qp, dealer, s, f"{b}:{ctx.me}", _argmax_local, encoding.encode(r))
        else:
            vote = (await _plain_two_pc(ch, qp, _plain_argmax, encoding.encode(r)))[0]
        timing["argmax_2pc"] += time.perf_counter() - t
        await ch.send(pg, f"{NAME}.vote_share", {"batch": b, "share": vote})
    return RoleResult({"role": "ap", "architecture": architecture(ctx, s, ctx.me),
                       "test_accuracy": acc, "timing_seconds": {k: round(v, 3) for k, v in timing.items()}})


async def privacy_guardian(ctx: RoleContext) -> RoleResult:
    s = settings(ctx.params)
    ch, crypto = ctx.channel, s["mode"] == "crypto"
    qp, dealer = ctx.one_with_role("qp"), ctx.one_with_role("dealer")
    ledger = ctx.resources.get("ledger")
    if ledger is None:
        raise ProtocolError("the privacy guardian needs its budget ledger (ctx.resources['ledger'])")
    noise = noise_source(s)
    if s["noise_seed"] is None:
        pate.require_secure(noise)
    live_aps = list(ctx.with_role("ap"))
    granted_total = refused_total = 0
    for b, rows in enumerate(batches(s)):
        votes: np.ndarray | None = None
        counted = []
        for ap in list(live_aps):
            try:
                msg = await ch.recv(ap, f"{NAME}.vote_share", s["timeout"])
            except ChannelError:
                live_aps.remove(ap)  # its vote does not count; the QP is told below
                continue
            share = np.asarray(msg["share"], dtype=np.uint64)
            expected = (len(rows), share.shape[-1] if votes is None else votes.shape[1])
            if int(msg["batch"]) != b or share.ndim != 2 or share.shape != expected:
                raise ProtocolError(f"answering party {ap} sent a malformed vote share")
            votes = share if votes is None else votes + share
            counted.append(ap)
        granted = []
        # No votes, no answer: noise alone would spend budget on a meaningless label.
        for j in range(len(rows) if counted else 0):
            query_id = f"{ch.session}:{b}:{j}"
            if s["threshold"] is None:
                d = ledger.request_gnmax(s["sigma_gnmax"], query_id)
            else:
                d = ledger.request_confident_gnmax(s["sigma_threshold"], s["sigma_gnmax"], query_id)
            if d.granted:
                granted.append(j)
        granted_total += len(granted)
        refused_total += len(rows) - len(granted)
        await ch.send(qp, f"{NAME}.decision", {"batch": b, "granted": granted, "aps": counted,
                                              "epsilon": ledger.epsilon_spent()})
        if not granted:
            continue
        num_classes = votes.shape[1]
        # Noise in the ring encoding, added to PG's share only. Threshold noise
        # is one draw per query, added to every class (so to the max).
        draws = [pate.confident_gnmax_noise(num_classes, s["sigma_threshold"], s["sigma_gnmax"], noise)
                 if s["threshold"] is not None else
                 pate.ConfidentNoise(0.0, pate.gnmax_noise(num_classes, s["sigma_gnmax"], noise))
                 for _ in granted]
        mine = votes[granted]
        s_threshold = mine + encoding.encode(np.array([[d.threshold] * num_classes for d in draws]))
        s_argmax = mine + encoding.encode(np.array([d.argmax for d in draws]))
        if crypto:
            out = await _two_pc(ch, qp, dealer, s, f"{b}:final", _final_local, s_threshold, s_argmax,
                                s["threshold"])
        else:
            out = await _plain_two_pc(ch, qp, _plain_final(s["threshold"]), s_threshold, s_argmax)
        await ch.send(qp, f"{NAME}.reveal", list(out))
    return RoleResult({"role": "pg", "granted": granted_total, "refused": refused_total,
                       "epsilon": ledger.epsilon_spent(), "delta": ledger.delta,
                       "budget": ledger.epsilon_budget, "noise": repr(noise)})


async def dealer(ctx: RoleContext) -> RoleResult:
    s = settings(ctx.params)
    if s["mode"] != "crypto":
        return RoleResult({"role": "dealer", "sessions": 0})
    from mpc.crypten_glue import serve_dealer
    qp = ctx.one_with_role("qp")
    served = failed = 0
    while True:
        order = await ctx.channel.recv(qp, f"{NAME}.schedule", s["timeout"])
        if order.get("done"):
            break
        a, b = order["pair"]
        if qp not in (a, b) or a == b or {a, b} - set(ctx.roles):
            raise ProtocolError(f"QP asked the dealer to serve an invalid pair {order['pair']}")
        try:
            await serve_dealer(ctx.channel, (a, b), prefix=NAME, timeout=s["timeout"],
                               tag=str(order.get("tag", "")))
            served += 1
        except ChannelError:
            failed += 1  # a party of that 2PC dropped out; the others go on
    return RoleResult({"role": "dealer", "sessions": served, "failed_sessions": failed})


ROLES = {"qp": querying_party, "ap": answering_party, "pg": privacy_guardian, "dealer": dealer}
