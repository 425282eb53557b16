"""CrypTen glue: the ONE module of Confidant that touches CrypTen internals.

What it does, and why each piece is here:

* Import shims. CrypTen 0.4.1 imports ``torch.onnx._internal.registration``,
  which moved in recent PyTorch; we alias it before importing CrypTen.
* Thread-local CrypTen state. CrypTen keeps a process-global communicator,
  tuple provider and RNG generators. We route all three through thread-locals
  so several CrypTen parties can run as threads of one process (tests, the
  in-memory simulation) and so a 2PC never touches another one's state.
* :class:`ChannelCommunicator`: a CrypTen communicator that carries every
  CrypTen message over a :class:`mpc.channel.Channel`. CrypTen is synchronous,
  so it runs in a worker thread and blocks on the channel's event loop. Between
  processes, the traffic flows through the broker and into the transcripts.
* :class:`DealerProvider` and :func:`serve_dealer`: Beaver triples and the other
  correlated randomness come from a dealer role that takes no other part in the
  2PC, instead of CrypTen's trusted-first-party provider (whose party 0 knows
  every triple). The dealer draws everything from the OS random source. Trust
  assumption (SECURITY.md): the dealer does not collude with either party.
  A computation that ran before in this process fetches all its tuples in one
  round trip (a *plan*); CrypTen's batched reveals travel as one message.
* :class:`TwoParty`: one 2PC session between two named parties, with helpers to
  turn each party's additive share (uint64 ring elements, :mod:`mpc.encoding`)
  into a CrypTen tensor and back, and :func:`argmax_onehot`, the 2PC that CaPC
  needs: each party inputs its share of a logit vector and gets back its share
  of the one-hot argmax, nobody seeing the argmax.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import additive
from .channel import Channel, ChannelError
from .encoding import PRECISION_BITS

# --- import shim (torch >= 2.9 moved the ONNX registration module) -----------
_OLD_ONNX = "torch.onnx._internal.registration"
if _OLD_ONNX not in sys.modules:
    try:
        importlib.import_module(_OLD_ONNX)
    except ImportError:
        sys.modules[_OLD_ONNX] = importlib.import_module(
            "torch.onnx._internal.torchscript_exporter.registration")

import crypten  # noqa: E402
import crypten.communicator as _crypten_comm  # noqa: E402
import crypten.mpc as _crypten_mpc  # noqa: E402
from crypten.common.util import count_wraps  # noqa: E402
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402  (CrypTen's config library)

MPCTensor = crypten.mpc.MPCTensor


class TwoPartyError(ChannelError):
    """A 2PC could not run: bad arguments, a dealer mismatch, or a peer failure."""


# --- thread-local CrypTen state ------------------------------------------------
_tls = threading.local()


def _current_comm():
    comm = getattr(_tls, "comm", None)
    if comm is None:
        raise RuntimeError("no CrypTen 2PC is running in this thread; use mpc.crypten_glue.TwoParty")
    return comm


def _current_provider():
    provider = getattr(_tls, "provider", None)
    if provider is None:
        raise RuntimeError("no CrypTen 2PC is running in this thread; use mpc.crypten_glue.TwoParty")
    return provider


class _ThreadLocalGenerators:
    """Stands in for one of ``crypten.generators``' per-device dicts."""

    def __init__(self, key: str):
        self.key = key

    def _dict(self) -> dict:
        gens = getattr(_tls, "generators", None)
        if gens is None:
            gens = _tls.generators = {k: {} for k in ("prev", "next", "local", "global")}
        return gens[self.key]

    def __getitem__(self, device):
        return self._dict()[device]

    def __setitem__(self, device, generator) -> None:
        self._dict()[device] = generator

    def keys(self):
        return self._dict().keys()


_crypten_comm.get = _current_comm
_crypten_comm.is_initialized = lambda: getattr(_tls, "comm", None) is not None
_crypten_mpc.get_default_provider = _current_provider
for _key in list(crypten.generators):
    crypten.generators[_key] = _ThreadLocalGenerators(_key)


# CrypTen switches its global config inside computations (e.g. argmax runs parts
# with cfg.temp_override({"functions.max_method": "pairwise"})). With two parties
# as threads of one process, one party would see the other's override and run a
# different algorithm, and the 2PC would diverge. Overrides become per thread.
def _cfg_get(self):
    override = getattr(_tls, "cfg_override", None)
    return override if override is not None else self.__dict__["_confidant_config"]


def _cfg_set(self, value) -> None:
    self.__dict__["_confidant_config"] = value


@contextlib.contextmanager
def _cfg_temp_override(self, override_dict):
    old = getattr(_tls, "cfg_override", None)
    update = OmegaConf.from_dotlist([f"{k}={v}" for k, v in override_dict.items()])
    _tls.cfg_override = OmegaConf.merge(self.config, update)
    try:
        yield
    finally:
        _tls.cfg_override = old


_CfgClass = type(crypten.cfg)
if not isinstance(_CfgClass.__dict__.get("config"), property):
    crypten.cfg.__dict__["_confidant_config"] = crypten.cfg.__dict__.pop("config")
    _CfgClass.config = property(_cfg_get, _cfg_set)
    _CfgClass.temp_override = _cfg_temp_override


# --- the communicator ------------------------------------------------------------
class _Done:
    def is_completed(self) -> bool:
        return True

    def wait(self) -> None:
        return None


class ChannelCommunicator(_crypten_comm.Communicator):
    """CrypTen's communicator interface for exactly two parties over a Channel."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop, names: tuple[str, str],
                 kind: str, timeout: float):
        self.channel, self.loop, self.names, self.kind, self.timeout = (
            channel, loop, names, kind, timeout)
        self.rank = names.index(channel.me)
        self.peer = names[1 - self.rank]
        self.messages = 0
        self.bytes = 0
        self.reset_communication_stats()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _check(self, other: int) -> None:
        if other != 1 - self.rank:
            raise TwoPartyError(f"CrypTen addressed rank {other}; only ranks 0 and 1 exist")

    def send(self, tensor, dst):
        self._check(dst)
        data = tensor.detach().cpu().numpy()
        self.messages += 1
        self.bytes += data.nbytes
        self._call(self.channel.send(self.peer, self.kind, data))

    def recv(self, tensor, src=None):
        if src is not None:
            self._check(src)
        return self._fill(tensor, self._call(self.channel.recv(self.peer, self.kind, self.timeout)))

    def _fill(self, tensor, data):
        if not isinstance(data, np.ndarray) or data.size != tensor.numel():
            raise TwoPartyError(f"party '{self.peer}' sent a malformed 2PC message")
        tensor.copy_(torch.from_numpy(data).reshape(tensor.shape).to(tensor.dtype))
        return tensor

    def isend(self, tensor, dst):
        self.send(tensor, dst)
        return _Done()

    def irecv(self, tensor, src=None):
        comm = self

        class _Pending:
            def is_completed(self) -> bool:
                return False

            def wait(self) -> None:
                comm.recv(tensor, src)

        return _Pending()

    def _exchange(self, tensor):
        """Send ours, receive theirs; returns [rank0's, rank1's]."""
        theirs = self._exchange_many([tensor])[0]
        return [tensor, theirs] if self.rank == 0 else [theirs, tensor]

    def _exchange_many(self, tensors: list) -> list:
        """Send all of ours in ONE message, receive theirs: one round, however many
        tensors (CrypTen reveals e.g. both Beaver masks of a product together)."""
        data = [t.detach().cpu().numpy() for t in tensors]
        self.messages += 1
        self.bytes += sum(d.nbytes for d in data)

        async def send_then_recv():  # one hand-off to the event loop, not two
            await self.channel.send(self.peer, self.kind, data)
            return await self.channel.recv(self.peer, self.kind, self.timeout)

        got = self._call(send_then_recv())
        if not isinstance(got, list) or len(got) != len(tensors):
            raise TwoPartyError(f"party '{self.peer}' sent a malformed 2PC message")
        return [self._fill(torch.empty_like(t), d) for t, d in zip(tensors, got, strict=True)]

    @staticmethod
    def _combine(a, b, op):
        return a ^ b if op is not None and "BXOR" in str(op) else a + b

    def all_reduce(self, tensor, op=None, async_op=False, batched=False):
        if batched:
            theirs = self._exchange_many(list(tensor))
            return [self._combine(t, o, op) for t, o in zip(tensor, theirs, strict=True)]
        a, b = self._exchange(tensor)
        return self._combine(a, b, op)

    def reduce(self, tensor, dst, op=None, async_op=False, batched=False):
        if batched:
            return [self.reduce(t, dst, op) for t in tensor]
        if dst == self.rank:
            return self._combine(tensor, self.recv(torch.empty_like(tensor), 1 - self.rank), op)
        self.send(tensor, dst)
        return None

    def all_gather(self, tensor, async_op=False):
        return self._exchange(tensor)

    def gather(self, tensor, dst, async_op=False):
        if dst == self.rank:
            theirs = self.recv(torch.empty_like(tensor), 1 - self.rank)
            return [tensor, theirs] if self.rank == 0 else [theirs, tensor]
        self.send(tensor, dst)
        return [None, None]

    def broadcast(self, tensor, src, async_op=False):
        if src == self.rank:
            self.send(tensor, 1 - self.rank)
            return tensor
        return self.recv(tensor, src)

    def scatter(self, scatter_list, src, size=None, async_op=False):
        if src == self.rank:
            self.send(scatter_list[1 - self.rank], 1 - self.rank)
            return scatter_list[self.rank]
        return self.recv(torch.empty(size, dtype=torch.long), src)

    def barrier(self):
        self._exchange(torch.zeros(1, dtype=torch.long))

    def send_obj(self, obj, dst):  # CrypTen pickles objects: never from a peer
        raise TwoPartyError("object messages (pickle) are not allowed between parties")

    recv_obj = broadcast_obj = send_obj

    def get_world_size(self):
        return 2

    def get_rank(self):
        return self.rank

    def get_name(self):
        return self.channel.me

    def set_name(self, name):
        raise TwoPartyError("party names come from the Channel")


# --- dealer of correlated randomness -----------------------------------------------
_TRIPLE_OPS = {"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"}


def _random_long(shape) -> torch.Tensor:
    return torch.from_numpy(additive.random_ring(tuple(shape)).view(np.int64))


def _split_arith(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    s0 = _random_long(x.shape)
    return s0.numpy(), (x - s0).numpy()


def _split_binary(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    s0 = _random_long(x.shape)
    return s0.numpy(), (x ^ s0).numpy()


def _make_tuple(req: dict) -> list[list[np.ndarray]]:
    """Correlated randomness for one request: per party, a list of share arrays."""
    fn = req.get("fn")
    if fn == "generate_additive_triple":
        if req.get("op") not in _TRIPLE_OPS:
            raise TwoPartyError(f"dealer refuses triple op {req.get('op')!r}")
        a, b = _random_long(req["size0"]), _random_long(req["size1"])
        c = getattr(torch, req["op"])(a, b, *req.get("args", []), **req.get("kwargs", {}))
        parts = [_split_arith(a), _split_arith(b), _split_arith(c)]
    elif fn == "square":
        r = _random_long(req["size"])
        parts = [_split_arith(r), _split_arith(r * r)]
    elif fn == "generate_binary_triple":
        a, b = _random_long(req["size0"]), _random_long(req["size1"])
        parts = [_split_binary(a), _split_binary(b), _split_binary(a & b)]
    elif fn == "wrap_rng":
        r0, r1 = _random_long(req["size"]), _random_long(req["size"])
        theta = count_wraps([r0, r1])
        parts = [(r0.numpy(), r1.numpy()), _split_arith(theta)]
    elif fn == "B2A_rng":
        bit = _random_long(req["size"]) & 1
        parts = [_split_arith(bit), _split_binary(bit)]
    else:
        raise TwoPartyError(f"dealer got an unknown request {fn!r}")
    return [[p[0] for p in parts], [p[1] for p in parts]]


# The dealer answers a whole plan in one message up to this many bytes of shares.
PLAN_MAX_BYTES = 16 * 2**20
PLAN_MAX_REQUESTS = 100_000


def _serve_plan(a: dict, b: dict) -> list[list[list[np.ndarray]]] | None:
    """Both parties' shares for every request of a plan they both announced, or None
    (the plans differ, are malformed or too large: the parties then ask one by one)."""
    plan = a.get("reqs")
    if plan != b.get("reqs") or not isinstance(plan, list) or not 0 < len(plan) <= PLAN_MAX_REQUESTS:
        return None
    out: list[list[list[np.ndarray]]] = [[], []]
    size = 0
    for req in plan:
        if not isinstance(req, dict):
            return None
        shares = _make_tuple(req)
        size += sum(x.nbytes for x in shares[0])
        if size > PLAN_MAX_BYTES:
            return None
        out[0].append(shares[0])
        out[1].append(shares[1])
    return out


async def serve_dealer(channel: Channel, parties: tuple[str, str], prefix: str = "mpc",
                       timeout: float | None = 60.0, tag: str = "") -> int:
    """Serve correlated randomness to one 2PC session until both parties say done.

    Both parties send the same request stream; the dealer answers a request only
    when both agree on it, and sends each party only its own shares. Requests
    carry the session's ``tag``; leftovers of an earlier session that was cut
    short (a party died mid-2PC) are skipped. Returns the number of requests served.

    A party that has run the same computation before may announce its whole
    request sequence at once (a *plan*, see :class:`DealerProvider`); when both
    announce the same plan the dealer answers it in one message per party, and
    otherwise refuses it, after which the parties ask one request at a time.
    """
    kind = f"{prefix}.tuple"

    async def next_request(p: str) -> dict:
        req = await channel.recv(p, f"{prefix}.tuple_req", timeout)
        while req.get("tag", "") != tag:  # stale: from an aborted session
            req = await channel.recv(p, f"{prefix}.tuple_req", timeout)
        return req

    served = 0
    while True:
        reqs = [await next_request(p) for p in parties]
        planned = [r.get("fn") == "plan" for r in reqs]
        if all(planned) and (shares := _serve_plan(reqs[0], reqs[1])) is not None:
            for party, mine in zip(parties, shares, strict=True):
                await channel.send(party, kind, {"plan": mine})
            served += len(shares[0])
            continue
        for i, p in enumerate(parties):
            if planned[i]:
                await channel.send(p, kind, {"refused": "the other party has no matching plan"})
                reqs[i] = await next_request(p)
        if reqs[0] != reqs[1]:
            raise TwoPartyError(f"2PC parties {parties[0]!r} and {parties[1]!r} asked the dealer "
                                "for different tuples; their computations diverged")
        if reqs[0].get("fn") == "done":
            return served
        shares = _make_tuple(reqs[0])
        for party, mine in zip(parties, shares, strict=True):
            await channel.send(party, kind, mine)
        served += 1


def _size(s) -> list[int]:
    return [int(d) for d in s]


# Per process: the dealer requests each computation made last time, keyed by the
# function and the shapes of its arguments. CrypTen's sequence of requests depends
# only on those (never on secret values), so a repeat can be fetched in one round trip.
_PLANS: dict[tuple, list[dict]] = {}
_PLANS_KEPT = 64


def _plan_key(fn: Callable[..., Any], args: tuple) -> tuple:
    def describe(a: Any) -> Any:
        if isinstance(a, (np.ndarray, torch.Tensor)):
            return ("array", tuple(a.shape), str(a.dtype))
        if a is None or isinstance(a, (bool, int, float, str)):
            return repr(a)
        return type(a).__qualname__
    return (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn)),
            tuple(describe(a) for a in args))


class DealerProvider(TupleProvider):
    """CrypTen tuple provider that fetches each party's shares from the dealer.

    The first time a computation runs, each tuple costs one round trip to the
    dealer. The requests are remembered (:data:`_PLANS`); the next time the same
    computation runs, the first request announces the whole plan and the dealer
    answers it at once, if the peer announced the same plan. Should the
    computation ask for something else than planned, the rest of the plan is
    dropped and requests go one by one again.
    """

    NAME = "confidant-dealer"

    def __init__(self, comm: ChannelCommunicator, dealer: str, prefix: str, tag: str = ""):
        super().__init__()
        self.comm, self.dealer, self.prefix, self.tag = comm, dealer, prefix, tag
        self.requests = 0       # tuples used
        self.round_trips = 0    # messages to the dealer that waited for an answer
        self._key: tuple | None = None
        self._log: list[dict] | None = None
        self._plan: list[dict] | None = None
        self._prefetched: list | None = None
        self._cursor = 0

    def begin(self, key: tuple | None) -> None:
        """A computation starts: record its requests, and use its plan if there is one."""
        self._key, self._log, self._cursor, self._prefetched = key, [], 0, None
        self._plan = _PLANS.get(key) if key is not None else None

    def end(self, ok: bool) -> None:
        if ok and self._key is not None and self._log:
            _PLANS.pop(self._key, None)
            _PLANS[self._key] = self._log
            while len(_PLANS) > _PLANS_KEPT:
                del _PLANS[next(iter(_PLANS))]
        self._key = self._log = self._plan = self._prefetched = None

    async def _ask(self, req: dict) -> Any:
        ch = self.comm.channel
        await ch.send(self.dealer, f"{self.prefix}.tuple_req", {**req, "tag": self.tag})
        return await ch.recv(self.dealer, f"{self.prefix}.tuple", self.comm.timeout)

    def _fetch(self, req: dict) -> list[torch.Tensor]:
        self.requests += 1
        if self._log is not None:
            self._log.append(req)
        if self._plan is not None and self._prefetched is None:
            self.round_trips += 1
            got = self.comm._call(self._ask({"fn": "plan", "reqs": self._plan}))
            if isinstance(got, dict) and isinstance(got.get("plan"), list) \
                    and len(got["plan"]) == len(self._plan):
                self._prefetched = got["plan"]
            else:  # refused: the peer has no such plan
                self._plan = None
        if self._plan is not None:
            if self._cursor < len(self._plan) and self._plan[self._cursor] == req:
                self._cursor += 1
                return [torch.from_numpy(np.asarray(a)) for a in self._prefetched[self._cursor - 1]]
            self._plan = self._prefetched = None  # the computation went another way
        self.round_trips += 1
        got = self.comm._call(self._ask(req))
        if not isinstance(got, list):
            raise TwoPartyError(f"dealer '{self.dealer}' sent a malformed answer to a {req['fn']} request")
        return [torch.from_numpy(np.asarray(a)) for a in got]

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        a, b, c = self._fetch({"fn": "generate_additive_triple", "size0": _size(size0),
                               "size1": _size(size1), "op": op, "args": list(args),
                               "kwargs": dict(kwargs)})
        return tuple(ArithmeticSharedTensor.from_shares(x, precision=0) for x in (a, b, c))

    def square(self, size, device=None):
        r, r2 = self._fetch({"fn": "square", "size": _size(size)})
        return (ArithmeticSharedTensor.from_shares(r, precision=0),
                ArithmeticSharedTensor.from_shares(r2, precision=0))

    def generate_binary_triple(self, size0, size1, device=None):
        a, b, c = self._fetch({"fn": "generate_binary_triple", "size0": _size(size0),
                               "size1": _size(size1)})
        return tuple(BinarySharedTensor.from_shares(x) for x in (a, b, c))

    def wrap_rng(self, size, device=None):
        r, theta = self._fetch({"fn": "wrap_rng", "size": _size(size)})
        return (ArithmeticSharedTensor.from_shares(r, precision=0),
                ArithmeticSharedTensor.from_shares(theta, precision=0))

    def B2A_rng(self, size, device=None):
        ra, rb = self._fetch({"fn": "B2A_rng", "size": _size(size)})
        return ArithmeticSharedTensor.from_shares(ra, precision=0), BinarySharedTensor.from_shares(rb)

    def done(self) -> None:
        self.comm._call(self.comm.channel.send(self.dealer, f"{self.prefix}.tuple_req",
                                               {"fn": "done", "tag": self.tag}))


# --- the 2PC session ---------------------------------------------------------------
def tensor_from_shares(share: np.ndarray, precision_bits: int = PRECISION_BITS) -> MPCTensor:
    """This party's additive share (uint64 ring elements) as its half of a CrypTen tensor.

    Call inside :meth:`TwoParty.run`; the peer calls it with its own share.
    No communication: the shares are already a valid CrypTen sharing.
    """
    ring = additive.as_ring(share)
    return MPCTensor.from_shares(torch.from_numpy(ring.view(np.int64).copy()),
                                 precision=precision_bits)


def share_of(tensor: MPCTensor, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """This party's share of a CrypTen tensor as uint64 ring elements at ``precision_bits``."""
    scale, target = int(tensor.encoder.scale), 2 ** precision_bits
    if target % scale:
        raise TwoPartyError(f"tensor has scale {scale}, which does not divide 2^{precision_bits}")
    # Multiplying a share by a public constant is local; it rescales e.g. CrypTen's
    # integer (scale 1) comparison results to the common fixed-point scale.
    share = tensor.share.detach().to(torch.long) * (target // scale)
    return share.numpy().view(np.uint64).copy()


class TwoParty:
    """One CrypTen 2PC session between ``channel.me`` and ``peer``, tuples from ``dealer``.

    Rank 0 is the party whose name sorts first. Use as an async context manager;
    on exit both parties tell the dealer they are done. Messages use the kinds
    ``<prefix>.crypten`` (peer to peer), ``<prefix>.tuple_req`` and
    ``<prefix>.tuple`` (with the dealer), so a protocol can declare them in its
    conformance rules.
    """

    def __init__(self, channel: Channel, peer: str, dealer: str, prefix: str = "mpc",
                 timeout: float | None = 60.0, tag: str = ""):
        if peer == channel.me or dealer in (channel.me, peer):
            raise TwoPartyError("the 2PC needs two distinct parties and a dealer that is neither")
        self.channel, self.peer, self.dealer, self.prefix, self.timeout, self.tag = (
            channel, peer, dealer, prefix, timeout, tag)
        self.names = tuple(sorted((channel.me, peer)))
        self._comm: ChannelCommunicator | None = None
        self._provider: DealerProvider | None = None
        self._seeded = False

    async def __aenter__(self) -> TwoParty:
        loop = asyncio.get_running_loop()
        self._comm = ChannelCommunicator(self.channel, loop, self.names,
                                         f"{self.prefix}.crypten", self.timeout)
        self._provider = DealerProvider(self._comm, self.dealer, self.prefix, self.tag)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._provider is not None:
            await asyncio.to_thread(self._in_context, self._provider.done)

    def _in_context(self, fn: Callable[..., Any], *args: Any, plan_key: tuple | None = None) -> Any:
        _tls.comm, _tls.provider = self._comm, self._provider
        _tls.generators = getattr(self, "_generators", None)
        try:
            if not self._seeded:
                # Fresh PRZS seeds for this session, exchanged over the channel;
                # CrypTen draws them from os.urandom.
                crypten._setup_prng()
                self._generators, self._seeded = _tls.generators, True
            if plan_key is None:
                return fn(*args)
            self._provider.begin(plan_key)
            ok = False
            try:
                result = fn(*args)
                ok = True
                return result
            finally:
                self._provider.end(ok)
        finally:
            _tls.comm = _tls.provider = _tls.generators = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (CrypTen code) as this party of the 2PC, in a worker thread."""
        if self._comm is None:
            raise TwoPartyError("use 'async with TwoParty(...) as tp:' before tp.run(...)")
        return await asyncio.to_thread(self._in_context, fn, *args, plan_key=_plan_key(fn, args))

    @property
    def stats(self) -> dict[str, int]:
        """Messages and payload bytes this party sent to its peer, tuples it got from
        the dealer, and the round trips to the dealer that took."""
        c, p = self._comm, self._provider
        return {"messages": c.messages if c else 0, "bytes": c.bytes if c else 0,
                "dealer_requests": p.requests if p else 0,
                "dealer_round_trips": p.round_trips if p else 0}


def _argmax_onehot_local(share: np.ndarray) -> np.ndarray:
    x = tensor_from_shares(share)
    return share_of(x.argmax(dim=-1, one_hot=True))


async def argmax_onehot(channel: Channel, peer: str, dealer: str, share: np.ndarray,
                        prefix: str = "mpc", timeout: float | None = 60.0) -> np.ndarray:
    """2PC argmax over the last axis; returns this party's share of the one-hot result.

    ``share`` is this party's additive share (uint64, fixed point at 16 bits, see
    :mod:`mpc.encoding`) of logits of shape ``[..., classes]``. The returned
    shares sum (mod 2^64) to the one-hot of the argmax, encoded at 16 bits.
    Ties: CrypTen picks one of the tied maxima uniformly at random, so the result
    is always exactly one-hot.
    """
    share = additive.as_ring(share)
    if share.ndim < 1 or share.shape[-1] < 1:
        raise TwoPartyError(f"argmax needs at least one class, got shape {share.shape}")
    async with TwoParty(channel, peer, dealer, prefix, timeout) as tp:
        return await tp.run(_argmax_onehot_local, share)
