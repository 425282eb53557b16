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
import json
import secrets

from mpc import shamir

from . import ProtocolError, RoleContext, RoleResult

NAME = "hcsetup"
KEY_BYTES, SEED_BYTES = 32, 16
RULES = {
    ("owner", "owner", "share"),
    ("owner", "owner", "open"),
    ("owner", "owner", "confirm"),
    ("owner", "aggregator", "params"),
    ("aggregator", "owner", "agreed"),
}
DEFAULT_PARAMS = {"levels": 8, "lo": -0.35, "hi": 0.35, "delta": 0.01, "p": 0.0}
TIMEOUT = 60.0


def public_params(params: dict) -> dict:
    """The public Hash-Comb hyper-parameters, with defaults filled in and checked."""
    hp = {k: params.get(k, v) for k, v in DEFAULT_PARAMS.items()}
    if not (isinstance(hp["levels"], int) and 1 <= hp["levels"] <= 24):
        raise ProtocolError(f"levels must be an integer in 1..24, got {hp['levels']!r}")
    if not float(hp["lo"]) < float(hp["hi"]):
        raise ProtocolError(f"need lo < hi, got lo={hp['lo']} hi={hp['hi']}")
    if float(hp["delta"]) < 0 or not 0 <= float(hp["p"]) < 1:
        raise ProtocolError("delta must be >= 0 and p in [0, 1)")
    return hp


def fingerprint(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def key_check(secret: bytes) -> str:
    """Shows that two owners hold the same secret without revealing it."""
    return hmac.new(secret, b"confidant/hashcomb/key-check", hashlib.sha256).hexdigest()[:32]


def threshold(ctx: RoleContext, n: int) -> int:
    t = int(ctx.params.get("threshold", n // 2 + 1))
    if not 1 <= t <= n:
        raise ProtocolError(f"threshold must be in 1..{n} for {n} owners, got {t}")
    return t


async def owner(ctx: RoleContext) -> RoleResult:
    owners = ctx.with_role("owner")
    others = [o for o in owners if o != ctx.me]
    aggregator = ctx.one_with_role("aggregator")
    n, t = len(owners), threshold(ctx, len(owners))
    hp = public_params(ctx.params)
    ch = ctx.channel

    # 1. share a fresh contribution
    contribution = secrets.token_bytes(KEY_BYTES + SEED_BYTES)
    shares = shamir.share(contribution, n, t)
    for index, name in enumerate(owners):
        if name != ctx.me:
            await ch.send(name, f"{NAME}.share", shares[index].to_dict())
    ctx.progress(f"sent Shamir shares of a fresh contribution to {len(others)} owners (t={t})")

    # 2. my share of S = XOR of everyone's contribution
    mine = shares[owners.index(ctx.me)]
    for name in others:
        got = shamir.Share.from_dict(await ch.recv(name, f"{NAME}.share", TIMEOUT))
        if got.index != mine.index:
            raise ProtocolError(f"owner '{name}' sent share index {got.index}, expected {mine.index}")
        mine = mine + got

    # 3. open S among owners only
    for name in others:
        await ch.send(name, f"{NAME}.open", mine.to_dict())
    opened = [mine] + [shamir.Share.from_dict(await ch.recv(name, f"{NAME}.open", TIMEOUT))
                       for name in others]
    try:
        secret = shamir.reconstruct(opened)
    except shamir.ShamirError as e:
        raise ProtocolError(f"the owners' shares do not agree: {e}") from None

    # 4. confirm the same secret and parameters among owners, parameters with the aggregator
    check = {"key_check": key_check(secret), "params": fingerprint(hp)}
    for name in others:
        await ch.send(name, f"{NAME}.confirm", check)
    for name in others:
        theirs = await ch.recv(name, f"{NAME}.confirm", TIMEOUT)
        if theirs != check:
            what = "hyper-parameters" if theirs.get("params") != check["params"] else "secret"
            raise ProtocolError(f"owner '{name}' ended up with a different {what}; "
                                "check that every owner runs with the same settings")
    await ch.send(aggregator, f"{NAME}.params", {"params": hp, "fingerprint": check["params"]})
    agreed = await ch.recv(aggregator, f"{NAME}.agreed", TIMEOUT)
    if agreed.get("fingerprint") != check["params"]:
        raise ProtocolError("the aggregator reports that the owners' hyper-parameters differ")
    ctx.progress("secret established and confirmed")
    return RoleResult(
        public={"role": "owner", "owners": n, "threshold": t, "params": hp,
                "params_fingerprint": check["params"], "key_check": check["key_check"]},
        private={"hashcomb_key": secret[:KEY_BYTES], "hashcomb_seed": secret[KEY_BYTES:],
                 "hashcomb_share": mine.to_dict(), "hashcomb_params": hp})


async def aggregator(ctx: RoleContext) -> RoleResult:
    owners = ctx.with_role("owner")
    got = {name: await ctx.channel.recv(name, f"{NAME}.params", TIMEOUT) for name in owners}
    prints = {g.get("fingerprint") for g in got.values()}
    if len(prints) != 1 or any(fingerprint(g.get("params", {})) != g.get("fingerprint")
                               for g in got.values()):
        for name in owners:
            await ctx.channel.send(name, f"{NAME}.agreed", {"fingerprint": None})
        raise ProtocolError(f"owners proposed different hyper-parameters: "
                            f"{ {n: g.get('params') for n, g in got.items()} }")
    fp = prints.pop()
    for name in owners:
        await ctx.channel.send(name, f"{NAME}.agreed", {"fingerprint": fp})
    params = next(iter(got.values()))["params"]
    return RoleResult({"role": "aggregator", "params": params, "params_fingerprint": fp},
                      private={"hashcomb_params": params})


ROLES = {"owner": owner, "aggregator": aggregator}
