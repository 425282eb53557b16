"""Resources that live in files, which only parties/ may touch: opened here and
handed to a role as typed :class:`protocols.Resources`.

A protocol declares what each role needs in ``RESOURCES = {role: ("budget", ...)}``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from protocols import Resources
from protocols.runner import declared


def open_ledger(path: Path, epsilon_budget: float, delta: float, signer=None):
    """The privacy guardian's ledger: opened if it exists (its budget stands),
    created with the run's ``epsilon_budget`` and ``delta`` otherwise; every line
    signed by ``signer`` (the guardian's identity key) when given."""
    from .ledger import BudgetLedger, LedgerNotFound  # scipy: only for the guardian

    try:
        return BudgetLedger.open(path, signer=signer)
    except LedgerNotFound:
        path.parent.mkdir(parents=True, exist_ok=True)
        return BudgetLedger.create(path, epsilon_budget=epsilon_budget, delta=delta,
                                   signer=signer)


def open_resources(protocol_module: Any, role: str, name: str, workdir: Path,
                   params: dict[str, Any], stack: contextlib.ExitStack,
                   ledger_path: Path | None = None, signer=None) -> Resources:
    """Open what ``role`` of ``protocol_module`` declares; ``stack`` closes it."""
    resources = Resources()
    typed = protocol_module.Params.from_dict(params)
    if "budget" in declared(protocol_module, role, typed):
        path = ledger_path or workdir / "ledger" / f"{name}.jsonl"
        resources.budget = stack.enter_context(open_ledger(path, typed.epsilon_budget,
                                                           typed.delta, signer))
    return resources
