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


def read_party_files(protocol_module: Any, role: str, name: str, params: dict[str, Any],
                     data: Path | None = None, queries: Path | None = None,
                     model: Path | None = None) -> dict[str, Any]:
    """What the party brings, read and checked before it connects, as Resources fields:
    ``data`` (its records; a file, or a directory holding NAME.csv/.npz/.parquet),
    ``queries`` (a querying party's unlabelled rows) and ``model`` (an answering party's
    own model, .onnx or .pt). Raises ValueError with one line naming the party."""
    from learning.data_files import DataSpec, load_party_data, party_file
    from learning.model_files import ModelFileError, load_model
    from protocols import study_data

    typed = protocol_module.Params.from_dict(params)
    kinds = declared(protocol_module, role, typed)
    described = getattr(typed, "data", None)
    if data is not None and described is None:
        raise ValueError(f"--data was given, but this study's parameters declare no data "
                         f"description ('data'), so '{name}' would not read it; add one, "
                         "e.g. the study.json of `confidant split-data`")
    for given, kind in ((queries, "queries"), (model, "model")):
        if given is not None and kind not in kinds:
            raise ValueError(f"--{kind} was given, but a '{role}' of {protocol_module.NAME} "
                             + ("asks no queries" if kind == "queries" else
                                "does not answer with a model of its own")
                             + (" in this study (its parameters declare no data description)"
                                if kind == "queries" and described is None else ""))
    out: dict[str, Any] = {}
    if model is not None:
        features, classes = study_data.shape(protocol_module.NAME, typed.dataset, described, 0)
        try:
            out["model"] = load_model(model, features, classes)
        except ModelFileError as e:
            raise ValueError(f"party '{name}': model file {model}: {e}") from None
    spec = DataSpec.from_dict(described) if described is not None else None
    if "data" in kinds:
        if data is not None:
            path = party_file(data, name) if data.is_dir() else data
            out["data"] = load_party_data(path, spec, name)
        elif "model" not in out:
            raise ValueError(f"party '{name}': this study has each party bring its own data; "
                             "give its file with --data FILE (CSV, NPZ or Parquet)"
                             + (" or its model with --model FILE" if "model" in kinds else ""))
    if "queries" in kinds:
        if queries is None:
            raise ValueError(f"party '{name}': a querying party in this study reads its "
                             "unlabelled queries from a file: give --queries FILE")
        out["queries"] = load_party_data(queries, spec, name, labelled=False)
    return out


def open_resources(protocol_module: Any, role: str, name: str, workdir: Path,
                   params: dict[str, Any], stack: contextlib.ExitStack,
                   ledger_path: Path | None = None, signer=None,
                   files: dict[str, Any] | None = None) -> Resources:
    """Open what ``role`` of ``protocol_module`` declares; ``stack`` closes it. ``files``:
    what the party brought, read before it connected (:func:`read_party_files`)."""
    resources = Resources(**(files or {}))
    typed = protocol_module.Params.from_dict(params)
    if "budget" in declared(protocol_module, role, typed):
        path = ledger_path or workdir / "ledger" / f"{name}.jsonl"
        resources.budget = stack.enter_context(open_ledger(path, typed.epsilon_budget,
                                                           typed.delta, signer))
    return resources
