"""The in-process runner: every role of one protocol session as tasks of this
event loop, over the in-memory Channel (real wire codec, the protocol's
conformance rules enforced, no broker, no envelopes).

Used by tests and result scripts; the same role code runs between processes
over MQTT (``parties.party``). Resources are handed in: by default an
in-memory :class:`privacy.budget.PrivacyBudget` per role that declares one;
pass ``resources`` to use others (e.g. the file-backed ledger of ``parties/``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mpc.channel import Conformance, InMemoryNetwork
from privacy.budget import PrivacyBudget

from . import registry
from .context import Resources, RoleContext, RoleResult
from .params import Params

ResourceFactory = Callable[[str, str], Resources]   # (party name, role) -> its resources


def declared(module: Any, role: str, params: Params | None = None) -> tuple[str, ...]:
    """The resource kinds a protocol's role declares (``RESOURCES``), validated. A
    declaration may depend on the typed parameters (a function of them)."""
    kinds = getattr(module, "RESOURCES", {}).get(role, ())
    if callable(kinds):
        kinds = kinds(params if params is not None else module.Params.from_dict({}))
    kinds = tuple(kinds)
    unknown = set(kinds) - set(Resources.KINDS)
    if unknown:
        raise ValueError(f"protocol {module.NAME!r} asks for unknown resource(s) {sorted(unknown)}")
    return kinds


def in_memory_resources(module: Any, params: Params, data: dict[str, Any] | None = None
                        ) -> ResourceFactory:
    """Fresh in-memory resources: a budget sized by the protocol's own parameters, and
    each party's own records from ``data`` (name -> LocalData) where its role reads them."""
    def make(name: str, role: str) -> Resources:
        res = Resources()
        kinds = declared(module, role, params)
        if "budget" in kinds:
            res.budget = PrivacyBudget(params.epsilon_budget, params.delta)
        if "data" in kinds:
            res.data = (data or {}).get(name)
        return res
    return make


async def run_session(protocol: str, roles: dict[str, str], params: dict[str, Any], *,
                      resources: ResourceFactory | None = None,
                      kill: dict[str, Any] | None = None,
                      states: dict[str, dict] | None = None) -> dict[str, RoleResult | BaseException]:
    """Run ``protocol`` with ``roles`` (name -> role). Returns name -> RoleResult, or
    the exception it raised. ``kill`` crashes a party mid-run: ``{"party": name or [names]}``
    plus either ``"after": seconds`` or ``"when": (other_party, text)``, i.e. as
    soon as ``other_party`` reports progress containing ``text``."""
    module = registry.load(protocol)
    typed = module.Params.from_dict(params)      # bad parameters fail before anything runs
    make = resources or in_memory_resources(module, typed)
    net = InMemoryNetwork(list(roles))
    tasks: dict[str, asyncio.Task] = {}

    def crash(victims: str | list[str]) -> None:
        for victim in [victims] if isinstance(victims, str) else victims:
            tasks[victim].cancel()
            net.kill(victim)

    def progress_of(name: str) -> Callable[[str], None]:
        def progress(message: str) -> None:
            if kill and "when" in kill and kill["when"][0] == name and kill["when"][1] in message:
                crash(kill["party"])
        return progress

    for name, role in roles.items():
        channel = net.channel(name)
        channel.conformance = Conformance(module.NAME, module.RULES, roles)
        ctx = RoleContext(channel, roles, dict(params), (states or {}).get(name, {}),
                          progress_of(name), make(name, role))
        tasks[name] = asyncio.create_task(module.ROLES[role](ctx))
        # a party whose role failed is gone, as its process would be: peers waiting on it
        # hear so at once instead of at their timeout
        tasks[name].add_done_callback(
            lambda t, n=name: None if t.cancelled() or t.exception() is None else net.kill(n))
    if kill and "after" in kill:
        asyncio.get_running_loop().call_later(kill["after"], crash, kill["party"])
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    return dict(zip(tasks, results, strict=True))
