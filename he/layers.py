"""The steps a compiled plan is made of (pure data, shared by every packing)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pow2(n: int) -> int:
    """The smallest power of two >= n (slot counts)."""
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Affine:
    """y = W x + b on flattened features; one level."""
    W: np.ndarray  # [m, n] float64
    b: np.ndarray  # [m]
    source: str    # layers fused into it, for messages

    @property
    def padded(self) -> tuple[int, int]:
        return pow2(self.W.shape[0]), pow2(self.W.shape[1])

    @property
    def baby(self) -> int:
        """Baby-step count of the baby-step giant-step diagonal product."""
        k = min(self.padded)
        return 1 << ((k.bit_length() - 1 + 1) // 2)


@dataclass(frozen=True)
class Activation:
    """z = x * (x + beta); one level."""
    beta: float
    source: str
