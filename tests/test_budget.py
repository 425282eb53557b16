"""privacy/budget.py: the guardian's policy, pure and in memory; the ledger file
(tests/test_ledger.py) persists exactly the same decisions."""

import pytest

from parties.ledger import BudgetLedger
from privacy.budget import BadEntry, BudgetError, PrivacyBudget


def _drive(budget: PrivacyBudget) -> list[tuple[bool, int | None]]:
    out = []
    for i in range(40):
        d = (budget.request_gnmax(2.0, f"g{i}") if i % 2 else
             budget.request_confident_gnmax(3.0, 2.0, f"c{i}"))
        out.append((d.granted, d.seq))
        if d.granted and i % 2 == 0 and i % 4 == 0:
            budget.settle(d.seq, answered=False)
    return out


def test_budget_refuses_past_its_epsilon_and_never_exceeds_it():
    b = PrivacyBudget(20.0, 1e-5)
    decisions = _drive(b)
    assert any(g for g, _ in decisions) and not all(g for g, _ in decisions)
    assert b.epsilon_spent() <= 20.0 and b.refusals == sum(not g for g, _ in decisions)


def test_in_memory_budget_and_ledger_decide_alike(tmp_path):
    mem = PrivacyBudget(20.0, 1e-5)
    with BudgetLedger.create(tmp_path / "l.jsonl", epsilon_budget=20.0, delta=1e-5) as led:
        assert _drive(mem) == _drive(led)
        assert led.epsilon_spent() == pytest.approx(mem.epsilon_spent())
        assert led.unsettled == mem.unsettled


def test_bad_configuration_and_entries_are_refused():
    with pytest.raises(BudgetError, match="epsilon_budget"):
        PrivacyBudget(0.0, 1e-5)
    with pytest.raises(BudgetError, match="delta"):
        PrivacyBudget(1.0, 1.5)
    b = PrivacyBudget(1.0, 1e-5)
    with pytest.raises(BadEntry, match="unknown type"):
        b.apply({"seq": 1, "type": "bonus"})
    with pytest.raises(BudgetError, match="not an unsettled"):
        b.settle(7, answered=True)
