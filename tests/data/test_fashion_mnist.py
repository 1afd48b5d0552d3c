"""The real Fashion-MNIST from the Debian package (installed by `make setup`)."""

from pathlib import Path

import pytest
import torch

from attngraft.data import ImageDataModule, get_dataset_spec, summarize


@pytest.fixture(scope="module")
def summary(fashion_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        return summarize("fashion-mnist")


def test_sizes_and_balance(summary, fashion_mnist_dir: Path) -> None:
    assert summary.source == fashion_mnist_dir
    assert summary.split_sizes == {"train": 55_000, "val": 5_000, "test": 10_000}
    counts = summary.class_counts
    assert [train + val for train, val in zip(counts["train"], counts["val"], strict=True)] == [6_000] * 10
    assert sum(counts["val"]) == 5_000
    assert counts["test"] == [1_000] * 10
    assert summary.image_shape == (1, 28, 28)
    assert summary.classes[0] == "T-shirt/top"
    assert summary.classes[9] == "Ankle boot"


def test_registered_statistics_match_measured(summary) -> None:
    spec = get_dataset_spec("fashion-mnist")
    assert summary.mean == pytest.approx(spec.mean, abs=5e-4)
    assert summary.std == pytest.approx(spec.std, abs=5e-4)


def test_datamodule_split_is_seeded_disjoint_and_complete(fashion_mnist_dir: Path) -> None:
    module = ImageDataModule("fashion-mnist", batch_size=64, num_workers=0)
    module.prepare_data()
    module.setup("fit")
    train, val = module.splits["train"].indices, module.splits["val"].indices
    assert (len(train), len(val)) == (55_000, 5_000)
    assert sorted(train + val) == list(range(60_000))

    again = ImageDataModule("fashion-mnist", num_workers=0)
    again.setup("fit")
    assert again.splits["val"].indices == val
    other_seed = ImageDataModule("fashion-mnist", num_workers=0, split_seed=1)
    other_seed.setup("fit")
    assert other_seed.splits["val"].indices != val


def test_datamodule_batches_normalised(fashion_mnist_dir: Path) -> None:
    module = ImageDataModule("fashion-mnist", batch_size=512, num_workers=0)
    module.setup("test")
    images, labels = next(iter(module.test_dataloader()))
    assert images.shape == (512, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.shape == (512,)
    assert labels.dtype == torch.int64
    assert module.num_classes == 10
    assert abs(images.mean().item()) < 0.1
    assert images.std().item() == pytest.approx(1.0, abs=0.1)


def test_datamodule_resize_and_rgb_for_imagenet_backbones(fashion_mnist_dir: Path) -> None:
    module = ImageDataModule("fashion-mnist", batch_size=8, num_workers=0, image_size=64, channels=3)
    module.setup("fit")
    images, _ = next(iter(module.val_dataloader()))
    assert images.shape == (8, 3, 64, 64)
    torch.testing.assert_close(images[:, 0], images[:, 2])


def test_measured_statistics_equal_those_of_torchvisions_pixels(summary) -> None:
    from attngraft.data import load_split

    # (60000, 28, 28) as torchvision reads them; numpy's float64 pairwise sums (torch's std drifts by 5e-11 here)
    pixels = load_split("fashion-mnist", train=True).data.numpy().astype("float64") / 255
    assert summary.measured_images == 60_000
    assert summary.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
    assert summary.std[0] == pytest.approx(pixels.std(), abs=1e-12)
