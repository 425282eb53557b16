"""Objects a protocol role needs that live in files, which only parties/ may touch.

A protocol declares them in ``RESOURCES = {role: (name, ...)}``; the party
runner opens them here and hands them in ``RoleContext.resources``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


def open_ledger(path: Path, params: dict[str, Any]):
    """The privacy guardian's ledger: opened if it exists (its budget stands),
    created with the run's ``epsilon_budget`` and ``delta`` otherwise."""
    from .ledger import BudgetLedger, LedgerNotFound  # scipy: only for the guardian

    try:
        return BudgetLedger.open(path)
    except LedgerNotFound:
        path.parent.mkdir(parents=True, exist_ok=True)
        return BudgetLedger.create(path, epsilon_budget=float(params.get("epsilon_budget", 10.0)),
                                   delta=float(params.get("delta", 1e-5)))


def open_resources(protocol_module: Any, role: str, name: str, workdir: Path,
                   params: dict[str, Any], stack: contextlib.ExitStack,
                   ledger_path: Path | None = None) -> dict[str, Any]:
    wanted = getattr(protocol_module, "RESOURCES", {}).get(role, ())
    params = {**getattr(protocol_module, "DEFAULTS", {}), **params}  # the protocol's defaults
    resources: dict[str, Any] = {}
    for kind in wanted:
        if kind == "ledger":
            path = ledger_path or workdir / "ledger" / f"{name}.jsonl"
            resources["ledger"] = stack.enter_context(open_ledger(path, params))
        else:
            raise ValueError(f"unknown resource {kind!r} requested by the protocol")
    return resources
