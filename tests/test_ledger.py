"""The privacy guardian's budget ledger: budget enforcement, crash safety
(real subprocesses killed with SIGKILL), and detection of damaged ledgers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parties.ledger import (
    BudgetLedger,
    LedgerCorrupted,
    LedgerExists,
    LedgerLocked,
    LedgerNotFound,
    LedgerTruncated,
    LedgerUsageError,
    head_path,
)
from privacy.pate import PateAccountant

ROOT = Path(__file__).resolve().parents[1]
S1, S2 = 200.0, 40.0


def _new(path: Path, budget: float = 1.0, **kw) -> BudgetLedger:
    return BudgetLedger.create(path, epsilon_budget=budget, delta=1e-6, **kw)


def _fill(ledger: BudgetLedger, n: int) -> list[int]:
    seqs = []
    for i in range(n):
        d = ledger.request_confident_gnmax(S1, S2, query_id=f"q{i}")
        assert d.granted
        seqs.append(d.seq)
        ledger.settle(d.seq, answered=i % 2 == 0)
    return seqs


# ---------------------------------------------------------------- budget

def test_refuses_exactly_when_worst_case_would_exceed_budget(tmp_path: Path) -> None:
    with _new(tmp_path / "l.jsonl") as ledger:
        shadow = PateAccountant(ledger.accountant.orders)
        while True:
            d = ledger.request_confident_gnmax(S1, S2)
            worst = shadow.epsilon_after_confident_gnmax(S1, S2, 1e-6)
            assert d.epsilon_if_granted == pytest.approx(worst)
            if not d.granted:
                assert worst > 1.0 and "budget" in d.reason and d.seq is None
                break
            assert worst <= 1.0
            shadow.add_confident_gnmax(None, 300, S1, S2, answered=True)
        assert ledger.epsilon_spent() <= 1.0
        assert ledger.refusals == 1
        # Refusals spend nothing, and a much cheaper query still fits.
        spent = ledger.epsilon_spent()
        assert ledger.request_confident_gnmax(S1, S2).granted is False
        assert ledger.epsilon_spent() == spent
        assert ledger.request_gnmax(1e6).granted
        assert spent < ledger.epsilon_spent() <= 1.0


def test_unsettled_query_is_charged_as_answered_until_settled(tmp_path: Path) -> None:
    with _new(tmp_path / "l.jsonl", budget=5.0) as ledger:
        d = ledger.request_confident_gnmax(S1, S2)
        worst = ledger.epsilon_spent()
        assert ledger.unsettled == [d.seq] and worst == pytest.approx(d.epsilon_if_granted)
        ledger.settle(d.seq, answered=False)
        assert ledger.epsilon_spent() < worst
        assert ledger.accountant.queries == 1 and ledger.accountant.answered == 0
        with pytest.raises(LedgerUsageError):
            ledger.settle(d.seq, answered=True)


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with _new(path, budget=5.0) as ledger:
        _fill(ledger, 5)
        pending = ledger.request_confident_gnmax(S1, S2).seq
        ledger.request_gnmax(S2)
        spent, entries = ledger.epsilon_spent(), ledger.entries
    with BudgetLedger.open(path) as again:
        assert again.epsilon_spent() == spent
        assert again.entries == entries and again.unsettled == [pending]
        again.settle(pending, answered=False)


@settings(max_examples=12, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["cg", "g"]), st.sampled_from([None, True, False]),
                              st.floats(5.0, 300.0), st.floats(5.0, 100.0)),
                    min_size=1, max_size=8))
def test_replay_reproduces_live_state(ops: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.jsonl"
        live = _new(path, budget=3.0)
        for kind, answered, s1, s2 in ops:
            if kind == "g":
                live.request_gnmax(s2)
                continue
            d = live.request_confident_gnmax(s1, s2)
            if d.granted and answered is not None:
                live.settle(d.seq, answered)
        state = (live.epsilon_spent(), live.unsettled, live.refusals, live.entries)
        assert state[0] <= 3.0
        live.close()
        with BudgetLedger.open(path) as again:
            assert (again.epsilon_spent(), again.unsettled, again.refusals,
                    again.entries) == state


# ---------------------------------------------------------------- lifecycle errors

def test_never_overwrites_nor_silently_recreates(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with pytest.raises(LedgerNotFound):
        BudgetLedger.open(path)
    _new(path).close()
    with pytest.raises(LedgerExists):
        _new(path)
    os.remove(path)  # ledger lost, head still there: creating anew is refused
    with pytest.raises(LedgerExists):
        _new(path)


def test_one_open_handle_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with _new(path):
        with pytest.raises(LedgerLocked):
            BudgetLedger.open(path)
    BudgetLedger.open(path).close()


# ---------------------------------------------------------------- damage detection

@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "l.jsonl"
    with _new(path, budget=5.0) as ledger:
        _fill(ledger, 4)
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_line_cut_off_the_end_is_reported_truncated(filled: Path) -> None:
    filled.write_bytes(b"".join(_lines(filled)[:-1]))
    with pytest.raises(LedgerTruncated, match="cut off"):
        BudgetLedger.open(filled)


def test_partial_last_line_is_reported_truncated(filled: Path) -> None:
    filled.write_bytes(filled.read_bytes()[:-25])
    with pytest.raises(LedgerTruncated, match="incomplete"):
        BudgetLedger.open(filled)


def test_empty_ledger_is_reported_truncated(filled: Path) -> None:
    filled.write_bytes(b"")
    with pytest.raises(LedgerTruncated):
        BudgetLedger.open(filled)


def test_edited_entry_is_detected(filled: Path) -> None:
    lines = _lines(filled)
    entry = json.loads(lines[2])
    assert entry["type"] == "settle"
    entry["answered"] = not entry["answered"]
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    filled.write_bytes(b"".join(lines))
    with pytest.raises(LedgerCorrupted, match="line 3 was altered"):
        BudgetLedger.open(filled)


def test_removed_middle_entry_breaks_the_chain(filled: Path) -> None:
    lines = _lines(filled)
    filled.write_bytes(b"".join(lines[:2] + lines[3:]))
    with pytest.raises(LedgerCorrupted, match="breaks the chain"):
        BudgetLedger.open(filled)


def test_garbage_line_is_detected(filled: Path) -> None:
    lines = _lines(filled)
    lines[2] = b"not json at all\n"
    filled.write_bytes(b"".join(lines))
    with pytest.raises(LedgerCorrupted, match="line 3"):
        BudgetLedger.open(filled)


def test_missing_head_is_reported(filled: Path) -> None:
    head_path(filled).unlink()
    with pytest.raises(LedgerCorrupted, match="missing"):
        BudgetLedger.open(filled)


def test_head_one_entry_behind_is_a_crash_and_is_repaired(filled: Path) -> None:
    # A crash between appending a line and updating the head leaves the head
    # one entry behind: that is recoverable, and the head is brought forward.
    lines = _lines(filled)
    prev = json.loads(lines[-2])
    head_path(filled).write_text(json.dumps({"seq": prev["seq"], "hash": prev["hash"]}))
    with BudgetLedger.open(filled) as ledger:
        assert ledger.entries == len(lines)
    assert json.loads(head_path(filled).read_text())["seq"] == len(lines) - 1


def test_keyed_ledger_rejects_forged_chain_and_wrong_key(tmp_path: Path) -> None:
    import hashlib
    path = tmp_path / "l.jsonl"
    key = os.urandom(32)
    with _new(path, budget=5.0, key=key) as ledger:
        _fill(ledger, 2)
    BudgetLedger.open(path, key=key).close()
    with pytest.raises(LedgerCorrupted, match="wrong key"):
        BudgetLedger.open(path, key=os.urandom(32))
    with pytest.raises(LedgerCorrupted, match="auth"):
        BudgetLedger.open(path)
    # Someone without the key edits an entry and recomputes plain SHA-256 digests.
    prev, out = "0" * 64, []
    for i, raw in enumerate(_lines(path)):
        e = json.loads(raw)
        e.pop("hash")
        e["prev"] = prev
        if i == 2:
            e["answered"] = not e["answered"]
        body = json.dumps(e, sort_keys=True, separators=(",", ":")).encode()
        prev = hashlib.sha256(body).hexdigest()
        out.append(json.dumps({**e, "hash": prev}, sort_keys=True, separators=(",", ":")))
    path.write_text("\n".join(out) + "\n")
    with pytest.raises(LedgerCorrupted):
        BudgetLedger.open(path, key=key)


# ---------------------------------------------------------------- SIGKILL

_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from parties.ledger import BudgetLedger
    ledger = BudgetLedger.open({path!r})
    i = 0
    while True:
        d = ledger.request_confident_gnmax(200.0, 40.0, query_id=f"child{{i}}")
        if not d.granted:
            print("REFUSED", flush=True)
            time.sleep(600)
        # The answer would be released here, after the charge is on disk.
        print("GRANTED", d.seq, flush=True)
        ledger.settle(d.seq, answered=i % 3 != 0)
        print("SETTLED", d.seq, flush=True)
        i += 1
""")


def _spawn(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(ROOT), path=str(path))],
                            stdout=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_run_loses_no_granted_entry(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _new(path, budget=50.0).close()
    seen: list[str] = []
    for round_ in range(3):
        proc = _spawn(path)
        # Kill at an arbitrary point while the child keeps appending.
        for _ in range(8 + 3 * round_):
            seen.append(proc.stdout.readline().strip())
        _kill(proc)
        with BudgetLedger.open(path) as ledger:
            entries = [json.loads(line) for line in path.read_text().splitlines()]
            by_seq = {e["seq"]: e for e in entries}
            for msg in seen:
                kind, seq = msg.split()
                if kind == "GRANTED":
                    assert by_seq[int(seq)]["type"] == "charge"
                else:
                    assert int(seq) not in ledger.unsettled
            # Worst case is the replay of everything on disk.
            shadow = PateAccountant(ledger.accountant.orders)
            settled = {e["charge"]: e["answered"] for e in entries if e["type"] == "settle"}
            for e in entries:
                if e["type"] == "charge":
                    shadow.add_confident_gnmax(None, 0, 200.0, 40.0,
                                               answered=settled.get(e["seq"], True))
            assert ledger.epsilon_spent() == pytest.approx(shadow.epsilon(1e-6))


def test_sigkill_after_budget_exhausted_keeps_refusing(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _new(path, budget=0.8).close()
    proc = _spawn(path)
    lines = []
    while not lines or lines[-1] != "REFUSED":
        lines.append(proc.stdout.readline().strip())
        assert lines[-1], "child died before exhausting the budget"
    _kill(proc)
    granted = sum(1 for x in lines if x.startswith("GRANTED"))
    assert granted > 3
    with BudgetLedger.open(path) as ledger:
        assert ledger.epsilon_spent() <= 0.8
        d = ledger.request_confident_gnmax(200.0, 40.0)
        assert not d.granted and d.epsilon_if_granted > 0.8
    # A second crashed guardian cannot have granted more either.
    proc = _spawn(path)
    assert proc.stdout.readline().strip() == "REFUSED"
    _kill(proc)
    with BudgetLedger.open(path) as ledger:
        assert ledger.refusals == 3 and ledger.epsilon_spent() <= 0.8
