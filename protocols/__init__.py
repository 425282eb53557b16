"""The protocols, as async role functions over a :class:`mpc.channel.Channel`.

Each protocol module defines:

* ``NAME``: the protocol name, also the first part of its message kinds;
* ``ROLES``: role name -> ``async def role(ctx: RoleContext) -> RoleResult``;
* ``RULES``: the conformance rules, a set of ``(from_role, to_role, step)``
  triples; the audit flags any message that is not one of them.

Nothing here opens a socket, touches a file or imports ``parties``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from mpc.channel import Channel

# protocol name -> module; the registry the party runner and the audit use
PROTOCOLS: dict[str, str] = {
    "argmax2pc": "protocols.argmax2pc",
    "hcsetup": "protocols.hcsetup",
    "hcrecover": "protocols.hcrecover",
    "capc": "protocols.capc",
    "hcfl": "protocols.hashcomb_fl",
    "pingpong": "protocols.pingpong",
}


class ProtocolError(RuntimeError):
    """A protocol cannot go on: inconsistent inputs, a misbehaving peer, bad parameters."""


@dataclass
class RoleContext:
    """What a role function gets: its channel, everyone's roles, the public parameters,
    the private state it kept from earlier protocols, and a progress callback."""

    channel: Channel
    roles: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda message: None
    # objects the runner owns and hands in (files live in parties/), e.g. the
    # privacy guardian's budget ledger; a protocol declares them in RESOURCES
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def me(self) -> str:
        return self.channel.me

    @property
    def role(self) -> str:
        return self.roles[self.channel.me]

    def with_role(self, role: str) -> list[str]:
        return sorted(n for n, r in self.roles.items() if r == role)

    def one_with_role(self, role: str) -> str:
        names = self.with_role(role)
        if len(names) != 1:
            raise ProtocolError(f"this protocol needs exactly one '{role}', the deployment has "
                                f"{len(names)}: {names}")
        return names[0]


@dataclass
class RoleResult:
    """``public``: what the party reports (results table, results.json);
    ``private``: state to keep for later protocols (secret shares, keys),
    stored by the runner with the party's key material, never in results."""

    public: dict[str, Any]
    private: dict[str, Any] = field(default_factory=dict)


RoleFn = Callable[[RoleContext], Awaitable[RoleResult]]


def load(name: str) -> ModuleType:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return importlib.import_module(PROTOCOLS[name])


def role_function(protocol: str, role: str) -> RoleFn:
    roles = load(protocol).ROLES
    if role not in roles:
        raise ProtocolError(f"protocol {protocol!r} has no role {role!r}; roles: {', '.join(sorted(roles))}")
    return roles[role]


def conformance_rules() -> dict[str, set[tuple[str, str, str]]]:
    """Every registered protocol's allowed (from_role, to_role, step) triples."""
    return {name: set(load(name).RULES) for name in PROTOCOLS}
