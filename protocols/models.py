"""HE-friendly models each party trains on its own data, and the data each party holds.

Every architecture is an ``nn.Sequential`` of layers that :func:`he.compile`
accepts (Linear and degree-2 polynomial activations), so an answering party
can evaluate its own model on encrypted queries. ``--heterogeneous`` runs give
parties different widths, depths and activations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from he import PolyReLU, Square

from .datasets import load_table

ARCHITECTURES = {
    "mlp-square-64": (64, "square", 1),
    "mlp-polyrelu-32": (32, "polyrelu", 1),
    "mlp-square-128": (128, "square", 1),
    "mlp-square-32x2": (32, "square", 2),
}
DEFAULT_ARCH = "mlp-square-64"
_INIT_LOCK = threading.Lock()


def build_model(arch: str, in_features: int, num_classes: int, seed: int) -> nn.Sequential:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    width, act, depth = ARCHITECTURES[arch]
    # Initialisation draws from torch's global generator: seed it (reproducible
    # experiments, not a secret) under a lock, as roles train in parallel threads.
    with _INIT_LOCK:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), Square() if act == "square" else PolyReLU()]
            d = width
        layers.append(nn.Linear(d, num_classes))
        return nn.Sequential(*layers)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 60,
          seed: int = 0, lr: float = 0.01) -> nn.Module:
    """Full-batch-ish Adam; small data, a few seconds on a CPU."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    n = len(x)
    batch = min(64, n)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).float().mean())


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
        raise ValueError(f"{queries} queries leave too little training data ({n} points)")
    order = rng.permutation(n)
    pool, rest = order[:queries], order[queries:]
    k = len(parties)
    if split == "iid":
        owners = np.array_split(rest, k)
    elif split == "noniid":
        labels = data.y_train.numpy()[rest]
        owners_lists: list[list[int]] = [[] for _ in range(k)]
        for c in range(data.num_classes):
            idx = rest[labels == c]
            props = rng.dirichlet([alpha] * k)
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for j, part in enumerate(np.split(idx, cuts)):
                owners_lists[j].extend(part.tolist())
        owners = [np.array(sorted(o), dtype=np.int64) for o in owners_lists]
    else:
        raise ValueError(f"split must be 'iid' or 'noniid', got {split!r}")
    mine = owners[parties.index(me)]
    if len(mine) < 2:
        raise ValueError(f"party {me!r} got {len(mine)} training points; use fewer parties or iid")
    return PartyData(data.x_train[mine], data.y_train[mine], data.x_test, data.y_test,
                     data.x_train[pool], data.y_train[pool], data.num_classes)
