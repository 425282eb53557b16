"""Where a jointly trained model's data comes from: a built-in table split among the
parties by index (simulation), or each party's own file (``data`` in the parameters:
the study's :class:`learning.data_files.DataSpec`; the file is the party's ``data``
resource, read and checked before it connects)."""

from __future__ import annotations

from typing import Any

import torch

from learning.data_files import DataFileError, DataSpec
from learning.datasets import DatasetError, federated_shard, load_table

from .context import RoleContext
from .errors import ParameterError


def spec_problems(data: dict[str, Any] | None) -> list[str]:
    """For a Params.check: what is wrong with the study's data description."""
    if data is None:
        return []
    try:
        DataSpec.from_dict(data)
    except DataFileError as e:
        return [f"data: {e}"]
    return []


def needs_data(data: dict[str, Any] | None) -> tuple[str, ...]:
    """A RESOURCES entry: a training role reads its own file when the study says so."""
    return ("data",) if data is not None else ()


def shape(protocol: str, dataset: str, data: dict[str, Any] | None, seed: int) -> tuple[int, int]:
    """(features, classes) everyone builds the model for."""
    if data is not None:
        spec = DataSpec.from_dict(data)
        return spec.features, spec.classes
    try:
        table = load_table(dataset, seed=seed)
    except DatasetError as e:
        raise ParameterError(f"{protocol}: {e}") from None
    return table.x_train.shape[1], table.num_classes


def training_data(ctx: RoleContext, protocol: str, cfg: Any, parties: int, index: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x, y, x_test, y_test, classes) for this party: its own file's records with its own
    held-out quarter, or its shard of the built-in table with the common test split."""
    if cfg.data is not None:
        local = ctx.resources.data
        if local is None:
            raise ParameterError(f"{protocol}: this study trains on each party's own data "
                                 f"(parameter 'data'); '{ctx.me}' was started without its data "
                                 "file (confidant party --data FILE)")
        return (*local.split(seed=cfg.data_seed), local.classes)
    try:
        return federated_shard(cfg.dataset, parties, index, split=cfg.split, seed=cfg.data_seed,
                               alpha=cfg.alpha)
    except DatasetError as e:
        raise ParameterError(f"{protocol}: {e}") from None
