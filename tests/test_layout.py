"""The floors of DESIGN.md stay true: imports point down only, no import circle
anywhere (inside a package either), protocols/ holds role code only, and every
secret or noise draw goes through mpc/randomness.py."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# floor of each top-level package; a module may import its own floor or lower ones
FLOORS = {"mpc": 0, "he": 0, "privacy": 1, "learning": 2, "protocols": 3, "parties": 4}
SIDEWAYS = {("he", "mpc")}          # he/ uses mpc.randomness; mpc never imports he


def modules() -> dict[str, Path]:
    out = {}
    for pkg in FLOORS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports, anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    # imports under `if TYPE_CHECKING:` are for annotations only: never run
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_imports_point_down_only(graph):
    upward = []
    for src, targets in graph.items():
        a = src.split(".")[0]
        for dst in targets:
            b = dst.split(".")[0]
            if FLOORS[b] > FLOORS[a] or (FLOORS[b] == FLOORS[a] and a != b
                                         and (a, b) not in SIDEWAYS):
                upward.append(f"{src} -> {dst}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_import_circle(graph):
    # a package's __init__ re-exporting its own modules is not a circle of code
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and (ROOT / t.replace(".", "/")
                                                                  / "__init__.py").exists())}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


FORBIDDEN_IN_PROTOCOLS = {
    r"\bimport parties\b|\bfrom parties\b": "imports parties/",
    r"\bopen\(|\.write_text\(|\.read_text\(|\.write_bytes\(|\.read_bytes\(": "opens a file",
    r"\bargparse\b": "parses a command line",
    r"savefig|matplotlib": "draws a plot",
    r"set_num_threads|manual_seed|np\.random\.seed|torch\.seed\(": "sets process-wide torch/numpy state",
    r"\bsocket\b|aiomqtt": "opens a socket",
}


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, code) with strings, docstrings and comments blanked out."""
    lines = path.read_text().splitlines()
    out = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT):
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                row = out[r - 1]
                a = c0 if r == r0 else 0
                b = c1 if r == r1 else len(row)
                row[a:b] = " " * (b - a)
    return [(i, "".join(row)) for i, row in enumerate(out, 1)]


def test_protocols_hold_role_code_only():
    found = []
    for path in sorted((ROOT / "protocols").glob("*.py")):
        for i, code in code_lines(path):
            line = code
            for pattern, what in FORBIDDEN_IN_PROTOCOLS.items():
                if re.search(pattern, code):
                    found.append(f"protocols/{path.name}:{i} {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_grep_sees_a_violation():
    """The check above can fail: the same patterns catch what they are meant to."""
    lines = ["torch.set_num_threads(1)", "from parties.ledger import BudgetLedger",
             "open('x.json', 'w')", "fig.savefig(p)"]
    assert all(any(re.search(p, line) for p in FORBIDDEN_IN_PROTOCOLS) for line in lines)


def test_secrets_and_noise_come_from_one_module():
    """No OS or default-generator randomness outside mpc/randomness.py in library code."""
    pattern = re.compile(r"\bsecrets\.(token|randbits|choice)|os\.urandom|np\.random\.default_rng\(\)"
                         r"|np\.random\.(rand|randn|normal|uniform|randint)\(|torch\.randn?\(")
    found = []
    for pkg in ("mpc", "he", "privacy", "protocols", "parties"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "mpc" / "randomness.py":
                continue
            for i, code in code_lines(path):
                if pattern.search(code):
                    found.append(f"{path.relative_to(ROOT)}:{i}: {code.strip()}")
    assert not found, "randomness outside mpc/randomness.py:\n" + "\n".join(found)


def test_test_only_protocols_are_not_in_the_production_registry():
    from protocols.registry import BUILT_IN
    assert "pingpong" not in BUILT_IN
