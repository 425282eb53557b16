"""A transport test protocol: every ``player`` sends every other player numbered balls.

Round i: each player sends ball i to every other player, then waits for ball i
from each of them (all at once, so a peer that dies is named as soon as its
departure is known), then sleeps ``sleep`` seconds. Balls must arrive in order;
the result lists what arrived from whom. Parameters: ``count`` (rounds,
default 10), ``sleep`` (seconds between rounds, default 0), ``pad`` (bytes of
padding per ball, default 0). It carries no secret; tests use it to keep a
session running while they inject bad input, kill a party or restart the broker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from protocols import ParameterError, Params, PeerMisbehaved, RoleContext, RoleResult

NAME = "pingpong"
RULES = {("player", "player", "ball")}
TIMEOUT = 60.0


@dataclass(frozen=True)
class PingParams(Params):
    PROTOCOL = NAME
    count: int = 10
    sleep: float = 0.0
    pad: int = 0

    def check(self) -> list[str]:
        ok = self.count >= 1 and self.sleep >= 0 and self.pad >= 0
        return [] if ok else [f"needs count >= 1, sleep >= 0, pad >= 0; got {self}"]


Params = PingParams


async def _recv_round(ctx: RoleContext, peers: list[str], n: int) -> dict[str, int]:
    tasks = {p: asyncio.ensure_future(ctx.channel.recv(p, f"{NAME}.ball", TIMEOUT)) for p in peers}
    done, pending = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
    for t in pending:
        t.cancel()
    for t in done:  # the first failure (e.g. PeerGone naming a dead peer) wins
        if t.exception() is not None:
            raise t.exception()
    got = {}
    for p, t in tasks.items():
        ball = t.result()
        if not isinstance(ball, dict) or ball.get("n") != n:
            raise PeerMisbehaved(p, f"sent {ball!r} in round {n}: balls arrived out of order")
        got[p] = n
    return got


async def player(ctx: RoleContext) -> RoleResult:
    params = PingParams.from_dict(ctx.params)
    count, pause, pad = params.count, params.sleep, bytes(params.pad)
    peers = [n for n in ctx.with_role("player") if n != ctx.me]
    if not peers:
        raise ParameterError("pingpong needs at least two players")
    received: dict[str, list[int]] = {p: [] for p in peers}
    for n in range(count):
        for p in peers:
            await ctx.channel.send(p, f"{NAME}.ball", {"n": n, "pad": pad})
        for p, got in (await _recv_round(ctx, peers, n)).items():
            received[p].append(got)
        if n % 10 == 9 or n == count - 1:
            ctx.progress(f"round {n + 1}/{count}")
        if pause:
            await asyncio.sleep(pause)
    return RoleResult({"role": "player", "rounds": count, "received": received})


ROLES = {"player": player}
