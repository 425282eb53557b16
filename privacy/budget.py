"""A privacy budget policy: which PATE queries a guardian may still answer, and which
pure-DP releases (a DSSGD participant's private uploads), Skellam-noised sums (a
FedAvg client's secure-aggregation rounds), randomized quantizations (a Hash-Comb
owner's rounds) or Gaussian-noised uploads (its DP-FedAvg baseline) a party may still make.

Pure and in memory: :class:`PrivacyBudget` decides, records and replays
*entries* (plain dicts): a ``charge`` (a query granted, charged before its
answer is released), a ``settle`` (whether a Confident-GNMax query actually
answered) or a ``refused`` (a query turned away). ``parties.ledger.BudgetLedger``
is the same policy with every entry written to a crash-safe file first; a
protocol sees either through the same methods.

Accounting is data-independent and worst case: a granted Confident-GNMax query
is charged as if it answered until :meth:`PrivacyBudget.settle` says it did
not. A query is refused (a :class:`Decision` with ``granted=False``, not an
exception) when its worst-case cost would push epsilon past the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .gaussian import rdp as gaussian_rdp
from .pate import (
    DEFAULT_ORDERS,
    Conversion,
    PateAccountant,
    epsilon_from_rdp,
    gnmax_rdp_data_independent,
    threshold_rdp_data_independent,
)
from .rqm import RQM
from .rqm import rdp as rqm_rdp
from .skellam import rdp as skellam_rdp
from .svt import pure_dp_rdp


class BudgetError(ValueError):
    """The budget was configured or asked to do something invalid (e.g. settle twice)."""


class BadEntry(BudgetError):
    """An entry to replay is malformed or of an unknown type."""


@dataclass(frozen=True)
class Decision:
    """The guardian's answer to 'may I answer this query?'.

    ``epsilon_spent`` is the worst-case epsilon before the query and
    ``epsilon_if_granted`` after it; ``seq`` is the charge entry to settle.
    """

    granted: bool
    seq: int | None
    epsilon_spent: float
    epsilon_if_granted: float
    budget: float
    reason: str


class PrivacyBudget:
    """A worst-case, data-independent PATE budget of ``epsilon_budget`` at ``delta``."""

    def __init__(self, epsilon_budget: float, delta: float, conversion: Conversion = "improved",
                 orders: ArrayLike = DEFAULT_ORDERS) -> None:
        if not (isinstance(epsilon_budget, int | float) and math.isfinite(epsilon_budget)
                and epsilon_budget > 0):
            raise BudgetError(f"epsilon_budget must be positive, got {epsilon_budget!r}")
        if not 0 < delta < 1:
            raise BudgetError(f"delta must be in (0, 1), got {delta!r}")
        if conversion not in ("classic", "improved"):
            raise BudgetError(f"conversion must be 'classic' or 'improved', got {conversion!r}")
        self.epsilon_budget = float(epsilon_budget)
        self.delta = float(delta)
        self.conversion: Conversion = conversion
        self._acc = PateAccountant(orders)            # settled costs (validates the orders)
        self._orders = self._acc.orders
        # unsettled Confident-GNMax charges: seq -> ((sigma_1, sigma_2), worst-case rdp)
        self._pending: dict[int, tuple[tuple[float, float], NDArray[np.float64]]] = {}
        self._pending_sum = np.zeros_like(self._orders)
        self.refusals = 0
        self._last_seq = 0                            # entry 0 is the (implicit) header

    # ------------------------------------------------------------ queries
    def request_gnmax(self, sigma: float, query_id: str = "") -> Decision:
        """Ask to answer one GNMax query (always answers)."""
        cost = gnmax_rdp_data_independent(sigma, self._orders)
        return self._request(cost, {"mechanism": "gnmax", "sigma": float(sigma)}, query_id)

    def request_confident_gnmax(self, sigma_threshold: float, sigma_gnmax: float,
                                query_id: str = "") -> Decision:
        """Ask to answer one Confident-GNMax query; charged as if it answers
        until :meth:`settle` records the outcome."""
        cost = self._confident_cost(sigma_threshold, sigma_gnmax)
        return self._request(cost, {"mechanism": "confident_gnmax",
                                    "sigma_threshold": float(sigma_threshold),
                                    "sigma_gnmax": float(sigma_gnmax)}, query_id)

    def request_threshold(self, sigma_threshold: float, query_id: str = "") -> Decision:
        """Ask to run only Confident-GNMax's noisy threshold check on a query that cannot be
        answered (the answer cap is reached): its threshold step is all it costs."""
        return self._request(threshold_rdp_data_independent(sigma_threshold, self._orders),
                             {"mechanism": "threshold", "sigma_threshold": float(sigma_threshold)},
                             query_id)

    def request_pure(self, epsilon: float, query_id: str = "", mechanism: str = "pure") -> Decision:
        """Ask to release the output of an ``epsilon``-DP mechanism (e.g. one round of
        DSSGD's sparse vector technique), charged as its RDP curve min(eps, alpha eps^2 / 2)."""
        if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
            raise BudgetError(f"epsilon must be positive, got {epsilon!r}")
        return self._request(pure_dp_rdp(epsilon, self._orders),
                             {"mechanism": "pure", "epsilon": float(epsilon), "what": mechanism},
                             query_id)

    def request_skellam(self, l1: float, l2: float, mu: float, query_id: str = "") -> Decision:
        """Ask to release one sum carrying Skellam noise Sk(mu) whose inputs differ by at
        most (l1, l2) between neighbours (privacy/skellam.py): a secure-aggregation round."""
        if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in (l1, l2, mu)):
            raise BudgetError(f"l1, l2 and mu must be positive, got {l1!r}, {l2!r}, {mu!r}")
        return self._request(skellam_rdp(self._orders, l1, l2, mu),
                             {"mechanism": "skellam", "l1": float(l1), "l2": float(l2), "mu": float(mu)},
                             query_id)

    def request_rqm(self, levels: int, lo: float, hi: float, margin: float, q: float,
                    coordinates: int, query_id: str = "") -> Decision:
        """Ask to release ``coordinates`` values through the Randomized Quantization
        Mechanism on a Hash-Comb tree's leaves (privacy/rqm.py): one Hash-Comb round."""
        params = {"mechanism": "rqm", "levels": int(levels), "lo": float(lo), "hi": float(hi),
                  "margin": float(margin), "q": float(q), "coordinates": int(coordinates)}
        return self._request(self._rqm_cost(params), params, query_id)

    def request_gaussian(self, noise_multiplier: float, query_id: str = "") -> Decision:
        """Ask to release one value carrying Gaussian noise of ``noise_multiplier`` times
        its L2 sensitivity (a local DP-FedAvg upload)."""
        if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier)
                and noise_multiplier > 0):
            raise BudgetError(f"noise multiplier must be positive, got {noise_multiplier!r}")
        return self._request(gaussian_rdp(self._orders, float(noise_multiplier)),
                             {"mechanism": "gaussian", "noise_multiplier": float(noise_multiplier)},
                             query_id)

    def settle(self, seq: int, answered: bool) -> None:
        """Record whether the Confident-GNMax query charged at ``seq`` answered;
        if it abstained its GNMax step is no longer charged."""
        if seq not in self._pending:
            raise BudgetError(f"entry {seq} is not an unsettled Confident-GNMax charge "
                              f"(unsettled: {sorted(self._pending)})")
        self._record({"type": "settle", "charge": int(seq), "answered": bool(answered)})

    # ------------------------------------------------------------ reading
    def epsilon_spent(self, conversion: Conversion | None = None) -> float:
        """Worst-case data-independent epsilon spent, unsettled queries counted as answered."""
        return self._eps(self._worst_rdp(), conversion)

    @property
    def accountant(self) -> PateAccountant:
        """A copy of the accountant of settled queries (excludes unsettled)."""
        return self._acc.copy()

    @property
    def unsettled(self) -> list[int]:
        return sorted(self._pending)

    @property
    def entries(self) -> int:
        """Number of entries, the header included."""
        return self._last_seq + 1

    # ------------------------------------------------------------ entries
    def apply(self, entry: dict[str, Any]) -> None:
        """Replay one entry into the state (validates it first; raises :class:`BadEntry`)."""
        kind = entry.get("type")
        try:
            if kind == "charge" and entry["mechanism"] == "gnmax":
                self._acc.add_gnmax(None, entry["sigma"])
            elif kind == "charge" and entry["mechanism"] == "pure":
                self._acc.add_rdp(pure_dp_rdp(float(entry["epsilon"]), self._orders),
                                  data_dependent=False)
            elif kind == "charge" and entry["mechanism"] == "skellam":
                self._acc.add_rdp(skellam_rdp(self._orders, float(entry["l1"]), float(entry["l2"]),
                                              float(entry["mu"])), data_dependent=False)
            elif kind == "charge" and entry["mechanism"] == "threshold":
                self._acc.add_rdp(threshold_rdp_data_independent(float(entry["sigma_threshold"]),
                                                                  self._orders), data_dependent=False)
            elif kind == "charge" and entry["mechanism"] == "rqm":
                self._acc.add_rdp(self._rqm_cost(entry), data_dependent=False)
            elif kind == "charge" and entry["mechanism"] == "gaussian":
                self._acc.add_rdp(gaussian_rdp(self._orders, float(entry["noise_multiplier"])),
                                  data_dependent=False)
            elif kind == "charge" and entry["mechanism"] == "confident_gnmax":
                sigmas = (entry["sigma_threshold"], entry["sigma_gnmax"])
                cost = self._confident_cost(*sigmas)
                self._pending[entry["seq"]] = (sigmas, cost)
                self._pending_sum = self._pending_sum + cost
            elif kind == "settle":
                if not isinstance(entry["answered"], bool):
                    raise TypeError("answered must be a boolean")
                (sigma_t, sigma_g), _ = self._pending.pop(entry["charge"])
                # Recompute rather than subtract, so no rounding drift builds up.
                self._pending_sum = sum((c for _, c in self._pending.values()),
                                        np.zeros_like(self._orders))
                self._acc.add_confident_gnmax(None, 0.0, sigma_t, sigma_g,
                                              answered=entry["answered"])
            elif kind == "refused":
                self.refusals += 1
            else:
                raise BadEntry(f"entry {entry.get('seq')} has unknown type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadEntry):
                raise
            raise BadEntry(f"entry {entry.get('seq')} is malformed ({exc!r})") from None
        self._last_seq = int(entry.get("seq", self._last_seq + 1))

    def _record(self, body: dict[str, Any]) -> int:
        """Number, apply and keep one new entry; returns its seq. The file-backed
        ledger overrides this to write the entry durably as well."""
        entry = {"seq": self._last_seq + 1, **body}
        self.apply(entry)
        return entry["seq"]

    # ------------------------------------------------------------ internals
    def _confident_cost(self, sigma_threshold: float, sigma_gnmax: float) -> NDArray[np.float64]:
        return (threshold_rdp_data_independent(sigma_threshold, self._orders)
                + gnmax_rdp_data_independent(sigma_gnmax, self._orders))

    def _rqm_cost(self, p: dict[str, Any]) -> NDArray[np.float64]:
        mech = RQM.on_leaves(int(p["levels"]), float(p["lo"]), float(p["hi"]), float(p["margin"]),
                             float(p["q"]))
        return int(p["coordinates"]) * rqm_rdp(mech, self._orders)

    def _worst_rdp(self) -> NDArray[np.float64]:
        return self._acc.rdp + self._pending_sum

    def _eps(self, rdp: NDArray[np.float64], conversion: Conversion | None = None) -> float:
        return epsilon_from_rdp(self._orders, rdp, self.delta, conversion or self.conversion)[0]

    def _request(self, cost: NDArray[np.float64], params: dict[str, Any],
                 query_id: str) -> Decision:
        worst = self._worst_rdp()
        before, after = self._eps(worst), self._eps(worst + cost)
        if after > self.epsilon_budget:
            self._record({"type": "refused", "query_id": str(query_id), **params,
                          "epsilon_if_granted": after})
            return Decision(False, None, before, after, self.epsilon_budget,
                            f"worst-case epsilon would reach {after:.4g} > budget "
                            f"{self.epsilon_budget:g}")
        # epsilon_if_granted is for human auditors; replay recomputes it.
        seq = self._record({"type": "charge", "query_id": str(query_id), **params,
                            "epsilon_if_granted": after})
        return Decision(True, seq, before, after, self.epsilon_budget, "within budget")
