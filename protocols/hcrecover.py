"""Recovering the Hash-Comb secret after an owner lost its state.

The owner named by the ``recovering`` parameter asks the other owners for their
shares of S (kept by ``hcsetup``) and reconstructs S from them; any t suffice,
and all that arrive are cross-checked. The aggregator takes no part.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpc import shamir
from mpc.channel import ChannelError

from .context import RoleContext, RoleResult
from .errors import ParameterError, ProtocolError
from .hcsetup import KEY_BYTES, key_check
from .params import Params

NAME = "hcrecover"
RULES = {("owner", "owner", "request"), ("owner", "owner", "share")}


@dataclass(frozen=True)
class RecoverParams(Params):
    PROTOCOL = NAME
    recovering: str = ""     # the owner that lost its state
    timeout: float = 60.0

    def check(self) -> list[str]:
        problems = [] if self.recovering else ["parameter 'recovering' must name the owner "
                                               "that lost its state"]
        return problems + ([] if self.timeout > 0 else [f"timeout must be positive, got {self.timeout}"])


Params = RecoverParams


async def owner(ctx: RoleContext) -> RoleResult:
    params = RecoverParams.from_dict(ctx.params)
    recovering = params.recovering
    owners = ctx.with_role("owner")
    if recovering not in owners:
        raise ParameterError(f"parameter 'recovering' must name an owner ({', '.join(owners)}), "
                             f"got {recovering!r}")
    ch = ctx.channel
    if ctx.me != recovering:
        await ch.recv(recovering, f"{NAME}.request", params.timeout)
        share = ctx.state.get("hashcomb_share")
        if share is None:
            raise ParameterError(f"owner '{ctx.me}' has no stored share; run hcsetup first "
                                 "in the same work directory")
        await ch.send(recovering, f"{NAME}.share", share)
        return RoleResult({"role": "owner", "helped": recovering})
    others = [o for o in owners if o != ctx.me]
    for name in others:
        await ch.send(name, f"{NAME}.request", {})
    shares, missing = [], []
    for name in others:  # any t answers suffice; a peer that is down is skipped
        try:
            shares.append(shamir.Share.from_dict(await ch.recv(name, f"{NAME}.share", params.timeout)))
        except ChannelError:
            missing.append(name)
    try:
        secret = shamir.reconstruct(shares)
    except shamir.ShamirError as e:
        raise ProtocolError(f"cannot recover the secret (no answer from {missing}): {e}") from None
    ctx.progress(f"recovered the secret from {len(shares)} shares")
    return RoleResult({"role": "owner", "recovered": True, "key_check": key_check(secret),
                       "shares_used": len(shares), "unreachable": missing},
                      private={"hashcomb_key": secret[:KEY_BYTES], "hashcomb_seed": secret[KEY_BYTES:]})


async def aggregator(ctx: RoleContext) -> RoleResult:
    return RoleResult({"role": "aggregator"})


ROLES = {"owner": owner, "aggregator": aggregator}
