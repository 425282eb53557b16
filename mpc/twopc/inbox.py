"""Messages of concurrent 2PC sessions on one channel, told apart by their session tag.

A querying party runs a 2PC with every answering party at once, all served by one
dealer: the dealer's answers to it, and its requests to the dealer, share a sender
and a kind. Each carries its session's ``tag``; :func:`recv_tagged` hands each
session only its own, holding the others' until their session asks.

One session at a time reads the channel for a (sender, kind) (the channel's order
guarantee holds for one reader); the others wait for a *change*: a message held for
them, or the reader leaving. A session whose message is held returns at once. (The
first version queued the sessions on a lock: a session whose message had arrived
could wait behind one that read on, for a message that only its own progress would
bring. Between processes, that deadlocked concurrent 2PCs.)
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict, deque
from typing import Any

from ..channel import Channel, PeerTimeout


class _Inbox:
    """The sessions waiting for one (sender, kind) of one channel."""

    def __init__(self) -> None:
        self.held: defaultdict[str, deque] = defaultdict(deque)
        self.reading = False
        self._waiters: set[asyncio.Future] = set()

    def changed(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    async def wait_for_change(self, left: float | None) -> bool:
        """False if ``left`` seconds pass first."""
        w = asyncio.get_running_loop().create_future()
        self._waiters.add(w)
        try:
            await asyncio.wait_for(w, left)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(w)


_inboxes: weakref.WeakKeyDictionary[Channel, dict] = weakref.WeakKeyDictionary()


def _tag_of(msg: Any) -> str:
    return str(msg.get("tag", "")) if isinstance(msg, dict) else ""


async def recv_tagged(channel: Channel, frm: str, kind: str, tag: str,
                      timeout: float | None = None, *, watch: tuple[str, ...] = ()) -> Any:
    """The next ``kind`` message from ``frm`` whose tag is ``tag``.

    ``watch`` is checked while this session reads the channel: a watched party that
    dies is reported once no other session is reading (at the latest when the
    reader's message arrives or its timeout passes).
    """
    box = _inboxes.setdefault(channel, {}).setdefault((frm, kind), _Inbox())
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        if box.held[tag]:
            return box.held[tag].popleft()
        left = None if deadline is None else max(0.0, deadline - loop.time())
        if box.reading:
            if not await box.wait_for_change(left):
                raise PeerTimeout(frm, kind, timeout if timeout is not None else float("inf"))
            continue
        box.reading = True
        try:
            msg = await channel.recv(frm, kind, left, watch=watch)
            if _tag_of(msg) == tag:
                return msg
            box.held[_tag_of(msg)].append(msg)
        finally:
            box.reading = False
            box.changed()
