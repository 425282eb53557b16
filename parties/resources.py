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


def read_own_data(protocol_module: Any, role: str, name: str, params: dict[str, Any],
                  data: Path | None):
    """The party's own records when its role reads them (``data`` in the parameters):
    its file (``data``: the file, or a directory holding NAME.csv/.npz/.parquet) read and
    checked against the study, before the party connects. Raises ValueError, one line."""
    from learning.data_files import DataSpec, load_party_data, party_file

    typed = protocol_module.Params.from_dict(params)
    if data is not None and getattr(typed, "data", None) is None:
        raise ValueError(f"--data was given, but this study's parameters declare no data "
                         f"description ('data'), so '{name}' would not read it; add one, "
                         "e.g. the study.json of `confidant split-data`")
    if "data" not in declared(protocol_module, role, typed):
        return None   # e.g. the server of a study whose clients read their own files
    if data is None:
        raise ValueError(f"party '{name}': this study trains on each party's own data; give "
                         "its file with --data FILE (CSV, NPZ or Parquet)")
    path = party_file(data, name) if data.is_dir() else data
    return load_party_data(path, DataSpec.from_dict(typed.data), name)


def open_resources(protocol_module: Any, role: str, name: str, workdir: Path,
                   params: dict[str, Any], stack: contextlib.ExitStack,
                   ledger_path: Path | None = None, signer=None, data=None) -> Resources:
    """Open what ``role`` of ``protocol_module`` declares; ``stack`` closes it. ``data``:
    the party's records, read before it connected (:func:`read_own_data`)."""
    resources = Resources(data=data)
    typed = protocol_module.Params.from_dict(params)
    if "budget" in declared(protocol_module, role, typed):
        path = ledger_path or workdir / "ledger" / f"{name}.jsonl"
        resources.budget = stack.enter_context(open_ledger(path, typed.epsilon_budget,
                                                           typed.delta, signer))
    return resources
