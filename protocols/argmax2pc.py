"""A 2PC argmax between two parties' private score vectors (the demo of the CrypTen glue).

Roles: two ``holder`` parties and a ``dealer``. Each holder has a private score
matrix (its ``inputs`` parameter, or random scores it draws itself); together
they compute the one-hot argmax of the SUM of their matrices with CrypTen,
each getting a share. Then the second holder sends its share to the first,
which alone learns the argmax. Neither sees the other's scores; the dealer
sees only requests for correlated randomness.
"""

from __future__ import annotations

import secrets

import numpy as np

from mpc import additive, encoding
from mpc.crypten_glue import TwoParty, share_of, tensor_from_shares

from . import ProtocolError, RoleContext, RoleResult

NAME = "argmax2pc"
RULES = {
    ("holder", "holder", "crypten"),   # CrypTen's own traffic
    ("holder", "dealer", "tuple_req"),
    ("dealer", "holder", "tuple"),
    ("holder", "holder", "reveal"),    # second holder's output share to the first
}


def _scores(ctx: RoleContext) -> np.ndarray:
    given = ctx.params.get("inputs", {}).get(ctx.me)
    if given is not None:
        return np.asarray(given, dtype=np.float64)
    batch, classes = int(ctx.params.get("batch", 1)), int(ctx.params.get("classes", 10))
    # Demo input drawn from the OS random source: scores in [-8, 8).
    raw = np.frombuffer(secrets.token_bytes(8 * batch * classes), dtype=np.uint64)
    return (raw.astype(np.float64) / 2.0 ** 64 * 16 - 8).reshape(batch, classes)


def _onehot_share(share: np.ndarray) -> np.ndarray:
    return share_of(tensor_from_shares(share).argmax(dim=-1, one_hot=True))


async def holder(ctx: RoleContext) -> RoleResult:
    holders = ctx.with_role("holder")
    if len(holders) != 2:
        raise ProtocolError(f"argmax2pc needs exactly two holders, the deployment has {holders}")
    first, second = holders
    peer = second if ctx.me == first else first
    scores = _scores(ctx)
    ctx.progress(f"2PC argmax over {scores.shape[0]}x{scores.shape[-1]} scores with {peer}")
    async with TwoParty(ctx.channel, peer, ctx.one_with_role("dealer"), prefix=NAME) as tp:
        mine = await tp.run(_onehot_share, encoding.encode(scores))
        stats = tp.stats
    if ctx.me == second:
        await ctx.channel.send(first, f"{NAME}.reveal", mine)
        return RoleResult({"role": "holder", "learned": None, **stats})
    theirs = await ctx.channel.recv(second, f"{NAME}.reveal", timeout=60)
    onehot = encoding.decode(additive.reconstruct([mine, theirs]))
    return RoleResult({"role": "holder", "learned": onehot.argmax(-1).tolist(), **stats})


async def dealer(ctx: RoleContext) -> RoleResult:
    from mpc.crypten_glue import serve_dealer
    holders = ctx.with_role("holder")
    served = await serve_dealer(ctx.channel, (holders[0], holders[1]), prefix=NAME)
    return RoleResult({"role": "dealer", "requests_served": served})


ROLES = {"holder": holder, "dealer": dealer}
