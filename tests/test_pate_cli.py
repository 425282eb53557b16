"""`confidant privacy`: figures agree with the accountant, plot is written, errors are clean."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from parties.cli import main
from privacy.pate import PateAccountant

CAPC = ["privacy", "--teachers", "250", "--threshold", "300", "--sigma1", "200",
        "--sigma2", "40", "--delta", "1e-6"]


def _row(out: str, label: str) -> tuple[float, float]:
    line = next(x for x in out.splitlines() if label in x)
    classic, improved = re.findall(r"\d+\.\d{4}", line)[:2]
    return float(classic), float(improved)


def test_data_independent_and_data_dependent_rows(capsys, tmp_path: Path) -> None:
    plot = tmp_path / "eps.png"
    assert main(CAPC + ["--queries", "200", "--votes-profile", "unanimous",
                        "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    ind = PateAccountant()
    dep = PateAccountant()
    votes = [250] + [0] * 9
    for _ in range(200):
        ind.add_confident_gnmax(None, 300, 200.0, 40.0)
        dep.add_rdp(dep.expected_confident_gnmax(votes, 300, 200.0, 40.0), data_dependent=True)
    assert _row(out, "data-independent, worst case") == pytest.approx(
        (ind.epsilon(1e-6, "classic"), ind.epsilon(1e-6, "improved")), abs=1e-4)
    assert _row(out, "DATA-DEPENDENT") == pytest.approx(
        (dep.epsilon(1e-6, "classic"), dep.epsilon(1e-6, "improved")), abs=1e-4)
    assert "not a releasable guarantee" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_gnmax_answer_reference(capsys) -> None:
    assert main(["privacy", "--sigma2", "40", "--queries", "1"]) == 0
    assert _row(capsys.readouterr().out, "worst case") == pytest.approx((0.1865, 0.1425), abs=1e-4)


def test_votes_file_with_one_row_per_query(capsys, tmp_path: Path) -> None:
    rows = np.zeros((5, 10))
    rows[:, 0] = [250, 240, 130, 250, 200]
    rows[:, 1] = 250 - rows[:, 0]
    path = tmp_path / "votes.npy"
    np.save(path, rows)
    assert main(CAPC + ["--queries", "5", "--votes-profile", str(path)]) == 0
    dep = PateAccountant()
    for v in rows:
        dep.add_rdp(dep.expected_confident_gnmax(v, 300, 200.0, 40.0), data_dependent=True)
    assert _row(capsys.readouterr().out, "DATA-DEPENDENT")[1] == pytest.approx(
        dep.epsilon(1e-6), abs=1e-4)


def test_answered_fraction_row_lies_between(capsys) -> None:
    assert main(CAPC + ["--queries", "100", "--answered-fraction", "0.3",
                        "--concentration", "0.6"]) == 0
    out = capsys.readouterr().out
    worst, part, dep = (_row(out, "worst case")[1], _row(out, "30% answered")[1],
                        _row(out, "DATA-DEPENDENT")[1])
    assert dep < worst and part < worst


@pytest.mark.parametrize("argv, message", [
    (["privacy", "--sigma2", "40", "--threshold", "300"], "--sigma1"),
    (CAPC + ["--votes-profile", "nonsense"], "--votes-profile"),
    (CAPC + ["--concentration", "1.5"], "--concentration"),
    (CAPC + ["--queries", "0"], "--queries"),
    (["privacy", "--sigma2", "-1"], "sigma"),
])
def test_bad_input_exits_2_with_a_message(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_suggest_gives_caps_within_the_target(capsys) -> None:
    from parties.privacy_cli import answer_cap
    from privacy.budget import PrivacyBudget

    assert main(["privacy", "--suggest", "--teachers", "200", "--queries", "500",
                 "--target-epsilon", "5", "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"--threshold (\S+) --sigma-threshold (\S+) --sigma-gnmax (\S+) "
                  r"--max-answers (\d+) --queries 500", out.replace("\n", " "))
    assert m, out
    t, s1, s2, cap = float(m[1]), float(m[2]), float(m[3]), int(m[4])
    assert (t, s1, s2) == (90, 40, 20) and cap == answer_cap(500, 40, 20, 5.0, 1e-5) > 50
    # the cap is the largest that fits: charge it through the guardian's own budget
    budget = PrivacyBudget(5.0, 1e-5)
    grants = [budget.request_confident_gnmax(s1, s2).granted for _ in range(cap)] + \
        [budget.request_threshold(s1).granted for _ in range(500 - cap)]
    assert all(grants) and budget.epsilon_spent() <= 5.0
    assert not budget.request_confident_gnmax(s1, s2).granted   # one more answer would not fit


def test_suggest_needs_a_target(capsys) -> None:
    assert main(["privacy", "--suggest", "--teachers", "200"]) == 2
    assert "--target-epsilon" in capsys.readouterr().err
