"""CaPC roles in one process (protocols.runner), the guardian's budget in a ledger file."""

from __future__ import annotations

import contextlib
from pathlib import Path

import protocols
from parties.resources import open_resources
from protocols.runner import run_session


def roles_for(aps: int) -> dict[str, str]:
    return {"qp": "qp", **{f"ap{i}": "ap" for i in range(1, aps + 1)},
            "guardian": "pg", "dealer": "dealer"}


async def run_capc(tmp: Path, params: dict, aps: int = 2, kill: dict | None = None,
                   files: dict[str, dict] | None = None) -> dict:
    """``files``: what a party brings (parties.resources.read_party_files), by name."""
    module = protocols.load("capc")
    with contextlib.ExitStack() as stack:
        def resources(name: str, role: str) -> protocols.Resources:
            return open_resources(module, role, name, tmp, params, stack,
                                  tmp / f"ledger-{id(stack)}-{name}.jsonl",
                                  files=(files or {}).get(name))
        return await run_session("capc", roles_for(aps), params, resources=resources, kill=kill)
