"""A 2PC rehearsed inside one process, so the first real run is as fast as a repeat.

The first time a computation runs, every tuple it needs costs a round trip to
the dealer; from the second time on the provider knows the whole request
sequence (its *plan*, :mod:`.provider`) and fetches it in one. The sequence
depends only on the function and the shapes of its arguments, so a party can
learn it alone: :func:`rehearse` runs the computation between two threads of
this process on all-zero shares, with a local dealer, over an in-memory channel.
No message leaves the process and no secret is involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from ..channel import InMemoryNetwork
from .dealer import Dealer
from .session import TwoParty


async def rehearse(fn: Callable[..., Any], *args: Any, prefix: str = "mpc") -> None:
    """Run ``fn(*args)`` as a local 2PC on zero shares shaped like ``args`` (arrays;
    other arguments are passed as they are), leaving its plan in the provider."""
    zeros = tuple(np.zeros_like(a) if isinstance(a, np.ndarray) else a for a in args)
    net = InMemoryNetwork(["rehearsal-0", "rehearsal-1", "rehearsal-dealer"])

    async def side(me: str, peer: str) -> None:
        async with TwoParty(net.channel(me), peer, "rehearsal-dealer", prefix=prefix) as tp:
            await tp.run(fn, *zeros)

    await asyncio.gather(side("rehearsal-0", "rehearsal-1"), side("rehearsal-1", "rehearsal-0"),
                         Dealer(net.channel("rehearsal-dealer"), prefix=prefix).serve(
                             ("rehearsal-0", "rehearsal-1")))
