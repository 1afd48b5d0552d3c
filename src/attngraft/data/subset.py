"""Subsets of a dataset with their own transform, their transformed items shared in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from attngraft.data.sampling import seeded_random

# Transformed items kept in memory, by (source, transform): shared by every subset (and data module) of this
# process that reads the same source through the same deterministic transform. At most MEMO_SOURCES sources are
# kept (the newest), and a source is kept only if all its items would fit in MEMO_BYTES.
MEMO_SOURCES = 2
MEMO_BYTES = 1 << 30
_memos: dict[str, dict[int, tuple[torch.Tensor, int]] | None] = {}


class TransformedSubset(Dataset[tuple[torch.Tensor, int]]):
    """The items of ``dataset`` at ``indices``, with ``transform`` applied to each image.

    Args:
        dataset: The source, indexed by the original item index.
        indices: Which of its items, in order.
        transform: Applied to each image.
        memo_key: When given (only for a deterministic transform), transformed items are kept in memory under this
            key and reused by every subset with the same key: the source and the transform must identify them.
        random_transform: The transform is random (augmentation): a loader should give it ``(index, seed)`` pairs
            (:class:`attngraft.data.sampling.SeededRandomSampler`), each image then transformed under its seed.

    Items are indexed by position (the global generators then drive a random transform) or by ``(position, seed)``.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        indices: Sequence[int],
        transform: Callable[[Any], Any],
        memo_key: str | None = None,
        random_transform: bool = False,
    ) -> None:
        if memo_key is not None and random_transform:
            raise ValueError("a random transform's items cannot be kept in memory (memo_key)")
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform
        self.memo_key = memo_key
        self.random_transform = random_transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = key if isinstance(key, tuple) else (key, None)
        original = self.indices[position]
        memo = self._memo()
        if memo is not None and original in memo:
            return memo[original]
        image, label = self.dataset[original]
        if seed is None:
            item = (self.transform(image), int(label))
        else:
            with seeded_random(seed):
                item = (self.transform(image), int(label))
        if memo is not None:
            memo[original] = item
            if len(memo) == 1 and item[0].nbytes * len(self.dataset) > MEMO_BYTES:  # type: ignore[arg-type]
                _memos[str(self.memo_key)] = None  # the whole source would not fit: keep nothing of it
        return item

    def _memo(self) -> dict[int, tuple[torch.Tensor, int]] | None:
        # Only in the main process: a loader process would fill a private copy of the whole source (the sampler
        # sends it different items every epoch) that no other data module could use.
        if self.memo_key is None or get_worker_info() is not None:
            return None
        if self.memo_key not in _memos:
            while len(_memos) >= MEMO_SOURCES:
                _memos.pop(next(iter(_memos)))  # the oldest
            _memos[self.memo_key] = {}
        return _memos[self.memo_key]
