"""Hash-Comb hyper-parameter sharing: owners jointly make the secret, the aggregator never sees it.

Roles: N ``owner`` parties and one ``aggregator``.

1. Every owner draws a fresh contribution c_i (a 32-byte PRF key and a 16-byte
   seed) from the OS and Shamir-shares it (t of N) among the owners: share j
   goes to owner j, end-to-end encrypted.
2. Owner j adds (XORs, see :mod:`mpc.shamir`) the shares it received: that is
   its share of S = c_1 XOR ... XOR c_N, which no single owner chose and which
   is uniform if any one owner is honest.
3. Owners open S to each other (each sends its summed share to every other
   owner) and reconstruct it, cross-checking all N shares. Each keeps its share
   so that, after losing its state, it can recover S from t peers
   (``hcrecover``).
4. Owners check that they hold the same S (an HMAC under S of a fixed label)
   and the same public hyper-parameters; the aggregator receives only the
   public hyper-parameters' fingerprint from every owner and confirms they agree.

The conformance rules make it checkable from the transcripts that nothing but
``params`` ever went from an owner to the aggregator.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from mpc import randomness, shamir
from privacy.hashcomb_codec import HashCombError, HashCombParams

from .context import RoleContext, RoleResult
from .errors import ParameterError, PeerMisbehaved, ProtocolError
from .params import Params

NAME = "hcsetup"
KEY_BYTES, SEED_BYTES = 32, 16
RULES = {
    ("owner", "owner", "share"),
    ("owner", "owner", "open"),
    ("owner", "owner", "confirm"),
    ("owner", "aggregator", "params"),
    ("aggregator", "owner", "agreed"),
}


@dataclass(frozen=True)
class SetupParams(Params):
    """The public Hash-Comb hyper-parameters and the Shamir threshold."""

    PROTOCOL = NAME
    levels: int = 8
    lo: float = -0.35
    hi: float = 0.35
    delta: float = 0.01
    p: float | None = None          # randomized release; None (or 0) for none
    threshold: int | None = None    # t of N; default N // 2 + 1
    timeout: float = 60.0

    def check(self) -> list[str]:
        problems = [] if self.timeout > 0 else [f"timeout must be positive, got {self.timeout}"]
        try:
            self.codec()
        except HashCombError as e:
            problems.append(str(e))
        return problems

    def codec(self) -> HashCombParams:
        """The codec's parameter class: it validates and fingerprints them."""
        return HashCombParams(self.levels, self.lo, self.hi, self.delta, self.p or None)

    def threshold_for(self, n: int) -> int:
        t = n // 2 + 1 if self.threshold is None else self.threshold
        if not 1 <= t <= n:
            raise ParameterError(f"{NAME}: threshold must be in 1..{n} for {n} owners, got {t}")
        return t


Params = SetupParams


def key_check(secret: bytes) -> str:
    """Shows that two owners hold the same secret without revealing it."""
    return hmac.new(secret, b"confidant/hashcomb/key-check", hashlib.sha256).hexdigest()[:32]


async def owner(ctx: RoleContext) -> RoleResult:
    owners = ctx.with_role("owner")
    others = [o for o in owners if o != ctx.me]
    aggregator = ctx.one_with_role("aggregator")
    params = SetupParams.from_dict(ctx.params)
    n, t = len(owners), params.threshold_for(len(owners))
    hp = params.codec()
    ch = ctx.channel

    # 1. share a fresh contribution
    contribution = randomness.token_bytes(KEY_BYTES + SEED_BYTES)
    shares = shamir.share(contribution, n, t)
    for index, name in enumerate(owners):
        if name != ctx.me:
            await ch.send(name, f"{NAME}.share", shares[index].to_dict())
    ctx.progress(f"sent Shamir shares of a fresh contribution to {len(others)} owners (t={t})")

    # 2. my share of S = XOR of everyone's contribution
    mine = shares[owners.index(ctx.me)]
    for name in others:
        got = shamir.Share.from_dict(await ch.recv(name, f"{NAME}.share", params.timeout))
        if got.index != mine.index:
            raise PeerMisbehaved(name, f"sent share index {got.index}, expected {mine.index}")
        mine = mine + got

    # 3. open S among owners only
    for name in others:
        await ch.send(name, f"{NAME}.open", mine.to_dict())
    opened = [mine] + [shamir.Share.from_dict(await ch.recv(name, f"{NAME}.open", params.timeout))
                       for name in others]
    try:
        secret = shamir.reconstruct(opened)
    except shamir.ShamirError as e:
        raise ProtocolError(f"the owners' shares do not agree: {e}") from None

    # 4. confirm the same secret and parameters among owners, parameters with the aggregator
    check = {"key_check": key_check(secret), "params": hp.fingerprint()}
    for name in others:
        await ch.send(name, f"{NAME}.confirm", check)
    for name in others:
        theirs = await ch.recv(name, f"{NAME}.confirm", params.timeout)
        if theirs != check:
            what = "hyper-parameters" if theirs.get("params") != check["params"] else "secret"
            raise ProtocolError(f"owner '{name}' ended up with a different {what}; "
                                "check that every owner runs with the same settings")
    await ch.send(aggregator, f"{NAME}.params", {"params": hp.as_dict(),
                                                 "fingerprint": check["params"]})
    agreed = await ch.recv(aggregator, f"{NAME}.agreed", params.timeout)
    if agreed.get("fingerprint") != check["params"]:
        raise ProtocolError("the aggregator reports that the owners' hyper-parameters differ")
    ctx.progress("secret established and confirmed")
    return RoleResult(
        public={"role": "owner", "owners": n, "threshold": t, "params": hp.as_dict(),
                "params_fingerprint": check["params"], "key_check": check["key_check"]},
        private={"hashcomb_key": secret[:KEY_BYTES], "hashcomb_seed": secret[KEY_BYTES:],
                 "hashcomb_share": mine.to_dict(), "hashcomb_params": hp.as_dict()})


def _fingerprint_of(proposal: dict) -> str | None:
    """The fingerprint of an owner's proposed parameters (None if they are invalid)."""
    try:
        return HashCombParams(**proposal["params"]).fingerprint()
    except (HashCombError, KeyError, TypeError):
        return None


async def aggregator(ctx: RoleContext) -> RoleResult:
    params = SetupParams.from_dict(ctx.params)
    owners = ctx.with_role("owner")
    got = {name: await ctx.channel.recv(name, f"{NAME}.params", params.timeout) for name in owners}
    prints = {g.get("fingerprint") for g in got.values()}
    if len(prints) != 1 or any(_fingerprint_of(g) != g.get("fingerprint") for g in got.values()):
        for name in owners:
            await ctx.channel.send(name, f"{NAME}.agreed", {"fingerprint": None})
        raise ProtocolError(f"owners proposed different hyper-parameters: "
                            f"{ {n: g.get('params') for n, g in got.items()} }")
    fp = prints.pop()
    for name in owners:
        await ctx.channel.send(name, f"{NAME}.agreed", {"fingerprint": fp})
    agreed = next(iter(got.values()))["params"]
    return RoleResult({"role": "aggregator", "params": agreed, "params_fingerprint": fp},
                      private={"hashcomb_params": agreed})


ROLES = {"owner": owner, "aggregator": aggregator}
