"""CrypTen's tuple provider, fetching each party's shares from the dealer (:mod:`.dealer`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .communicator import Abort, ChannelCommunicator, TwoPartyError
from .inbox import recv_tagged
from .shims import ArithmeticSharedTensor, BinarySharedTensor, TupleProvider


def _size(s) -> list[int]:
    return [int(d) for d in s]


# Per process: the dealer requests each computation made last time, keyed by the
# function and the shapes of its arguments. CrypTen's sequence of requests depends
# only on those (never on secret values), so a repeat can be fetched in one round trip.
_PLANS: dict[tuple, list[dict]] = {}
_PLANS_KEPT = 64


def computation_key(fn: Callable[..., Any], args: tuple) -> tuple:
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
        # If the other party of the 2PC dies, the dealer will never answer: fail at once.
        got = await recv_tagged(ch, self.dealer, f"{self.prefix}.tuple", self.tag,
                                self.comm.timeout, watch=(self.comm.peer,))
        got = got if isinstance(got, dict) else {}
        if "error" in got:   # the dealer ended the session (e.g. the two computations diverged)
            raise TwoPartyError(f"dealer '{self.dealer}' ended this 2PC: {got['error']}")
        return got

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
        got = self.comm._call(self._ask(req)).get("shares")
        if not isinstance(got, list):
            raise Abort(TwoPartyError(f"dealer '{self.dealer}' sent a malformed answer to a "
                                      f"{req['fn']} request"))
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
