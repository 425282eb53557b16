"""What the result scripts share: torch's thread count and writing their rows."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

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
