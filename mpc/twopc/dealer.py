"""The dealer of correlated randomness: Beaver triples and the other tuples a
2PC needs, drawn from the OS random source (:mod:`mpc.randomness`), served by a
role that takes no other part in the 2PC (instead of CrypTen's trusted-first-party
provider, whose party 0 knows every triple). Trust assumption (SECURITY.md): the
dealer does not collude with either party.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import torch

from ..channel import Channel, ChannelError
from .communicator import TwoPartyError
from .inbox import recv_tagged
from .shims import count_wraps, random_ring

_TRIPLE_OPS = {"mul", "matmul", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"}


def _split_arith(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    s0 = random_ring(x.shape)
    return s0.numpy(), (x - s0).numpy()


def _split_binary(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    s0 = random_ring(x.shape)
    return s0.numpy(), (x ^ s0).numpy()


def _make_tuple(req: dict) -> list[list[np.ndarray]]:
    """Correlated randomness for one request: per party, a list of share arrays."""
    fn = req.get("fn")
    if fn == "generate_additive_triple":
        if req.get("op") not in _TRIPLE_OPS:
            raise TwoPartyError(f"dealer refuses triple op {req.get('op')!r}")
        a, b = random_ring(req["size0"]), random_ring(req["size1"])
        c = getattr(torch, req["op"])(a, b, *req.get("args", []), **req.get("kwargs", {}))
        parts = [_split_arith(a), _split_arith(b), _split_arith(c)]
    elif fn == "square":
        r = random_ring(req["size"])
        parts = [_split_arith(r), _split_arith(r * r)]
    elif fn == "generate_binary_triple":
        a, b = random_ring(req["size0"]), random_ring(req["size1"])
        parts = [_split_binary(a), _split_binary(b), _split_binary(a & b)]
    elif fn == "wrap_rng":
        r0, r1 = random_ring(req["size"]), random_ring(req["size"])
        theta = count_wraps([r0, r1])
        parts = [(r0.numpy(), r1.numpy()), _split_arith(theta)]
    elif fn == "B2A_rng":
        bit = random_ring(req["size"]) & 1
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


class Dealer:
    """Serves one protocol run's 2PC sessions, several at once if asked.

    Both parties of a session send the same request stream; the dealer answers a
    request only when both agree on it, and sends each party only its own shares.
    It waits for both parties at once, so a party that dies fails the session at
    once (PeerGone) instead of after the other party's timeout. Requests and answers
    carry their session's ``tag`` (:mod:`.inbox`), so concurrent sessions with a
    common party (a querying party and every answering party) do not mix, and a
    session a party gave up leaves the others unharmed.

    A party that has run the same computation before may announce its whole
    request sequence at once (a *plan*, see :class:`DealerProvider`); when both
    announce the same plan the dealer answers it in one message per party, and
    otherwise refuses it, after which the parties ask one request at a time.
    """

    def __init__(self, channel: Channel, prefix: str = "mpc", timeout: float | None = 60.0):
        self.channel, self.prefix, self.timeout = channel, prefix, timeout

    async def serve(self, parties: tuple[str, str], tag: str = "") -> int:
        """Serve the session ``tag`` between ``parties``; returns the requests served.

        If the session fails here (the computations diverged, a bad request, a party
        gone or silent), both parties are told why, so neither waits for a tuple that
        will not come; then the error is raised."""
        try:
            return await self._serve(parties, tag)
        except ChannelError as e:
            for party in parties:
                with contextlib.suppress(ChannelError):
                    await self.channel.send(party, f"{self.prefix}.tuple",
                                            {"tag": tag, "error": str(e)})
            raise

    async def _request(self, party: str, tag: str) -> dict:
        return await recv_tagged(self.channel, party, f"{self.prefix}.tuple_req", tag, self.timeout)

    async def _requests(self, parties: tuple[str, ...], tag: str) -> list[dict]:
        """One request from each party, waiting for all at once; the first failure wins."""
        tasks = [asyncio.ensure_future(self._request(p, tag)) for p in parties]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:  # safe: a cancelled receive loses no message
                t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()
        return [t.result() for t in tasks]

    async def _serve(self, parties: tuple[str, str], tag: str) -> int:
        kind = f"{self.prefix}.tuple"
        served = 0
        while True:
            reqs = await self._requests(parties, tag)
            planned = [r.get("fn") == "plan" for r in reqs]
            if all(planned) and (shares := _serve_plan(reqs[0], reqs[1])) is not None:
                for party, mine in zip(parties, shares, strict=True):
                    await self.channel.send(party, kind, {"tag": tag, "plan": mine})
                served += len(shares[0])
                continue
            for i, p in enumerate(parties):
                if planned[i]:
                    await self.channel.send(p, kind, {"tag": tag, "refused": "the other party has "
                                                                             "no matching plan"})
                    reqs[i] = (await self._requests((p,), tag))[0]
            if reqs[0] != reqs[1]:
                raise TwoPartyError(f"2PC parties {parties[0]!r} and {parties[1]!r} asked the "
                                    "dealer for different tuples; their computations diverged")
            if reqs[0].get("fn") == "done":
                return served
            shares = _make_tuple(reqs[0])
            for party, mine in zip(parties, shares, strict=True):
                await self.channel.send(party, kind, {"tag": tag, "shares": mine})
            served += 1


async def serve_dealer(channel: Channel, parties: tuple[str, str], prefix: str = "mpc",
                       timeout: float | None = 60.0, tag: str = "") -> int:
    """Serve one 2PC session (see :class:`Dealer`); returns the number of requests served."""
    return await Dealer(channel, prefix, timeout).serve(parties, tag)
