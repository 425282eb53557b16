"""Crash drills: a party that SIGKILLs its own process at an exact step of a protocol.

``confidant party --crash-before KIND:N`` makes the party die instead of sending its N-th
message of KIND (N = 1 is the first), as a real crash does: no goodbye, no seal, its last
will published by the broker. It rehearses dropouts at a chosen stage (e.g. SecAgg's
``fedavg.masked``), which a kill from outside cannot hit when a stage lasts milliseconds.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class CrashPlan:
    kind: str
    n: int

    @classmethod
    def parse(cls, text: str) -> CrashPlan:
        kind, _, n = text.rpartition(":")
        if not kind or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--crash-before {text!r}: expected KIND:N with N >= 1, "
                             "e.g. fedavg.masked:2")
        return cls(kind, int(n))

    def __str__(self) -> str:
        return f"{self.kind}:{self.n}"


class CrashingChannel:
    """The party's channel, except that the planned send kills the process instead."""

    def __init__(self, channel, plan: CrashPlan):
        self._channel, self._plan, self._left = channel, plan, plan.n

    def __getattr__(self, name):
        return getattr(self._channel, name)

    async def send(self, to, kind, payload):
        if kind == self._plan.kind:
            self._left -= 1
            if self._left == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        await self._channel.send(to, kind, payload)
