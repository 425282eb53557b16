"""Fast simulation: every role of one protocol session in this process, over the
in-memory Channel (real wire codec, no broker, no cryptographic envelopes).

Used by tests and result scripts; the same role code runs between processes
over MQTT (``parties.party``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import protocols
from mpc.channel import InMemoryNetwork
from protocols import RoleContext

from .resources import open_resources


async def simulate(protocol: str, roles: dict[str, str], params: dict[str, Any], workdir: Path,
                   *, kill: dict[str, Any] | None = None,
                   states: dict[str, dict] | None = None) -> dict[str, Any]:
    """Run ``protocol`` with ``roles`` (name -> role). Returns name -> RoleResult, or
    the exception it raised. ``kill`` crashes a party mid-run: ``{"party": name}``
    plus either ``"after": seconds`` or ``"when": (other_party, text)``, i.e. as
    soon as ``other_party`` reports progress containing ``text``."""
    module = protocols.load(protocol)
    net = InMemoryNetwork(list(roles))
    workdir.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, asyncio.Task] = {}

    def crash(victim: str) -> None:
        tasks[victim].cancel()
        net.kill(victim)

    def progress_of(name: str):
        def progress(message: str) -> None:
            if kill and "when" in kill and kill["when"][0] == name and kill["when"][1] in message:
                crash(kill["party"])
        return progress

    with contextlib.ExitStack() as stack:
        for name, role in roles.items():
            resources = open_resources(module, role, name, workdir, params, stack,
                                       workdir / f"ledger-{net.session}-{name}.jsonl")
            ctx = RoleContext(net.channel(name), roles, dict(params), (states or {}).get(name, {}),
                              progress_of(name), resources)
            tasks[name] = asyncio.create_task(module.ROLES[role](ctx))
        if kill and "after" in kill:
            asyncio.get_running_loop().call_later(kill["after"], crash, kill["party"])
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    return dict(zip(tasks, results, strict=True))
