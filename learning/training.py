"""The one training loop, evaluation, and the model helpers every protocol shares.

Nothing here sets process-wide torch state: initialisation and shuffling draw
from explicit ``torch.Generator`` objects (reproducible public choices, not
secrets), and the number of torch threads is the caller's business (the party
runner sets it per process).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def init_linear(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every Linear layer, in order, exactly as PyTorch's default
    init would after ``torch.manual_seed(seed)``, but from a private generator."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
                if layer.bias is not None:
                    bound = 1 / math.sqrt(layer.in_features)
                    nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return model


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
          batch_size: int = 64, optimizer: Literal["adam", "sgd"] = "adam",
          weight_decay: float = 0.0, seed: int | None = None, loss: LossFn = cross_entropy,
          on_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """Mini-batch training on (x, y); returns the model in eval mode.

    ``seed`` fixes the shuffling (None: torch's default generator, which the
    caller may have seeded for an experiment); ``loss(model, logits, y)`` lets
    PRECODE add its KL term.
    """
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr,
                                                      weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    n = len(y)
    batch = max(1, min(int(batch_size), n))
    for epoch in range(int(epochs)):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(batch):
            opt.zero_grad()
            loss(model, model(x[idx]), y[idx]).backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)
    model.eval()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode."""
    model.eval()
    logits = model(x)
    return (float((logits.argmax(-1) == y).float().mean()),
            float(F.cross_entropy(logits, y)))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluate(model, x, y)[0]


def disjoint_shards(n: int, k: int, seed: int) -> list[torch.Tensor]:
    """Indices 0..n-1 shuffled by a public seed and cut into ``k`` disjoint shards of
    near-equal size (so each record lands in one shard only)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return list(torch.tensor_split(order, k))


def round_seed(seed: int, party_index: int, rnd: int) -> int:
    """The public shuffling seed of one party's local training in one round."""
    return int(np.random.SeedSequence([int(seed), party_index, rnd]).generate_state(1)[0])


def get_flat(model: nn.Module) -> np.ndarray:
    """All parameters as one float32 vector (a copy)."""
    return nn.utils.parameters_to_vector(model.parameters()).detach().numpy().copy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    nn.utils.vector_to_parameters(torch.as_tensor(flat, dtype=torch.float32), model.parameters())
