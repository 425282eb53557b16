"""A 2PC argmax between two parties' private score vectors (the demo of the CrypTen glue).

Roles: two ``holder`` parties and a ``dealer``. Each holder has a private score
matrix (its ``inputs`` parameter, or random scores it draws itself); together
they compute the one-hot argmax of the SUM of their matrices with CrypTen,
each getting a share. Then the second holder sends its share to the first,
which alone learns the argmax. Neither sees the other's scores; the dealer
sees only requests for correlated randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpc import additive, encoding, randomness
from mpc.twopc import TwoParty, onehot_argmax_share, serve_dealer

from .context import RoleContext, RoleResult
from .errors import ParameterError
from .params import Params

NAME = "argmax2pc"
RULES = {
    ("holder", "holder", "crypten"),   # CrypTen's own traffic
    ("holder", "dealer", "tuple_req"),
    ("dealer", "holder", "tuple"),
    ("holder", "holder", "reveal"),    # second holder's output share to the first
}


@dataclass(frozen=True)
class ArgmaxParams(Params):
    PROTOCOL = NAME
    batch: int = 1
    classes: int = 10
    inputs: dict | None = None   # holder name -> its score matrix; random scores otherwise
    timeout: float = 60.0

    def check(self) -> list[str]:
        problems = []
        if self.batch < 1:
            problems.append(f"batch must be at least 1, got {self.batch}")
        if self.classes < 2:
            problems.append(f"classes must be at least 2 (an argmax over one class says "
                            f"nothing), got {self.classes}")
        if self.timeout <= 0:
            problems.append(f"timeout must be positive, got {self.timeout}")
        return problems


Params = ArgmaxParams


def _scores(ctx: RoleContext, p: ArgmaxParams) -> np.ndarray:
    given = (p.inputs or {}).get(ctx.me)
    if given is not None:
        scores = np.asarray(given, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise ParameterError(f"argmax2pc: inputs for {ctx.me} must be a matrix with at least "
                                 f"two columns, got shape {scores.shape}")
        return scores
    # Demo input drawn from the OS random source: scores in [-8, 8).
    raw = randomness.ring(p.batch * p.classes)
    return (raw.astype(np.float64) / 2.0 ** 64 * 16 - 8).reshape(p.batch, p.classes)


async def holder(ctx: RoleContext) -> RoleResult:
    p = ArgmaxParams.from_dict(ctx.params)
    holders = ctx.with_role("holder")
    if len(holders) != 2:
        raise ParameterError(f"argmax2pc needs exactly two holders, the deployment has {holders}")
    first, second = holders
    peer = second if ctx.me == first else first
    scores = _scores(ctx, p)
    ctx.progress(f"2PC argmax over {scores.shape[0]}x{scores.shape[-1]} scores with {peer}")
    async with TwoParty(ctx.channel, peer, ctx.one_with_role("dealer"), prefix=NAME,
                        timeout=p.timeout) as tp:
        mine = await tp.run(onehot_argmax_share, encoding.encode(scores))
        stats = tp.stats
    if ctx.me == second:
        await ctx.channel.send(first, f"{NAME}.reveal", mine)
        return RoleResult({"role": "holder", "learned": None, **stats})
    theirs = await ctx.channel.recv(second, f"{NAME}.reveal", timeout=p.timeout)
    onehot = encoding.decode(additive.reconstruct([mine, theirs]))
    return RoleResult({"role": "holder", "learned": onehot.argmax(-1).tolist(), **stats})


async def dealer(ctx: RoleContext) -> RoleResult:
    p = ArgmaxParams.from_dict(ctx.params)
    holders = ctx.with_role("holder")
    served = await serve_dealer(ctx.channel, (holders[0], holders[1]), prefix=NAME,
                                timeout=p.timeout)
    return RoleResult({"role": "dealer", "requests_served": served})


ROLES = {"holder": holder, "dealer": dealer}
