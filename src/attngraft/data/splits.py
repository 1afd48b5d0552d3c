"""Seeded train/val splits of an official training set, and subsets with their own transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


class TransformedSubset(Dataset[tuple[torch.Tensor, int]]):
    """The items of ``dataset`` at ``indices``, with ``transform`` applied to each image."""

    def __init__(self, dataset: Dataset[Any], indices: Sequence[int], transform: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[self.indices[index]]
        return self.transform(image), int(label)


def split_indices(num_items: int, val_size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministically splits ``range(num_items)`` into (train, val) index lists of a seeded permutation.

    Args:
        num_items: Size of the official training set.
        val_size: Number of validation items, or a fraction in (0, 1) of ``num_items``.
        seed: Seed of the permutation.
    """
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"a fractional val_size must be in (0, 1), got {val_size}")
        val_size = round(val_size * num_items)
    if not 0 <= val_size < num_items:
        raise ValueError(f"val_size must be in [0, {num_items}) for a training set of {num_items}, got {val_size}")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[val_size:], order[:val_size]
