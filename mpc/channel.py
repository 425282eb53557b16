"""The Channel: the only way a protocol role talks to its peers.

Protocols are async functions over a Channel, so the same role code runs
in-process (tests, fast simulation: :class:`InMemoryNetwork`) and across
machines (MQTT: ``parties.mqtt_channel``).

Message kinds are ``"<protocol>.<step>"`` strings, e.g. ``"hcsetup.commit"``;
the transport records both parts in its envelope headers and transcripts.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

from . import randomness, wire


class ChannelError(RuntimeError):
    """A message could not be sent or received."""


class PeerTimeout(ChannelError, TimeoutError):
    """No message of the expected kind arrived from a peer in time."""

    def __init__(self, peer: str, kind: str, timeout: float):
        super().__init__(f"no '{kind}' message from party '{peer}' within {timeout:g} s")
        self.peer = peer


class PeerGone(ChannelError):
    """A peer went offline while we were waiting for it (or before)."""

    def __init__(self, peer: str, kind: str | None = None):
        what = f" while waiting for its '{kind}' message" if kind else ""
        super().__init__(f"party '{peer}' went offline{what}")
        self.peer = peer


class RuleViolation(ChannelError):
    """A message that the protocol's conformance rules do not allow."""


def split_kind(kind: str) -> tuple[str, str]:
    """``"proto.step"`` -> ``("proto", "step")``; validates the form."""
    proto, sep, step = kind.partition(".")
    if not sep or not proto or not step:
        raise ValueError(f"message kind {kind!r} must look like '<protocol>.<step>'")
    return proto, step


class Conformance:
    """A protocol's conformance rules: which role may send which step to which role.

    The Channel checks every send against them (so a role that breaks the protocol
    fails at once, where it broke it) and every receive (so a peer's message
    outside the rules is refused, never delivered); the audit checks them again.
    """

    def __init__(self, protocol: str, rules: Iterable[tuple[str, str, str]],
                 roles: dict[str, str]):
        self.protocol, self.rules, self.roles = protocol, frozenset(rules), dict(roles)

    def violation(self, sender: str, recipient: str, kind: str) -> str | None:
        """Why ``sender`` may not send ``kind`` to ``recipient``, or None if it may."""
        try:
            proto, step = split_kind(kind)
        except ValueError as e:
            return str(e)
        if proto != self.protocol:
            return f"'{kind}' is not a message of protocol '{self.protocol}'"
        triple = (self.roles.get(sender, "?"), self.roles.get(recipient, "?"), step)
        if triple not in self.rules:
            return (f"protocol '{self.protocol}' does not let a '{triple[0]}' ({sender}) send "
                    f"'{step}' to a '{triple[1]}' ({recipient})")
        return None


class Channel(ABC):
    """Async point-to-point messaging between named parties of one session."""

    me: str
    peers: tuple[str, ...]
    session: str
    conformance: Conformance | None = None   # set by whoever runs the protocol

    @abstractmethod
    async def send(self, to: str, kind: str, payload: Any) -> None:
        """Send ``payload`` (anything :mod:`mpc.wire` encodes) to party ``to``."""

    @abstractmethod
    async def recv(self, frm: str, kind: str, timeout: float | None = None, *,
                   watch: tuple[str, ...] = ()) -> Any:
        """Wait for the next ``kind`` message from ``frm``; messages of one kind
        from one sender arrive in the order they were sent.

        Raises PeerTimeout after ``timeout`` seconds and PeerGone at once when
        ``frm``, or a party in ``watch`` (one whose death means the message will
        never come, e.g. the other party of a 2PC), is (or goes) offline.
        """

    def _check_peer(self, name: str) -> None:
        if name not in self.peers:
            raise ChannelError(f"'{name}' is not a peer of '{self.me}' "
                               f"(peers: {', '.join(self.peers) or 'none'})")

    def _check_send(self, to: str, kind: str) -> None:
        """Refuse, before anything leaves, a message the protocol does not allow."""
        self._check_peer(to)
        split_kind(kind)
        why = self.conformance.violation(self.me, to, kind) if self.conformance else None
        if why:
            raise RuleViolation(f"'{self.me}' may not send this message: {why}")


class Mailbox:
    """Per-(sender, kind) FIFO queues plus liveness, shared by both transports.

    :meth:`get` is safe to cancel: it only waits on events and takes a message off
    its queue in the same step as it returns, so a cancelled receive (e.g. the
    loser of a race between two peers) never loses a message.
    """

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], deque] = defaultdict(deque)
        self.gone: set[str] = set()
        self._arrived: dict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)
        self._gone_events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def put(self, frm: str, kind: str, data: Any) -> None:
        self.queues[(frm, kind)].append(data)
        self._arrived[(frm, kind)].set()

    def mark_gone(self, peer: str) -> None:
        self.gone.add(peer)
        self._gone_events[peer].set()

    def mark_back(self, peer: str) -> None:
        if peer in self.gone:  # only replace a fired event; waiters hold the live one
            self.gone.discard(peer)
            self._gone_events[peer] = asyncio.Event()

    async def get(self, frm: str, kind: str, timeout: float | None,
                  watch: tuple[str, ...] = ()) -> Any:
        key = (frm, kind)
        q = self.queues[key]
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            if q:
                return q.popleft()
            for party in (frm, *watch):
                if party in self.gone:
                    raise PeerGone(party, kind if party == frm else None)
            arrived = self._arrived[key]
            arrived.clear()
            waits = {asyncio.ensure_future(arrived.wait()),
                     *(asyncio.ensure_future(self._gone_events[party].wait())
                       for party in (frm, *watch))}
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            try:
                done, _ = await asyncio.wait(waits, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if not done:
                raise PeerTimeout(frm, kind, timeout if timeout is not None else float("inf"))


class InMemoryChannel(Channel):
    """A Channel whose messages go through the real wire codec, in one process."""

    def __init__(self, network: InMemoryNetwork, me: str):
        self.network = network
        self.me = me
        self.peers = tuple(n for n in network.names if n != me)
        self.session = network.session
        self.mailbox = Mailbox()
        self.sent_bytes = 0
        self.sent_messages = 0

    async def send(self, to: str, kind: str, payload: Any) -> None:
        self._check_send(to, kind)
        if self.me in self.network.dead:
            raise ChannelError(f"party '{self.me}' has been stopped")
        data = wire.encode(payload)
        self.sent_bytes += len(data)
        self.sent_messages += 1
        if to not in self.network.dead:
            self.network.channels[to].mailbox.put(self.me, kind, data)
        await asyncio.sleep(0)  # let the receiver run, as a real transport would

    async def recv(self, frm: str, kind: str, timeout: float | None = None, *,
                   watch: tuple[str, ...] = ()) -> Any:
        self._check_peer(frm)
        return wire.decode(await self.mailbox.get(frm, kind, timeout, watch))


class InMemoryNetwork:
    """All parties of one session in one event loop; ``kill(name)`` simulates a crash."""

    def __init__(self, names: Iterable[str], session: str | None = None):
        self.names = tuple(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"party names must be unique: {self.names}")
        self.session = session or randomness.token_bytes(8).hex()
        self.dead: set[str] = set()
        self.channels = {n: InMemoryChannel(self, n) for n in self.names}

    def channel(self, name: str) -> InMemoryChannel:
        return self.channels[name]

    def kill(self, name: str) -> None:
        self.dead.add(name)
        for ch in self.channels.values():
            if ch.me != name:
                ch.mailbox.mark_gone(name)
