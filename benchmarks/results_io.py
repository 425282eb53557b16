"""What the result scripts share: torch's thread count and writing their rows."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Oversubscribed torch threads were 10x slower on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_json(rows: Any, path: str | None) -> None:
    """Write ``rows`` as indented JSON to ``path`` (nothing when None)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


T = TypeVar("T")


def run_and_report(run: Callable[[], T], report: Callable[[T, float], None],
                   json_path: str | None) -> int:
    """Run an experiment on one torch thread, report it with its duration in seconds,
    and write its rows as JSON; the exit code of a result script."""
    t0 = time.time()
    with one_torch_thread():
        out = run()
    report(out, time.time() - t0)
    write_json(out, json_path)
    return 0
