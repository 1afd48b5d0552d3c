import pytest
import torch

from attngraft.data import split_indices, stratified_split
from attngraft.data.shuffle import SeededShuffler, seeded_permutation


def test_split_is_a_seeded_partition() -> None:
    train, val = split_indices(100, 10, seed=3)
    assert len(val) == 10
    assert len(train) == 90
    assert sorted(train + val) == list(range(100))
    assert split_indices(100, 10, seed=3) == (train, val)
    assert split_indices(100, 10, seed=4)[1] != val


def test_fractional_split() -> None:
    assert len(split_indices(50, 0.2, seed=0)[1]) == 10


def test_no_validation_items() -> None:
    assert split_indices(50, 0, seed=0) == (seeded_permutation(50, 0), [])


@pytest.mark.parametrize("val_size", [-1, 100, 1.5, 0.5001 + 1, "10"])
def test_invalid_val_size(val_size: float) -> None:
    with pytest.raises(ValueError, match="val_size"):
        split_indices(100, val_size, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 123, 2**31 - 1, 2**32 + 5, -1])
def test_permutations_equal_torch_randperm(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    shuffler = SeededShuffler(seed)
    for size in (5, 0, 1, 2, 37, 1000, 3, 60_000):  # successive draws continue one generator, as torch's do
        assert shuffler.permutation(size) == torch.randperm(size, generator=generator).tolist(), size
    assert seeded_permutation(50, seed) == torch.randperm(50, generator=torch.Generator().manual_seed(seed)).tolist()


def test_splits_equal_the_torch_defined_ones() -> None:
    """The splits are defined by torch.randperm on a seeded generator (what earlier versions called)."""
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(7)).tolist()
    assert split_indices(1000, 100, seed=7) == (order[100:], order[:100])
    labels = [index % 3 for index in range(30)]
    generator = torch.Generator().manual_seed(5)
    chosen: dict[str, list[int]] = {"train": [], "val": []}
    for label in range(3):
        items = [index for index in range(30) if labels[index] == label]
        order = torch.randperm(len(items), generator=generator).tolist()
        chosen["val"] += [items[i] for i in order[:2]]
        chosen["train"] += [items[i] for i in order[2:]]
    expected = {
        split: [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
        for split, items in chosen.items()
    }
    assert stratified_split(labels, {"val": 6}, seed=5, where="folder") == expected


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size >= 0"):
        SeededShuffler(0).permutation(-1)
