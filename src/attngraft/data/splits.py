"""Seeded train/val splits of an official training set, and stratified splits of a folder of class folders.

Torch-free: the permutations are :class:`attngraft.data.shuffle.SeededShuffler`'s, equal to ``torch.randperm``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from attngraft import validation
from attngraft.data.shuffle import SeededShuffler, seeded_permutation


def split_indices(
    num_items: int, val_size: int | float, seed: int, *, what: str = "val_size"
) -> tuple[list[int], list[int]]:
    """Deterministically splits ``range(num_items)`` into (train, val) index lists of a seeded permutation.

    Args:
        num_items: Size of the official training set.
        val_size: Number of validation items (0 allowed), or a fraction in (0, 1) of ``num_items``.
        seed: Seed of the permutation.
        what: How errors name ``val_size`` (e.g. ``data.val_size``).

    Raises:
        ConfigError: For a size that is not a count below ``num_items`` or a fraction in (0, 1).
    """
    size = validation.fraction_or_count(val_size, what, total=num_items)
    count = round(size * num_items) if isinstance(size, float) else size
    order = seeded_permutation(num_items, seed)
    return order[count:], order[:count]


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
    shuffler = SeededShuffler(seed)
    chosen: dict[str, list[int]] = {split: [] for split in ("train", *sizes)}
    for position, label in enumerate(classes):
        items = members[label]
        wanted = _fit_class(
            {split: counts[split][position] for split in sizes}, len(items), where, _name(label, class_names)
        )
        order = shuffler.permutation(len(items))
        start = 0
        for split, count in wanted.items():
            chosen[split].extend(items[i] for i in order[start : start + count])
            start += count
        chosen["train"].extend(items[i] for i in order[start:])
    return {split: _shuffled(indices, shuffler) for split, indices in chosen.items()}


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


def _shuffled(indices: list[int], shuffler: SeededShuffler) -> list[int]:
    return [indices[i] for i in shuffler.permutation(len(indices))]
