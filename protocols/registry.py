"""Which protocols exist, and what each declares: ``NAME``, ``Params``, ``ROLES``,
``RULES`` (the conformance rules: ``(from_role, to_role, step)`` triples that the
Channel enforces on every message and the audit checks again) and, optionally,
``RESOURCES``.

Besides the built-in protocols, ``CONFIDANT_PROTOCOLS="name=package.module,..."``
adds others (a deployment's own, or the test suite's ``pingpong``); every party
and the auditor must see the same setting.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from .context import RoleFn
from .errors import ParameterError
from .params import Params

BUILT_IN: dict[str, str] = {
    "argmax2pc": "protocols.argmax2pc",
    "hcsetup": "protocols.hcsetup",
    "hcrecover": "protocols.hcrecover",
    "capc": "protocols.capc",
    "hcfl": "protocols.hashcomb_fl",
    "dssgd": "protocols.dssgd",
    "fedavg": "protocols.fedavg",
}
ENV = "CONFIDANT_PROTOCOLS"


def protocols() -> dict[str, str]:
    """Protocol name -> module: the built-in ones plus those named in $CONFIDANT_PROTOCOLS."""
    extra: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        name, sep, module = item.partition("=")
        if not sep or not name or not module:
            raise ParameterError(f"${ENV} must look like 'name=package.module,...', got {item!r}")
        extra[name.strip()] = module.strip()
    return {**BUILT_IN, **extra}


def load(name: str) -> ModuleType:
    known = protocols()
    if name not in known:
        raise ParameterError(f"unknown protocol {name!r}; known: {', '.join(sorted(known))}")
    return importlib.import_module(known[name])


def role_function(protocol: str, role: str) -> RoleFn:
    roles = load(protocol).ROLES
    if role not in roles:
        raise ParameterError(f"protocol {protocol!r} has no role {role!r}; "
                             f"roles: {', '.join(sorted(roles))}")
    return roles[role]


def check_params(protocol: str, params: dict[str, Any]) -> Params:
    """The protocol's typed parameters, or a ParameterError saying what to change."""
    return load(protocol).Params.from_dict(params)


def rules(protocol: str) -> set[tuple[str, str, str]]:
    return set(load(protocol).RULES)


def conformance_rules() -> dict[str, set[tuple[str, str, str]]]:
    """Every registered protocol's allowed (from_role, to_role, step) triples."""
    return {name: rules(name) for name in protocols()}
