"""Seeded train/val splits of an official training set, and subsets with their own transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

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
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        indices: Sequence[int],
        transform: Callable[[Any], Any],
        memo_key: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform
        self.memo_key = memo_key

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        original = self.indices[index]
        memo = self._memo()
        if memo is not None and original in memo:
            return memo[original]
        image, label = self.dataset[original]
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


def held_out_count(size: int | float, num_items: int, key: str) -> int:
    """The number of items ``size`` stands for: a count as is, a fraction in (0, 1) of ``num_items`` (rounded, >= 1).

    Raises:
        ValueError: Naming ``key``, for a negative count or a fraction outside (0, 1).
    """
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ValueError(f"a fractional {key} must be in (0, 1), got {size}")
        return max(1, round(size * num_items))  # a fraction asks for some items, however few there are
    if size < 0:
        raise ValueError(f"{key} must be a count >= 0 or a fraction in (0, 1), got {size}")
    return size


def stratified_split(
    labels: Sequence[int], sizes: dict[str, int | float], seed: int, *, where: str, class_names: Sequence[str] = ()
) -> dict[str, list[int]]:
    """Seeded split of items into ``train`` and the held-out splits of ``sizes``, class by class.

    Each held-out split gets its size (a count, or a fraction of all items) shared among the classes in proportion
    to their sizes (largest remainders), and at least one item of every class when its size is not zero; train
    keeps at least one item of every class. Totals are exact unless those minimums force a difference.

    Args:
        labels: The class of every item.
        sizes: Held-out split name → count or fraction (e.g. ``{"val": 0.1, "test": 0.1}``).
        seed: Seed of the shuffles; the same seed and labels give the same split.
        where: The folder (or dataset) named in errors.
        class_names: Names of the classes, for errors (default: the label numbers).

    Returns:
        Split name (``train`` and every key of ``sizes``) → item indices, in a seeded random order.

    Raises:
        ValueError: If the sizes leave no training items, or a class has too few items to appear in every split.
    """
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(int(label), []).append(index)
    classes = sorted(members)
    totals = {split: held_out_count(size, len(labels), f"{split}_size") for split, size in sizes.items()}
    if sum(totals.values()) >= len(labels):
        asked = ", ".join(f"{split} {count}" for split, count in totals.items())
        raise ValueError(f"{where}: {asked} of {len(labels)} images leave none for training")
    counts = {split: _apportion(total, [len(members[label]) for label in classes]) for split, total in totals.items()}
    generator = torch.Generator().manual_seed(seed)
    chosen: dict[str, list[int]] = {split: [] for split in ("train", *sizes)}
    for position, label in enumerate(classes):
        items = members[label]
        wanted = _fit_class(
            {split: counts[split][position] for split in sizes}, len(items), where, _name(label, class_names)
        )
        order = torch.randperm(len(items), generator=generator).tolist()
        start = 0
        for split, count in wanted.items():
            chosen[split].extend(items[i] for i in order[start : start + count])
            start += count
        chosen["train"].extend(items[i] for i in order[start:])
    return {split: _shuffled(indices, generator) for split, indices in chosen.items()}


def _apportion(total: int, class_sizes: list[int]) -> list[int]:
    """``total`` shared in proportion to ``class_sizes`` (largest remainders), at least 1 each when total > 0."""
    if total == 0:
        return [0] * len(class_sizes)
    everything = sum(class_sizes)
    shares = [total * size / everything for size in class_sizes]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda position: counts[position] - shares[position])
    for position in by_remainder[: total - sum(counts)]:
        counts[position] += 1
    for position, count in enumerate(counts):  # every class in every held-out split: take from the largest
        if count == 0:
            counts[position] = 1
            largest = max(range(len(counts)), key=lambda other: counts[other])
            if counts[largest] > 1:
                counts[largest] -= 1
    return counts


def _fit_class(wanted: dict[str, int], class_size: int, where: str, name: str) -> dict[str, int]:
    """Shrinks one class's held-out counts until train keeps at least one item; each split keeps at least one."""
    splits_needed = 1 + sum(1 for count in wanted.values() if count > 0)
    if class_size < splits_needed:
        names = "/".join(["train", *(split for split, count in wanted.items() if count > 0)])
        raise ValueError(
            f"{where}: class {name!r} has {class_size} image{'s' if class_size != 1 else ''}; "
            f"a {names} split needs at least {splits_needed} per class (add images or lower the held-out sizes)"
        )
    wanted = dict(wanted)
    while sum(wanted.values()) > class_size - 1:
        largest = max(wanted, key=lambda split: wanted[split])
        wanted[largest] -= 1
    return wanted


def _name(label: int, class_names: Sequence[str]) -> str:
    return class_names[label] if label < len(class_names) else str(label)


def _shuffled(indices: list[int], generator: torch.Generator) -> list[int]:
    return [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
