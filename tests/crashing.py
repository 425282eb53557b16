"""Crash injection for fault tests: a protocol whose named party SIGKILLs its own process
at an exact step. Hash-Comb's setup and recovery finish within milliseconds of the
parties coming online, so a kill from outside cannot land between two of their messages.

``CONFIDANT_TEST_CRASH="party:kind:n"``: that party dies instead of sending its n-th
message of ``kind`` (n = 1 is the first). The process dies as a real crash does: no
goodbye, no seal, its last will published by the broker. Tests only."""

from __future__ import annotations

import dataclasses
import os
import signal
from types import ModuleType

ENV = "CONFIDANT_TEST_CRASH"


class _CrashingChannel:
    def __init__(self, channel, kind: str, n: int):
        self._channel, self._kind, self._left = channel, kind, n

    def __getattr__(self, name):
        return getattr(self._channel, name)

    async def send(self, to, kind, payload):
        if kind == self._kind:
            self._left -= 1
            if self._left == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        await self._channel.send(to, kind, payload)


def crashing_roles(protocol: ModuleType) -> dict:
    """``protocol``'s roles, the party named in $CONFIDANT_TEST_CRASH crashing as it says."""
    victim, kind, n = os.environ[ENV].split(":")

    def wrap(role):
        async def run(ctx):
            if ctx.me == victim:
                ctx = dataclasses.replace(ctx, channel=_CrashingChannel(ctx.channel, kind, int(n)))
            return await role(ctx)
        return run

    return {name: wrap(role) for name, role in protocol.ROLES.items()}
