import pytest

from attngraft.data import split_indices


def test_split_is_a_seeded_partition() -> None:
    train, val = split_indices(100, 10, seed=3)
    assert len(val) == 10
    assert len(train) == 90
    assert sorted(train + val) == list(range(100))
    assert split_indices(100, 10, seed=3) == (train, val)
    assert split_indices(100, 10, seed=4)[1] != val


def test_fractional_split() -> None:
    assert len(split_indices(50, 0.2, seed=0)[1]) == 10


@pytest.mark.parametrize("val_size", [-1, 100, 1.5, 0.0])
def test_invalid_val_size(val_size: float) -> None:
    with pytest.raises(ValueError, match="val_size"):
        split_indices(100, val_size, seed=0)
