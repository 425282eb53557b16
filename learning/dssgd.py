"""The maths of distributed selective SGD (Shokri and Shmatikov, CCS 2015), without I/O:
which parameters a participant uploads and downloads, and the parameter server's state.

A participant uploads at most ``upload_count(d, theta_u)`` of its d parameter changes:
the largest in magnitude (``largest``), or a random subset of those at least ``tau``
in magnitude (``threshold``); the values are clipped to [-gamma, gamma]. (The private
variant, the sparse vector technique, is :mod:`privacy.svt`.) It downloads the
``download_count(d, theta_d)`` global parameters the server updated most often
(``counts``), most recently (``recent``) or at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

UPLOADS = ("largest", "threshold")
DOWNLOADS = ("counts", "recent", "random")


class DssgdError(ValueError):
    """Settings or an upload that DSSGD cannot use; the message says what is wrong."""


def upload_count(dim: int, theta_u: float) -> int:
    """The most values one upload may hold: floor(theta_u * d), which must be at least 1."""
    c = math.floor(theta_u * dim + 1e-9)
    if c < 1:
        raise DssgdError(f"theta_u = {theta_u:g} of {dim} parameters is less than one value; "
                         f"raise theta_u to at least {1 / dim:.2g}")
    return min(c, dim)


def download_count(dim: int, theta_d: float) -> int:
    return max(1, min(dim, math.ceil(theta_d * dim - 1e-9)))


def clip(values: np.ndarray, gamma: float | None) -> np.ndarray:
    return values if gamma is None else np.clip(values, -gamma, gamma)


def select_largest(change: np.ndarray, count: int) -> np.ndarray:
    """Indices (sorted) of the ``count`` changes largest in magnitude."""
    if count >= change.size:
        return np.arange(change.size)
    return np.sort(np.argpartition(-np.abs(change), count - 1)[:count])


def select_threshold(change: np.ndarray, count: int, tau: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of at most ``count`` changes chosen at random among those with
    magnitude >= ``tau``."""
    above = np.flatnonzero(np.abs(change) >= tau)
    if above.size > count:
        above = rng.choice(above, count, replace=False)
    return np.sort(above)


def select_download(counts: np.ndarray, last: np.ndarray, theta_d: float, how: str,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of the global parameters a participant downloads."""
    k = download_count(counts.size, theta_d)
    if k == counts.size:
        return np.arange(counts.size)
    if how == "random":
        return np.sort(rng.choice(counts.size, k, replace=False))
    key = counts if how == "counts" else last
    if how not in DOWNLOADS:
        raise DssgdError(f"download must be one of {DOWNLOADS}, got {how!r}")
    return np.sort(np.argsort(-key, kind="stable")[:k])


@dataclass
class ParameterServer:
    """The global parameters (float64, so that adding a float32 change is exact), how
    often and when each was last updated; uploads are checked against the public limits."""

    params: np.ndarray
    max_values: int
    gamma: float | None
    counts: np.ndarray = field(init=False)
    last: np.ndarray = field(init=False)
    step: int = 0

    def __post_init__(self) -> None:
        self.params = np.asarray(self.params, dtype=np.float64).copy()
        self.counts = np.zeros(self.params.size, dtype=np.int64)
        self.last = np.full(self.params.size, -1, dtype=np.int64)

    def check(self, index: np.ndarray, values: np.ndarray) -> str | None:
        """Why an upload breaks the public limits (None if it does not)."""
        if index.ndim != 1 or values.shape != index.shape:
            return f"index and values must be 1-D and of equal length, got {index.shape}, {values.shape}"
        if index.size > self.max_values:
            return f"{index.size} values uploaded, at most {self.max_values} allowed (theta_u)"
        if index.size and (index.min() < 0 or index.max() >= self.params.size):
            return f"an index is outside 0..{self.params.size - 1}"
        if np.unique(index).size != index.size:
            return "an index is uploaded twice"
        if not np.all(np.isfinite(values)):
            return "a value is not finite"
        if self.gamma is not None and np.any(np.abs(values) > self.gamma):
            return f"a value lies outside [-gamma, gamma] = [-{self.gamma:g}, {self.gamma:g}]"
        return None

    def apply(self, index: np.ndarray, values: np.ndarray) -> None:
        problem = self.check(index, values)
        if problem:
            raise DssgdError(problem)
        self.step += 1
        self.params[index] += values
        self.counts[index] += 1
        self.last[index] = self.step


def centralized_accuracy(dataset: str, *, data_seed: int, model: str, hidden: int, seed: int,
                         epochs: int, lr: float, batch: int) -> float:
    """The centralized baseline: the same architecture, initialisation and recipe trained
    on every participant's data pooled (what nobody in the protocol can do)."""
    from .datasets import load_table
    from .models import public_mlp
    from .training import evaluate, train

    data = load_table(dataset, seed=data_seed)
    net = public_mlp(model, data.x_train.shape[1], data.num_classes, hidden, seed)
    train(net, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch,
          optimizer="sgd", seed=seed)
    return evaluate(net, data.x_test, data.y_test)[0]
