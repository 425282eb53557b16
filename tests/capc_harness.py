"""CaPC roles in one process (see parties.simulate)."""

from __future__ import annotations

from pathlib import Path

from parties.simulate import simulate


def roles_for(aps: int) -> dict[str, str]:
    return {"qp": "qp", **{f"ap{i}": "ap" for i in range(1, aps + 1)},
            "guardian": "pg", "dealer": "dealer"}


async def run_capc(tmp: Path, params: dict, aps: int = 2, kill: dict | None = None) -> dict:
    return await simulate("capc", roles_for(aps), params, tmp, kill=kill)
