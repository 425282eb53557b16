"""CaPC: confidential and private collaborative labelling (PAPERS.md section 3).

Roles: one querying party ``qp``, answering parties ``ap``, the privacy guardian
``pg`` and the ``dealer`` of correlated randomness for every 2PC (a role of its
own, taking no other part). Per batch of the QP's unlabelled queries:

1. QP encrypts the batch under its own CKKS key (:mod:`he`) and sends the
   ciphertexts (and, once, its public context) to every AP.
2. Each AP evaluates its own model on them, masks the result with a polynomial
   uniform modulo the output modulus and re-randomizes it (he/mask.py): QP's
   decryption is uniform; QP and AP hold additive shares, in Z_2^64, of AP i's
   logits (he/share.py).
3. QP and each AP run a 2PC argmax (CrypTen, :mod:`mpc.twopc`): each
   gets a share of AP i's one-hot vote; nobody learns the vote. The QP runs
   steps 2-3 with every AP at once, each as soon as that AP's answer is in.
4. Each AP sends its vote share to PG. PG sums them, asks its privacy budget to
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
which gives the same labels as the cryptographic run for the same noise (but
for a rare teacher whose two top logits lie within the approximation error).
The conformance rules below make it checkable from the transcripts that no
vote, logit or label goes anywhere else.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from learning.datasets import SPLITS, TABLES, PartyData, party_data
from learning.model_files import model_files
from learning.models import (
    ARCHITECTURES,
    DEFAULT_ARCH,
    TEACHER_ARCHITECTURES,
    build_model,
    stack_teachers,
)
from learning.training import accuracy, disjoint_shards, train
from mpc import additive, encoding, randomness
from mpc.channel import Channel, ChannelError
from privacy import pate

from . import study_data
from .context import RoleContext, RoleResult
from .errors import ParameterError, PeerMisbehaved
from .params import Params

NAME = "capc"
QUERY_PIECE_BYTES = 16 * 2**20   # ciphertexts go in pieces well below a message's limit
RULES = {
    ("ap", "qp", "depth"),           # public: the AP model's multiplicative depth (CKKS parameters)
    ("qp", "ap", "context"),         # the QP's public CKKS context (no secret key), once
    ("qp", "ap", "query"),           # encrypted queries
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
# the runner hands the PG its privacy budget; with a 'data' study the QP brings its records
# and its queries, an AP its records; an AP may answer with its own model in any study
RESOURCES = {"pg": ("budget",),
             "qp": lambda p: ("data", "queries") if p.data is not None else (),
             "ap": lambda p: ("model",) + (("data",) if p.data is not None else ())}


@dataclass(frozen=True)
class CapcParams(Params):
    """The public parameters of a CaPC session; every party runs with the same ones."""

    PROTOCOL = NAME
    dataset: str = "digits"
    split: str = "iid"
    seed: int = 0
    queries: int = 100
    batch_size: int = 50
    mode: str = "crypto"            # or "plaintext": the same messages without cryptography
    heterogeneous: bool = False
    epochs: int = 60
    sigma_gnmax: float = 1.0
    sigma_threshold: float = 2.0
    threshold: float | None = None  # None: GNMax; a number: Confident-GNMax
    epsilon_budget: float = 10.0     # a finite default: raise it deliberately (ledger: per guardian)
    delta: float = 1e-5
    noise_seed: int | None = None   # INSECURE fixed noise, for simulations only
    timeout: float = 600.0
    qp_points: int | None = None    # keep only this many of the QP's own labelled points
    data: dict | None = None        # the study's data spec: each party brings its own files
    teachers: int = 1               # teachers per answering party, on disjoint shards of its data
    teacher_arch: str | None = None  # their architecture (None: the party's own; or "logreg")
    max_answers: int | None = None  # the guardian's cap on answers, fixed before the first query

    def check(self) -> list[str]:
        problems = []
        if self.mode not in ("crypto", "plaintext"):
            problems.append(f"mode must be 'crypto' or 'plaintext', got {self.mode!r}")
        if self.dataset not in TABLES:
            problems.append(f"dataset must be one of {', '.join(TABLES)}, got {self.dataset!r}")
        if self.split not in SPLITS:
            problems.append(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for name in ("queries", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("sigma_gnmax", "sigma_threshold", "epsilon_budget", "timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta}")
        if self.qp_points is not None and self.qp_points < 2:
            problems.append(f"qp_points must be at least 2 (or null for all), got {self.qp_points}")
        if self.noise_seed is not None and self.noise_seed < 0:
            problems.append(f"noise_seed must be >= 0 (or null for OS noise), got {self.noise_seed}")
        if self.teachers < 1:
            problems.append(f"teachers must be at least 1, got {self.teachers}")
        if self.teacher_arch is not None and self.teacher_arch not in TEACHER_ARCHITECTURES:
            problems.append(f"teacher_arch must be one of {', '.join(TEACHER_ARCHITECTURES)}, "
                            f"got {self.teacher_arch!r}")
        if self.max_answers is not None and self.max_answers < 1:
            problems.append(f"max_answers must be at least 1 (or null: as many as queries), "
                            f"got {self.max_answers}")
        return problems + study_data.spec_problems(self.data)

    def insecure(self) -> list[str]:
        reasons = []
        if self.mode == "plaintext":
            reasons.append("mode=plaintext: queries, logits and votes cross in the clear")
        if self.noise_seed is not None:
            reasons.append("noise_seed: the guardian's privacy noise is predictable")
        return reasons

    def batches(self) -> list[range]:
        q, b = self.queries, self.batch_size
        return [range(i, min(i + b, q)) for i in range(0, q, b)]

    @property
    def crypto(self) -> bool:
        return self.mode == "crypto"


Params = CapcParams


def data_parties(ctx: RoleContext) -> list[str]:
    """Everyone holding data (QP and APs), sorted: fixes the data split."""
    return sorted(ctx.with_role("qp") + ctx.with_role("ap"))


def architecture(ctx: RoleContext, p: CapcParams, name: str) -> str:
    if not p.heterogeneous:
        return DEFAULT_ARCH
    archs = sorted(ARCHITECTURES)
    return archs[data_parties(ctx).index(name) % len(archs)]


def my_data(ctx: RoleContext, p: CapcParams) -> PartyData | None:
    """This party's records (and the QP's queries): its own files in a 'data' study, else
    its part of the built-in table. None: an AP that answers with its own model only."""
    if p.data is None:
        try:
            return party_data(p.dataset, data_parties(ctx), ctx.me, split=p.split,
                              queries=p.queries, seed=p.seed)
        except ValueError as e:
            raise ParameterError(f"capc: {e}") from None
    own, asked = ctx.resources.data, ctx.resources.queries
    if own is None:
        return None
    x, y, x_test, y_test = own.split(seed=p.seed)
    empty = torch.zeros(0, x.shape[1])
    if ctx.role != "qp":
        return PartyData(x, y, x_test, y_test, empty, torch.zeros(0, dtype=torch.long), own.classes)
    if len(asked) < p.queries:
        raise ParameterError(f"capc: '{ctx.me}' has {len(asked)} queries in {asked.source}, the "
                             f"study asks {p.queries}; lower queries or add rows")
    return PartyData(x, y, x_test, y_test, torch.as_tensor(asked.x[:p.queries]),
                     torch.as_tensor(asked.y[:p.queries]), own.classes)


def train_own(ctx: RoleContext, p: CapcParams, x: torch.Tensor, y: torch.Tensor,
              num_classes: int) -> torch.nn.Sequential:
    """This party's architecture, trained from scratch on (x, y) with its own seed."""
    seed = p.seed * 1000 + data_parties(ctx).index(ctx.me)
    model = build_model(architecture(ctx, p, ctx.me), x.shape[1], num_classes, seed=seed)
    return train(model, x, y, epochs=p.epochs, lr=0.01, weight_decay=1e-4, seed=seed)


def train_teachers(ctx: RoleContext, p: CapcParams, data: PartyData) -> list[torch.nn.Sequential]:
    """An answering party's ``p.teachers`` teachers, each trained on its own disjoint shard of
    the party's records (so each record influences one teacher only)."""
    k = p.teachers
    if len(data.x) < 2 * k:
        raise ParameterError(f"capc: '{ctx.me}' has {len(data.x)} records, too few for {k} "
                             "teachers on disjoint shards (at least 2 each)")
    me = data_parties(ctx).index(ctx.me)
    arch = p.teacher_arch or architecture(ctx, p, ctx.me)
    teachers = []
    for t, shard in enumerate(disjoint_shards(len(data.x), k, p.seed * 1000 + me)):
        seed = (p.seed * 1000 + me) * 1000 + t
        model = build_model(arch, data.x.shape[1], data.num_classes, seed=seed)
        teachers.append(train(model, data.x[shard], data.y[shard], epochs=p.epochs, lr=0.01,
                              weight_decay=1e-4, seed=seed))
    return teachers


def per_teacher(share: np.ndarray, teachers: int, classes: int) -> np.ndarray:
    """Logit shares [batch, teachers * classes] as one row per (query, teacher)."""
    return np.ascontiguousarray(share).reshape(-1, teachers, classes).reshape(-1, classes)


def vote_share(onehot: np.ndarray, teachers: int) -> np.ndarray:
    """Shares of the teachers' one-hot votes, one row per (query, teacher), summed per query:
    a share of the party's vote histogram [batch, classes] (in the ring, so sums wrap)."""
    o = np.asarray(onehot, dtype=np.uint64)
    return o.reshape(-1, teachers, o.shape[-1]).sum(axis=1, dtype=np.uint64)


def in_pieces(blob: bytes, **header: Any) -> list[dict]:
    """A ciphertext blob as messages of at most QUERY_PIECE_BYTES: a wide batch (MNIST: 784
    feature ciphertexts) or many teachers' outputs outgrow one message."""
    pieces = [blob[i:i + QUERY_PIECE_BYTES] for i in range(0, len(blob), QUERY_PIECE_BYTES)] or [b""]
    return [{**header, "piece": i, "pieces": len(pieces), "ct": piece} for i, piece in enumerate(pieces)]


async def rest_of_pieces(ch: Channel, frm: str, kind: str, first: dict, timeout: float) -> bytes:
    """The whole blob whose first piece is ``first``."""
    blob = [first["ct"]]
    for i in range(1, int(first.get("pieces", 1))):
        piece = await ch.recv(frm, kind, timeout)
        if piece.get("batch") != first.get("batch") or piece.get("piece") != i:
            raise PeerMisbehaved(frm, f"sent piece {piece.get('piece')} of batch {piece.get('batch')} "
                                      f"as piece {i} of batch {first.get('batch')}")
        blob.append(piece["ct"])
    return b"".join(blob)


def noise_source(p: CapcParams) -> pate.NoiseSource:
    if p.noise_seed is None:
        return pate.NoiseSource.secure()
    return pate.NoiseSource.for_simulation(p.noise_seed)


# --- the two secure computations, and their plaintext stand-ins -----------------------
def _final_local(s_threshold: np.ndarray, s_argmax: np.ndarray, threshold: float | None,
                 s_count: np.ndarray | None = None, cap: int | None = None):
    """Inside the final 2PC: shares of the noisy argmax's one-hot (zeroed where the noisy
    top count misses the threshold) and of the 'answered' bits. With a cap, a query is
    answered only while the answers so far (``s_count``: shares of the running count, which
    neither side knows alone) stay within it."""
    from mpc.twopc import share_of, tensor_from_shares
    onehot = tensor_from_shares(s_argmax).argmax(dim=-1, one_hot=True)
    if threshold is None:
        return share_of(onehot), None
    top, _ = tensor_from_shares(s_threshold).max(dim=-1)
    confident = top >= threshold
    if cap is not None:
        running = tensor_from_shares(s_count) + confident.cumsum(0)
        confident = confident * (running <= cap + 0.5)
    return share_of(onehot * confident.unsqueeze(-1)), share_of(confident)


async def _two_pc(ch: Channel, peer: str, dealer: str, p: CapcParams, tag: str, fn, *args):
    from mpc.twopc import TwoParty
    async with TwoParty(ch, peer, dealer, prefix=NAME, timeout=p.timeout, tag=tag) as tp:
        return await tp.run(fn, *args)


def _he_needs(ap: str, msg: Any) -> tuple[int, int]:
    """(multiplicative depth, slots for single-query packing) an AP's model needs."""
    try:
        depth, slots = int(msg["depth"]), int(msg["single_slots"])
    except (TypeError, KeyError, ValueError):
        raise PeerMisbehaved(ap, "sent a malformed 'depth' message") from None
    if not (0 <= depth <= 64 and 1 <= slots <= 2**20):
        raise PeerMisbehaved(ap, f"asks for depth {depth} and {slots} slots: out of range")
    return depth, slots


async def _argmax(ch: Channel, peer: str, dealer: str, p: CapcParams, tag: str,
                  share: np.ndarray) -> np.ndarray:
    """Step 3 between the QP and one AP: shares of the AP's one-hot vote."""
    if p.crypto:
        from mpc.twopc import onehot_argmax_share
        return await _two_pc(ch, peer, dealer, p, tag, onehot_argmax_share, share)
    return (await _plain_two_pc(ch, peer, _plain_argmax, share))[0]


async def _final(ch: Channel, peer: str, dealer: str, p: CapcParams, tag: str,
                 s_threshold: np.ndarray, s_argmax: np.ndarray, s_count: np.ndarray) -> tuple:
    """Step 5 between the QP and the PG: shares of the label (and of 'answered')."""
    if p.crypto:
        return await _two_pc(ch, peer, dealer, p, tag, _final_local,
                             *_final_args(p, s_threshold, s_argmax, s_count))
    return await _plain_two_pc(ch, peer, _plain_final(p.threshold, _answer_cap(p)), s_threshold,
                               s_argmax, s_count)


def _answer_cap(p: CapcParams) -> int | None:
    """The cap the final 2PC enforces: only Confident-GNMax answers fewer than asked."""
    return p.max_answers if p.threshold is not None else None


def _final_args(p: CapcParams, s_threshold: np.ndarray, s_argmax: np.ndarray,
                s_count: np.ndarray) -> tuple:
    """The final 2PC's arguments, built in one place so a rehearsal keys the same plan."""
    cap = _answer_cap(p)
    return s_threshold, s_argmax, p.threshold, s_count if cap is not None else None, cap


async def _rehearse_single_query(p: CapcParams, *, argmax: bool, final: bool) -> None:
    """One query at a time: learn the 2PCs' dealer plans locally before the first query
    (:mod:`mpc.twopc.rehearsal`), so that query does not pay a round trip per tuple."""
    if not (p.crypto and p.batch_size == 1):
        return
    from mpc.twopc import onehot_argmax_share, rehearse
    classes = study_data.shape(NAME, p.dataset, p.data, p.seed)[1]
    if argmax:
        await rehearse(onehot_argmax_share, np.zeros((p.teachers, classes), dtype=np.uint64))
    if final:
        row = np.zeros((1, classes), dtype=np.uint64)
        await rehearse(_final_local, *_final_args(p, row, row, np.zeros(1, dtype=np.uint64)))


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


def _plain_final(threshold: float | None, cap: int | None):
    def compute(v_threshold: np.ndarray, v_argmax: np.ndarray, v_count: np.ndarray):
        onehot = np.eye(v_argmax.shape[-1])[v_argmax.argmax(-1)]
        if threshold is None:
            return onehot, None
        confident = (v_threshold.max(-1) >= threshold).astype(np.float64)
        if cap is not None:
            confident *= (np.round(v_count[0]) + np.cumsum(confident)) <= cap
        return onehot * confident[:, None], confident
    return compute


# --- roles ------------------------------------------------------------------------------
@dataclass
class _Querier:
    """The querying party's state across batches; one method per step of a batch."""

    ctx: RoleContext
    p: CapcParams
    data: PartyData
    aps: list[str]
    pg: str
    dealer: str
    keys: Any = None
    public: Any = None
    packing: str = "batch"                                  # how queries are encrypted
    live_aps: list[str] = field(default_factory=list)
    labels: dict[int, int] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)   # query row -> answered/refused/abstained
    model: Any = None                                       # the latest retrained model
    count_share: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.uint64))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("answered", "refused", "abstained"), 0))
    timing: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("keygen", "rehearsal", "inference", "argmax_2pc", "pg_and_final_2pc", "retrain"), 0.0))

    @property
    def ch(self) -> Channel:
        return self.ctx.channel

    async def keygen(self) -> None:
        """A CKKS key deep enough for every AP's model (crypto mode)."""
        import he
        needs = [_he_needs(ap, await self.ch.recv(ap, f"{NAME}.depth", self.p.timeout))
                 for ap in self.aps]
        depth, slots = max(n[0] for n in needs), max(n[1] for n in needs)
        # One query at a time: single-query packing (one ciphertext, rotations, Galois
        # keys sent once) instead of one ciphertext per feature, ~60x fewer bytes and
        # HE work per query. Batches pack a query per slot and need no rotations.
        single = self.p.batch_size == 1
        self.keys = await asyncio.to_thread(he.keygen, depth=depth, single_query=single)
        if single and self.keys.params.slots < slots:   # a model too wide for one ciphertext
            single = False
            self.keys = await asyncio.to_thread(he.keygen, depth=depth, single_query=False)
        self.packing = "single" if single else "batch"
        self.public = self.keys.public(galois=single)
        context = self.public.serialize()   # sent before the first query: session setup
        for ap in self.live_aps:
            await self.ch.send(ap, f"{NAME}.context", context)

    async def ask(self, b: int, rows: range) -> None:
        """Step 1: the batch's queries (encrypted once) to every live AP."""
        xb = self.data.x_queries[list(rows)]
        if self.p.crypto:
            import he
            enc = await asyncio.to_thread(he.encrypt, self.keys, xb, packing=self.packing)
            payloads = in_pieces(enc.serialize(), batch=b)
        else:
            payloads = [{"batch": b, "x": xb.numpy()}]
        for ap in self.live_aps:
            for payload in payloads:
                await self.ch.send(ap, f"{NAME}.query", payload)

    async def votes(self, b: int) -> dict[str, np.ndarray]:
        """Steps 2-3 with every live AP at once, each as soon as its answer is in: the
        QP's share of its logits (the AP keeps the other), then a 2PC argmax per teacher:
        shares of its vote histogram. Time until the last share is ``inference``, the
        rest ``argmax_2pc`` (the 2PCs of early answers overlap later APs' evaluation)."""
        k, classes = self.p.teachers, self.data.num_classes
        start = last_share = time.perf_counter()

        async def with_ap(ap: str) -> np.ndarray | tuple[ChannelError, str]:
            nonlocal last_share
            try:
                answer = await self.ch.recv(ap, f"{NAME}.answer", self.p.timeout)
            except ChannelError as e:
                return e, ""
            share = await self._my_share(ap, answer)
            last_share = max(last_share, time.perf_counter())
            tag = f"{b}:{ap}"
            try:
                if self.p.crypto:   # the dealer serves every pair's session concurrently
                    await self.ch.send(self.dealer, f"{NAME}.schedule",
                                       {"pair": [self.ctx.me, ap], "tag": tag})
                onehot = await _argmax(self.ch, ap, self.dealer, self.p, tag,
                                       per_teacher(share, k, classes))
            except ChannelError as e:
                if getattr(e, "peer", ap) != ap:  # e.g. the dealer died: nobody can go on
                    raise
                return e, "during its 2PC"
            return vote_share(onehot, k)

        aps = list(self.live_aps)
        outcomes = await asyncio.gather(*(with_ap(ap) for ap in aps), return_exceptions=True)
        self.timing["inference"] += last_share - start
        self.timing["argmax_2pc"] += time.perf_counter() - last_share
        vote_shares = {}
        for ap, got in zip(aps, outcomes, strict=True):
            if isinstance(got, BaseException):
                raise got
            if isinstance(got, tuple):
                self._drop(ap, *got)
            else:
                vote_shares[ap] = got
        return vote_shares

    async def _my_share(self, ap: str, answer: dict) -> np.ndarray:
        """The QP's share of an AP's logits, in the ring (the AP holds the other)."""
        if not self.p.crypto:
            return additive.as_ring(np.asarray(answer["y"]))
        import he
        out = he.EncryptedOutput.load(self.public, await rest_of_pieces(
            self.ch, ap, f"{NAME}.answer", answer, self.p.timeout))
        return await asyncio.to_thread(he.decrypt_share, self.keys, out)

    async def labels_of(self, b: int, rows: range, vote_shares: dict[str, np.ndarray]) -> float:
        """Steps 4-5: the PG's decision, then the final 2PC; returns the epsilon spent."""
        decision = await self.ch.recv(self.pg, f"{NAME}.decision", self.p.timeout)
        missing = set(decision["aps"]) - set(vote_shares)
        if missing:
            raise PeerMisbehaved(self.pg, f"counted votes of {sorted(missing)}, whose 2PC "
                                          "failed here")
        granted = [int(i) for i in decision["granted"]]
        self.counts["refused"] += len(rows) - len(granted)
        self.status.update({rows[j]: "refused" for j in range(len(rows)) if j not in set(granted)})
        if not granted:
            return float(decision["epsilon"])
        votes = sum((vote_shares[ap][granted] for ap in decision["aps"]),
                    np.zeros((len(granted), self.data.num_classes), dtype=np.uint64))
        tag = f"{b}:final"
        if self.p.crypto:
            await self.ch.send(self.dealer, f"{NAME}.schedule",
                               {"pair": [self.ctx.me, self.pg], "tag": tag})
        mine = await _final(self.ch, self.pg, self.dealer, self.p, tag, votes, votes,
                            self.count_share)
        if mine[1] is not None:   # my share of the running number of answers
            self.count_share = self.count_share + mine[1].sum(dtype=np.uint64)
        theirs = await self.ch.recv(self.pg, f"{NAME}.reveal", self.p.timeout)
        onehot = encoding.decode(additive.reconstruct([mine[0], theirs[0]]))
        confident = (np.ones(len(granted)) if self.p.threshold is None else
                     encoding.decode(additive.reconstruct([mine[1], theirs[1]])))
        for j, row in enumerate(granted):
            if confident[j] > 0.5:
                self.labels[rows[row]] = int(onehot[j].argmax())
                self.counts["answered"] += 1
                self.status[rows[row]] = "answered"
            else:
                self.counts["abstained"] += 1
                self.status[rows[row]] = "abstained"
        return float(decision["epsilon"])

    def retrained_accuracy(self) -> float:
        """Step 6: test accuracy of a model retrained on own data plus the labels so far."""
        idx = sorted(self.labels)
        x = torch.cat([self.data.x, self.data.x_queries[idx]])
        y = torch.cat([self.data.y, torch.tensor([self.labels[i] for i in idx], dtype=torch.long)])
        self.model = train_own(self.ctx, self.p, x, y, self.data.num_classes)
        return accuracy(self.model, self.data.x_test, self.data.y_test)

    def labels_csv(self, ids: np.ndarray) -> bytes:
        """What the QP learned, one line per query it asked: id, label, status."""
        lines = ["id,label,status"]
        for i in range(self.p.queries):
            status = self.status.get(i, "not asked")
            lines.append(f"{ids[i]},{self.labels.get(i, '')},{status}")
        return ("\n".join(lines) + "\n").encode()

    def _drop(self, ap: str, error: Exception, when: str = "") -> None:
        self.ctx.progress(f"answering party {ap} dropped out{' ' + when if when else ''}: {error}")
        self.live_aps.remove(ap)


async def _timed(timing: dict[str, float], key: str, coro):
    t = time.perf_counter()
    try:
        return await coro
    finally:
        timing[key] += time.perf_counter() - t


async def querying_party(ctx: RoleContext) -> RoleResult:
    p = CapcParams.from_dict(ctx.params)
    aps = ctx.with_role("ap")
    if not aps:
        raise ParameterError("CaPC needs at least one answering party")
    data = my_data(ctx, p)
    if data is None:
        raise ParameterError(f"capc: the querying party '{ctx.me}' needs its own labelled data")
    if p.qp_points:
        data.x, data.y = data.x[:p.qp_points], data.y[:p.qp_points]
    # CPU-heavy steps run in a worker thread so the event loop keeps the transport alive
    model = await asyncio.to_thread(train_own, ctx, p, data.x, data.y, data.num_classes)
    acc_before = accuracy(model, data.x_test, data.y_test)
    ctx.progress(f"own model: test accuracy {acc_before:.3f} on {len(data.x)} private points")
    q = _Querier(ctx, p, data, aps, ctx.one_with_role("pg"), ctx.one_with_role("dealer"),
                 live_aps=list(aps))
    if p.crypto:
        await _timed(q.timing, "keygen", q.keygen())
        await _timed(q.timing, "rehearsal", _rehearse_single_query(p, argmax=True, final=True))
    curve, epsilon, plan = [], 0.0, p.batches()
    for b, rows in enumerate(plan):
        start = time.perf_counter()
        await _timed(q.timing, "inference", q.ask(b, rows))
        vote_shares = await q.votes(b)
        epsilon = await _timed(q.timing, "pg_and_final_2pc", q.labels_of(b, rows, vote_shares))
        seconds = time.perf_counter() - start     # this batch's labelling, end to end
        acc_now = (await _timed(q.timing, "retrain", asyncio.to_thread(q.retrained_accuracy))
                   if q.labels else acc_before)
        curve.append({"queries": rows.stop, "labelled": len(q.labels), "accuracy": acc_now,
                      "epsilon": epsilon, "labelling_seconds": round(seconds, 3)})
        # kept in the results if a peer dies later: what this run already bought
        ctx.partial.update(curve=curve, epsilon=epsilon, **q.counts,
                           labels={str(k): v for k, v in sorted(q.labels.items())})
        ctx.progress(f"batch {b + 1}/{len(plan)}: {len(q.labels)} labelled, "
                     f"accuracy {acc_now:.3f}, epsilon {epsilon:.3g}")
    if p.crypto:
        await ctx.channel.send(q.dealer, f"{NAME}.schedule", {"done": True})
    known = bool(len(data.y_queries)) and int(data.y_queries.min()) >= 0   # labels only to score
    correct = sum(int(data.y_queries[i]) == lab for i, lab in q.labels.items()) if known else None
    ids = (ctx.resources.queries.ids if p.data is not None else np.arange(p.queries))
    outputs = {"labels.csv": q.labels_csv(ids),
               **model_files(q.model if q.model is not None else model, data.x.shape[1],
                             "capc_qp_model")}
    return RoleResult({
        "role": "qp", "mode": p.mode, "dataset": p.dataset, "split": p.split,
        "own_data": p.data is not None,
        "own_points": len(data.x),
        "architecture": architecture(ctx, p, ctx.me), "answering_parties": len(aps),
        "answering_parties_at_end": len(q.live_aps), "queries": p.queries,
        **q.counts, "labelled_correctly": correct,
        "accuracy_before": acc_before, "accuracy_after": curve[-1]["accuracy"] if curve else acc_before,
        "epsilon": epsilon, "delta": p.delta, "accounting": "data-independent, worst case",
        "labels": {str(k): v for k, v in sorted(q.labels.items())}, "curve": curve,
        "timing_seconds": {k: round(v, 3) for k, v in q.timing.items()},
        **({"packing": q.packing} if p.crypto else {}),
    }, outputs=outputs)


async def answering_party(ctx: RoleContext) -> RoleResult:
    p = CapcParams.from_dict(ctx.params)
    ch = ctx.channel
    qp, pg, dealer = ctx.one_with_role("qp"), ctx.one_with_role("pg"), ctx.one_with_role("dealer")
    data = my_data(ctx, p)
    own = ctx.resources.model            # its own model from a file, else teachers trained here
    if own is not None and p.teachers > 1:
        raise ParameterError(f"capc: '{ctx.me}' answers with its own model file, so with one "
                             f"teacher; teachers={p.teachers} needs records to train them on")
    if own is not None:
        teachers = [own]
    elif p.teachers == 1 and p.teacher_arch is None:
        teachers = [await asyncio.to_thread(train_own, ctx, p, data.x, data.y, data.num_classes)]
    else:
        teachers = await asyncio.to_thread(train_teachers, ctx, p, data)
    model = teachers[0] if len(teachers) == 1 else stack_teachers(teachers)
    accs = [accuracy(t, data.x_test, data.y_test) for t in teachers] if data is not None else []
    acc = float(np.mean(accs)) if accs else None
    arch = "own model" if own is not None else (p.teacher_arch or architecture(ctx, p, ctx.me))
    ctx.progress(f"{len(teachers)} teacher(s) ({arch}): "
                 + (f"mean test accuracy {acc:.3f}" if acc is not None else "no data to test on"))
    features = study_data.shape(NAME, p.dataset, p.data, p.seed)[0]
    plan = public = None
    if p.crypto:
        import he
        plan = he.compile(model, (features,))
        await ch.send(qp, f"{NAME}.depth", {"depth": plan.depth, "single_slots": plan.single_slots})
        public = he.PublicContext.load(await ch.recv(qp, f"{NAME}.context", p.timeout))
        if p.batch_size == 1:   # encode the plan for single queries now, not in the first one
            await asyncio.to_thread(plan.evaluate, he.encrypt(public, torch.zeros(1, features)),
                                    mask=True, context=public)
        await _rehearse_single_query(p, argmax=True, final=False)
    timing = {"he_evaluate": 0.0, "argmax_2pc": 0.0}
    for b, _rows in enumerate(p.batches()):
        query = await ch.recv(qp, f"{NAME}.query", p.timeout)
        if int(query["batch"]) != b:
            raise PeerMisbehaved(qp, f"sent batch {query['batch']}, expected {b}")
        t = time.perf_counter()
        if p.crypto:
            import he
            enc = he.EncryptedBatch.load(public, await rest_of_pieces(ch, qp, f"{NAME}.query",
                                                                       query, p.timeout))
            out, mine = await asyncio.to_thread(plan.evaluate, enc, mask=True, context=public)
            for piece in in_pieces(out.serialize(), batch=b):
                await ch.send(qp, f"{NAME}.answer", piece)
        else:
            with torch.no_grad():
                logits = model(torch.as_tensor(query["x"])).double().numpy()
            mine = randomness.ring(logits.shape)
            await ch.send(qp, f"{NAME}.answer", {"y": encoding.encode(logits) - mine})
        timing["he_evaluate"] += time.perf_counter() - t
        classes = mine.shape[-1] // p.teachers
        onehot = await _timed(timing, "argmax_2pc", _argmax(ch, qp, dealer, p, f"{b}:{ctx.me}",
                                                            per_teacher(mine, p.teachers, classes)))
        await ch.send(pg, f"{NAME}.vote_share", {"batch": b, "share": vote_share(onehot, p.teachers)})
    return RoleResult({"role": "ap", "architecture": arch, "teachers": len(teachers),
                       "test_accuracy": acc, "timing_seconds": {k: round(v, 3) for k, v in timing.items()}})


def _noisy_shares(votes: np.ndarray, p: CapcParams, noise: pate.NoiseSource
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The PG's shares for the final 2PC: its vote-histogram share plus Gaussian noise
    in the ring encoding. Threshold noise is one draw per query, added to every
    class (so to the max)."""
    num_classes = votes.shape[1]
    draws = [pate.confident_gnmax_noise(num_classes, p.sigma_threshold, p.sigma_gnmax, noise)
             if p.threshold is not None else
             pate.ConfidentNoise(0.0, pate.gnmax_noise(num_classes, p.sigma_gnmax, noise))
             for _ in range(len(votes))]
    s_threshold = votes + encoding.encode(np.array([[d.threshold] * num_classes for d in draws]))
    s_argmax = votes + encoding.encode(np.array([d.argmax for d in draws]))
    return s_threshold, s_argmax


async def privacy_guardian(ctx: RoleContext) -> RoleResult:
    p = CapcParams.from_dict(ctx.params)
    ch = ctx.channel
    qp, dealer = ctx.one_with_role("qp"), ctx.one_with_role("dealer")
    budget = ctx.resources.budget
    if budget is None:
        raise ParameterError("the privacy guardian needs its privacy budget "
                             "(Resources.budget: a budget ledger in deployment)")
    noise = noise_source(p)
    if p.noise_seed is None:
        pate.require_secure(noise)
    live_aps = list(ctx.with_role("ap"))
    granted_total = refused_total = 0
    # The cap on answers is fixed before the first query: GNMax is charged for at most
    # max_answers queries, and the final 2PC answers no more than that (it keeps the
    # running count secret-shared with the QP), so the worst case is known in advance:
    # queries x threshold step + max_answers x GNMax step.
    cap = p.max_answers
    charged_answers = 0
    count_share = np.zeros(1, dtype=np.uint64)   # my share of the number answered so far
    await _rehearse_single_query(p, argmax=False, final=True)
    for b, rows in enumerate(p.batches()):
        votes: np.ndarray | None = None
        counted = []
        for ap in list(live_aps):
            try:  # without the QP nobody can use the vote: fail at once if it dies
                msg = await ch.recv(ap, f"{NAME}.vote_share", p.timeout, watch=(qp,))
            except ChannelError as e:
                if getattr(e, "peer", ap) != ap:
                    raise
                live_aps.remove(ap)  # its vote does not count; the QP is told below
                continue
            share = np.asarray(msg["share"], dtype=np.uint64)
            expected = (len(rows), share.shape[-1] if votes is None else votes.shape[1])
            if int(msg["batch"]) != b or share.ndim != 2 or share.shape != expected:
                raise PeerMisbehaved(ap, "sent a malformed vote share")
            votes = share if votes is None else votes + share
            counted.append(ap)
        granted = []
        # No votes, no answer: noise alone would spend budget on a meaningless label.
        for j in range(len(rows) if counted else 0):
            query_id = f"{ch.session}:{b}:{j}"
            may_answer = cap is None or charged_answers < cap
            if p.threshold is None:
                if not may_answer:
                    continue           # GNMax answers every granted query: the cap is reached
                d = budget.request_gnmax(p.sigma_gnmax, query_id)
            elif may_answer:
                d = budget.request_confident_gnmax(p.sigma_threshold, p.sigma_gnmax, query_id)
            else:                      # the 2PC will not answer it: only its threshold step costs
                d = budget.request_threshold(p.sigma_threshold, query_id)
            if d.granted:
                granted.append(j)
                charged_answers += may_answer
        granted_total += len(granted)
        refused_total += len(rows) - len(granted)
        await ch.send(qp, f"{NAME}.decision", {"batch": b, "granted": granted, "aps": counted,
                                              "epsilon": budget.epsilon_spent()})
        if granted:
            s_threshold, s_argmax = _noisy_shares(votes[granted], p, noise)
            out = await _final(ch, qp, dealer, p, f"{b}:final", s_threshold, s_argmax, count_share)
            if out[1] is not None:
                count_share = count_share + out[1].sum(dtype=np.uint64)
            await ch.send(qp, f"{NAME}.reveal", list(out))
    return RoleResult({"role": "pg", "granted": granted_total, "refused": refused_total,
                       "max_answers": cap, "charged_answers": charged_answers,
                       "epsilon": budget.epsilon_spent(), "delta": budget.delta,
                       "budget": budget.epsilon_budget, "noise": repr(noise)})


async def dealer(ctx: RoleContext) -> RoleResult:
    p = CapcParams.from_dict(ctx.params)
    if not p.crypto:
        return RoleResult({"role": "dealer", "sessions": 0})
    from mpc.twopc import Dealer
    qp = ctx.one_with_role("qp")
    serving = Dealer(ctx.channel, prefix=NAME, timeout=p.timeout)
    sessions: list[asyncio.Task] = []
    try:
        while True:
            order = await ctx.channel.recv(qp, f"{NAME}.schedule", p.timeout)
            if order.get("done"):
                break
            a, b = order["pair"]
            if qp not in (a, b) or a == b or {a, b} - set(ctx.roles):
                raise PeerMisbehaved(qp, f"asked the dealer to serve an invalid pair {order['pair']}")
            sessions.append(asyncio.create_task(serving.serve((a, b), tag=str(order.get("tag", "")))))
    except BaseException:
        for task in sessions:
            task.cancel()
        raise
    outcomes = await asyncio.gather(*sessions, return_exceptions=True)
    for got in outcomes:
        if isinstance(got, BaseException) and not isinstance(got, ChannelError):
            raise got
    failed = sum(isinstance(got, ChannelError) for got in outcomes)  # a party of it dropped out
    return RoleResult({"role": "dealer", "sessions": len(outcomes) - failed, "failed_sessions": failed})


ROLES = {"qp": querying_party, "ap": answering_party, "pg": privacy_guardian, "dealer": dealer}
