"""Messages of concurrent 2PC sessions on one channel, told apart by their session tag.

A querying party runs a 2PC with every answering party at once, all served by one
dealer: the dealer's answers to it, and its requests to the dealer, share a sender
and a kind. Each carries its session's ``tag``; :func:`recv_tagged` hands each
session only its own, holding the others' until their session asks. One reader at
a time per (sender, kind), so the channel's ordering guarantee still holds.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict, deque
from typing import Any

from ..channel import Channel

_held: weakref.WeakKeyDictionary[Channel, dict] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Channel, dict] = weakref.WeakKeyDictionary()


def _tag_of(msg: Any) -> str:
    return str(msg.get("tag", "")) if isinstance(msg, dict) else ""


async def recv_tagged(channel: Channel, frm: str, kind: str, tag: str,
                      timeout: float | None = None, *, watch: tuple[str, ...] = ()) -> Any:
    """The next ``kind`` message from ``frm`` whose tag is ``tag``."""
    held = _held.setdefault(channel, defaultdict(deque))
    locks = _locks.setdefault(channel, defaultdict(asyncio.Lock))
    mine = (frm, kind, tag)
    while True:
        if held[mine]:
            return held[mine].popleft()
        async with locks[(frm, kind)]:
            if held[mine]:
                continue                 # read for us by the session that held the lock
            msg = await channel.recv(frm, kind, timeout, watch=watch)
            if _tag_of(msg) == tag:
                return msg
            held[(frm, kind, _tag_of(msg))].append(msg)
