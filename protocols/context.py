"""What a role function gets (:class:`RoleContext`) and gives back (:class:`RoleResult`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from learning.data_files import LocalData
from mpc.channel import Channel
from privacy.budget import PrivacyBudget

from .errors import ParameterError


@dataclass
class Resources:
    """Objects a role needs that live outside the protocol, opened by whoever runs
    it and handed in: an in-memory budget in tests, the file-backed ledger
    (``parties.ledger.BudgetLedger``, the same policy) in deployment. A protocol
    declares what each role needs in ``RESOURCES = {role: ("budget", ...)}``."""

    budget: PrivacyBudget | None = None
    data: LocalData | None = None      # the party's own records, read and checked at start
    queries: LocalData | None = None   # a querying party's unlabelled rows (label -1)
    model: Any = None                  # an answering party's own model (HE-friendly layers)

    KINDS = ("budget", "data", "queries", "model")


@dataclass
class RoleContext:
    """A role's channel, everyone's roles, the public parameters, the private state
    it kept from earlier protocols, its resources and a progress callback.
    ``partial``: public results so far, reported if the role fails later (e.g. the
    labels a querying party learned before a peer died)."""

    channel: Channel
    roles: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda message: None
    resources: Resources = field(default_factory=Resources)
    partial: dict[str, Any] = field(default_factory=dict)

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
            raise ParameterError(f"this protocol needs exactly one '{role}', the deployment has "
                                 f"{len(names)}: {names}")
        return names[0]


@dataclass
class RoleResult:
    """``public``: what the party reports (results table, results.json);
    ``private``: state to keep for later protocols (secret shares, keys),
    stored by the runner with the party's key material, never in results;
    ``outputs``: files for the party's operator (its trained model, labels), by file
    name, written by the runner into the party's own output directory."""

    public: dict[str, Any]
    private: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, bytes] = field(default_factory=dict)


RoleFn = Callable[[RoleContext], Awaitable[RoleResult]]
