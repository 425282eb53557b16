"""One 2PC session between two named parties (:class:`TwoParty`), tuples from a dealer.

Helpers turn each party's additive share (uint64 ring elements, :mod:`mpc.encoding`)
into a CrypTen tensor and back; :func:`argmax_onehot` is the 2PC that CaPC needs:
each party inputs its share of a logit vector and gets back its share of the
one-hot argmax, nobody seeing the argmax.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .. import additive
from ..channel import Channel
from ..encoding import PRECISION_BITS
from .communicator import Abort, ChannelCommunicator, TwoPartyError
from .provider import DealerProvider, computation_key
from .shims import MPCTensor, local, new_session_seeds


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
        self._thread: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> TwoParty:
        loop = asyncio.get_running_loop()
        self._comm = ChannelCommunicator(self.channel, loop, self.names,
                                         f"{self.prefix}.crypten", self.timeout,
                                         watch=(self.dealer,))
        self._provider = DealerProvider(self._comm, self.dealer, self.prefix, self.tag)
        # A session's own thread, not one of the loop's shared pool: it blocks on the
        # channel for the whole 2PC, and a party running many sessions at once (a
        # querying party with every answering party) would starve the pool.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"2pc-{self.peer}")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._provider is not None:
                await self._in_thread(self._provider.done)
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=False)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, plan_key: tuple | None = None
                         ) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, functools.partial(self._in_context, fn, *args, plan_key=plan_key))

    def _in_context(self, fn: Callable[..., Any], *args: Any, plan_key: tuple | None = None) -> Any:
        local.comm, local.provider = self._comm, self._provider
        local.generators = getattr(self, "_generators", None)
        try:
            if not self._seeded:
                # Fresh PRZS seeds for this session, exchanged over the channel;
                # CrypTen draws them from os.urandom.
                new_session_seeds()
                self._generators, self._seeded = local.generators, True
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
        except Abort as a:
            raise a.error from None
        finally:
            local.comm = local.provider = local.generators = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (CrypTen code) as this party of the 2PC, in a worker thread."""
        if self._comm is None:
            raise TwoPartyError("use 'async with TwoParty(...) as tp:' before tp.run(...)")
        return await self._in_thread(fn, *args, plan_key=computation_key(fn, args))

    @property
    def stats(self) -> dict[str, int]:
        """Messages and payload bytes this party sent to its peer, tuples it got from
        the dealer, and the round trips to the dealer that took."""
        c, p = self._comm, self._provider
        return {"messages": c.messages if c else 0, "bytes": c.bytes if c else 0,
                "dealer_requests": p.requests if p else 0,
                "dealer_round_trips": p.round_trips if p else 0}


def onehot_argmax_share(share: np.ndarray) -> np.ndarray:
    """Inside :meth:`TwoParty.run`: this party's share of the one-hot argmax (last
    axis) of the logits whose share it holds."""
    return share_of(tensor_from_shares(share).argmax(dim=-1, one_hot=True))


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
        return await tp.run(onehot_argmax_share, share)
