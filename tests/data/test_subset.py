import pytest
import torch

from attngraft.data import subset


class CountingSource(torch.utils.data.Dataset):
    """Items (tensor of the index, label) that count how often they are read."""

    def __init__(self, size: int, side: int = 2) -> None:
        self.size, self.side, self.reads = size, side, 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        self.reads += 1
        return torch.full((1, self.side, self.side), float(index)), index % 3


@pytest.fixture
def fresh_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subset, "_memos", {})


@pytest.mark.usefixtures("fresh_memos")
def test_memoised_subsets_read_each_item_once_and_share_it_by_key() -> None:
    source = CountingSource(6)
    first = subset.TransformedSubset(source, [0, 1, 2], lambda image: image * 2, memo_key="k")
    other = subset.TransformedSubset(source, [2, 3], lambda image: image * 2, memo_key="k")
    assert [int(first[i][0][0, 0, 0]) for i in range(3)] == [0, 2, 4]
    assert [first[i][1] for i in range(3)] == [0, 1, 2]
    assert source.reads == 3
    assert first[0][0] is first[0][0]
    assert int(other[0][0][0, 0, 0]) == 4
    assert source.reads == 3  # item 2 came from the memo of the first subset
    other[1]
    assert source.reads == 4


@pytest.mark.usefixtures("fresh_memos")
def test_subsets_without_a_key_or_with_another_key_do_not_share() -> None:
    source = CountingSource(4)
    subset.TransformedSubset(source, [0], lambda image: image, memo_key="a")[0]
    subset.TransformedSubset(source, [0], lambda image: image + 1, memo_key="b")[0]
    plain = subset.TransformedSubset(source, [0], lambda image: image)
    plain[0]
    plain[0]
    assert source.reads == 4


@pytest.mark.usefixtures("fresh_memos")
def test_a_source_too_large_for_the_budget_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subset, "MEMO_BYTES", 100)
    source = CountingSource(10, side=4)  # 10 items of 64 bytes
    items = subset.TransformedSubset(source, [0, 1], lambda image: image, memo_key="big")
    items[0]
    items[0]
    assert source.reads == 2


@pytest.mark.usefixtures("fresh_memos")
def test_data_module_keeps_deterministic_images_only(fashion_mnist_dir) -> None:
    from torchvision.transforms import v2

    from attngraft.data.datamodule import ImageDataModule

    plain = ImageDataModule(data_dir=fashion_mnist_dir, train_size=8, val_size=8)
    plain.setup("fit")
    assert plain.splits["train"].memo_key == plain.splits["val"].memo_key is not None
    augmented = ImageDataModule(
        data_dir=fashion_mnist_dir, train_size=8, val_size=8, train_augment=[v2.RandomHorizontalFlip()]
    )
    augmented.setup("fit")
    assert augmented.splits["train"].memo_key is None
    assert augmented.splits["val"].memo_key == plain.splits["val"].memo_key
    off = ImageDataModule(data_dir=fashion_mnist_dir, train_size=8, val_size=8, cache_images=False)
    off.setup("fit")
    assert off.splits["val"].memo_key is None
