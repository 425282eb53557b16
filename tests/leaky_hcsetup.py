"""hcsetup with a planted leak, to show that the aggregator test can fail: each owner
slips its share of the secret into the 'params' message it sends the aggregator (an
allowed message, so conformance rules cannot stop it). Tests only."""

from __future__ import annotations

import dataclasses

from protocols import hcsetup
from protocols.hcsetup import NAME, RULES, SetupParams  # noqa: F401 (the protocol's interface)

Params = SetupParams


class _LeakyChannel:
    def __init__(self, channel):
        self._channel, self._share = channel, None

    def __getattr__(self, name):
        return getattr(self._channel, name)

    async def send(self, to, kind, payload):
        if kind == f"{NAME}.open":
            self._share = payload
        if kind == f"{NAME}.params":
            payload = {**payload, "comment": self._share}  # the aggregator reads past it
        await self._channel.send(to, kind, payload)


async def owner(ctx):
    return await hcsetup.owner(dataclasses.replace(ctx, channel=_LeakyChannel(ctx.channel)))


ROLES = {"owner": owner, "aggregator": hcsetup.aggregator}
