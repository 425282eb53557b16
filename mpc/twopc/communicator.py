"""A CrypTen communicator that carries every 2PC message over a :class:`mpc.channel.Channel`.

CrypTen is synchronous, so a 2PC runs in a worker thread and blocks on the
channel's event loop. Between processes, the traffic flows through the broker
and into the transcripts like every other message.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from ..channel import Channel, ChannelError
from .shims import Communicator


class TwoPartyError(ChannelError):
    """A 2PC could not run: bad arguments, a dealer mismatch, or a peer failure."""


class Abort(BaseException):
    """A 2PC failure on its way out of CrypTen, turned back into ``error`` by
    :class:`~mpc.twopc.session.TwoParty`.

    CrypTen catches RuntimeError in places (its A2B conversion retries another
    algorithm, taking any RuntimeError for out-of-memory). A ChannelError is a
    RuntimeError: raised inside CrypTen it would be swallowed, and this party would
    go on with a computation out of step with its peer's. A BaseException is not caught.
    """

    def __init__(self, error: ChannelError):
        super().__init__(str(error))
        self.error = error


class _Done:
    def is_completed(self) -> bool:
        return True

    def wait(self) -> None:
        return None


class ChannelCommunicator(Communicator):
    """CrypTen's communicator interface for exactly two parties over a Channel."""

    BYTES_PER_ELEMENT = 8

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop, names: tuple[str, str],
                 kind: str, timeout: float, watch: tuple[str, ...] = ()):
        self.channel, self.loop, self.names, self.kind, self.timeout = (
            channel, loop, names, kind, timeout)
        self.rank = names.index(channel.me)
        self.peer = names[1 - self.rank]
        self.watch = watch  # e.g. the dealer: if it dies, the peer waits forever too
        self.messages = 0
        self.bytes = 0
        self.reset_communication_stats()

    def _call(self, coro):
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        except ChannelError as e:
            raise Abort(e) from None

    def _check(self, other: int) -> None:
        if other != 1 - self.rank:
            raise Abort(TwoPartyError(f"CrypTen addressed rank {other}; only ranks 0 and 1 exist"))

    def send(self, tensor, dst):
        self._check(dst)
        data = tensor.detach().cpu().numpy()
        self.messages += 1
        self.bytes += data.nbytes
        self._call(self.channel.send(self.peer, self.kind, data))

    def recv(self, tensor, src=None):
        if src is not None:
            self._check(src)
        got = self._call(self.channel.recv(self.peer, self.kind, self.timeout, watch=self.watch))
        return self._fill(tensor, got)

    def _fill(self, tensor, data):
        if not isinstance(data, np.ndarray) or data.size != tensor.numel():
            raise Abort(TwoPartyError(f"party '{self.peer}' sent a malformed 2PC message"))
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
            return await self.channel.recv(self.peer, self.kind, self.timeout, watch=self.watch)

        got = self._call(send_then_recv())
        if not isinstance(got, list) or len(got) != len(tensors):
            raise Abort(TwoPartyError(f"party '{self.peer}' sent a malformed 2PC message"))
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
        raise Abort(TwoPartyError("object messages (pickle) are not allowed between parties"))

    recv_obj = broadcast_obj = send_obj

    def get_world_size(self):
        return 2

    def get_rank(self):
        return self.rank

    def get_name(self):
        return self.channel.me

    def set_name(self, name):
        raise Abort(TwoPartyError("party names come from the Channel"))
