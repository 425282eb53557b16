"""Run CaPC roles in one process over the in-memory Channel (tests, simulations)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mpc.channel import InMemoryNetwork
from parties.ledger import BudgetLedger
from protocols import RoleContext, role_function


def roles_for(aps: int) -> dict[str, str]:
    return {"qp": "qp", **{f"ap{i}": "ap" for i in range(1, aps + 1)},
            "guardian": "pg", "dealer": "dealer"}


async def run_capc(tmp: Path, params: dict, aps: int = 2, kill: dict | None = None) -> dict:
    """All roles of one CaPC session; ``kill={"party": name, "after": seconds}``
    crashes a party mid-run. Returns role name -> RoleResult (or the exception)."""
    roles = roles_for(aps)
    net = InMemoryNetwork(list(roles))
    ledger_path = tmp / f"ledger-{net.session}.jsonl"
    ledger = BudgetLedger.create(ledger_path, epsilon_budget=params.get("epsilon_budget", 1e6),
                                 delta=params.get("delta", 1e-5))
    tasks = {}
    for name, role in roles.items():
        ctx = RoleContext(net.channel(name), roles, dict(params), {},
                          resources={"ledger": ledger} if role == "pg" else {})
        tasks[name] = asyncio.create_task(role_function("capc", role)(ctx))
    if kill:
        async def killer():
            await asyncio.sleep(kill["after"])
            tasks[kill["party"]].cancel()
            net.kill(kill["party"])
        asyncio.create_task(killer())
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    ledger.close()
    return dict(zip(tasks, results, strict=True))
