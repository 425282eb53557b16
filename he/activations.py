"""HE-friendly activations: degree-2 polynomials, trainable in plain PyTorch.

Train the model with these in place of ReLU/SiLU; he.compile then evaluates the
very same function under CKKS with one multiplicative level per activation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Poly(nn.Module):
    """y = c0 + c1*x + c2*x**2, element-wise. Degree <= 2 (one CKKS level)."""

    def __init__(self, coeffs: tuple[float, ...] | list[float]) -> None:
        super().__init__()
        coeffs = [float(c) for c in coeffs]
        if not 1 <= len(coeffs) <= 3:
            raise ValueError(f"Poly takes 1 to 3 coefficients (c0, c1, c2), got {len(coeffs)}; "
                             "he/ evaluates degree <= 2 so each activation costs one level")
        self.coeffs = tuple(coeffs + [0.0] * (3 - len(coeffs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0, c1, c2 = self.coeffs
        return c0 + x * (c1 + c2 * x)

    def extra_repr(self) -> str:
        c0, c1, c2 = self.coeffs
        return f"{c0:.4g} + {c1:.4g}*x + {c2:.4g}*x^2"


class Square(Poly):
    """y = x**2 (CryptoNets)."""

    def __init__(self) -> None:
        super().__init__((0.0, 0.0, 1.0))

    def extra_repr(self) -> str:
        return ""


def _fit(f, bound: float) -> tuple[float, float, float]:
    # Least squares on a dense grid of [-bound, bound]: deterministic, no RNG.
    x = np.linspace(-bound, bound, 2001)
    c2, c1, c0 = np.polyfit(x, f(x), 2)
    return float(c0), float(c1), float(c2)


class PolyReLU(Poly):
    """Least-squares degree-2 approximation of ReLU on [-bound, bound]."""

    def __init__(self, bound: float = 4.0) -> None:
        super().__init__(_fit(lambda x: np.maximum(x, 0.0), bound))
        self.bound = bound


class PolySiLU(Poly):
    """Least-squares degree-2 approximation of SiLU (x * sigmoid(x)) on [-bound, bound]."""

    def __init__(self, bound: float = 4.0) -> None:
        super().__init__(_fit(lambda x: x / (1.0 + np.exp(-x)), bound))
        self.bound = bound
