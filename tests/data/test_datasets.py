import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from attngraft.data import get_dataset_spec, list_datasets, load_split, locate_dataset
from attngraft.errors import CorruptDataError, DataNotFoundError, UnknownNameError

from .fixtures import (
    make_idx_arrays,
    malicious_pickle,
    tar_folder,
    write_cifar_folder,
    write_idx_dataset,
    write_image_folder,
)


def test_registered_names() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "imagefolder", "mnist"]


def test_unknown_dataset_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean 'fashion-mnist'.*Valid datasets: cifar10"):
        get_dataset_spec("fashion_mnist")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_dataset_from_data_dir(tmp_path: Path, name: str, gz: bool) -> None:
    arrays = make_idx_arrays()
    write_idx_dataset(tmp_path / "copy", arrays, gz=gz)
    train = load_split(name, train=True, data_dir=tmp_path / "copy")
    test = load_split(name, train=False, data_dir=tmp_path / "copy")
    assert (len(train), len(test)) == (40, 20)
    image, label = train[7]
    np.testing.assert_array_equal(np.asarray(image), arrays["train_images"][7])
    assert label == 7


def test_torchvision_layout_is_read_in_place(tmp_path: Path) -> None:
    raw = write_idx_dataset(tmp_path / "FashionMNIST" / "raw", make_idx_arrays(), gz=False)
    located = locate_dataset("fashion-mnist", data_dir=tmp_path)
    assert located.root == tmp_path
    assert located.source == raw


def test_alias_subfolder_is_found(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path / "fashion-mnist", make_idx_arrays())
    assert locate_dataset("fashion-mnist", data_dir=tmp_path).source == tmp_path / "fashion-mnist"


def test_search_order_prefers_data_dir_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_dataset(tmp_path / "explicit", make_idx_arrays(num_train=30))
    write_idx_dataset(tmp_path / "env", make_idx_arrays(num_train=50))
    monkeypatch.setenv("ATTNGRAFT_DATA", str(tmp_path / "env"))
    assert len(load_split("mnist", train=True)) == 50
    assert len(load_split("mnist", train=True, data_dir=tmp_path / "explicit")) == 30


def test_staging_goes_to_cache_and_is_redone_when_source_changes(tmp_path: Path, isolated_cache: Path) -> None:
    source = write_idx_dataset(tmp_path / "copy", make_idx_arrays(num_train=30))
    located = locate_dataset("mnist", data_dir=source)
    assert located.root.is_relative_to(isolated_cache)
    staged = located.root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    first_inode = staged.stat().st_ino
    assert locate_dataset("mnist", data_dir=source).root == located.root
    assert staged.stat().st_ino == first_inode  # fresh: not staged again

    write_idx_dataset(source, make_idx_arrays(num_train=50))
    stamp = source / "train-images-idx3-ubyte.gz"
    os.utime(stamp, ns=(stamp.stat().st_atime_ns, stamp.stat().st_mtime_ns + 10**9))
    assert len(load_split("mnist", train=True, data_dir=source)) == 50


def test_two_copies_never_share_a_staging_dir(tmp_path: Path) -> None:
    first = write_idx_dataset(tmp_path / "a", make_idx_arrays(num_train=30))
    second = write_idx_dataset(tmp_path / "b", make_idx_arrays(num_train=50))
    assert len(load_split("mnist", train=True, data_dir=first)) == 30
    assert len(load_split("mnist", train=True, data_dir=second)) == 50
    assert len(load_split("mnist", train=True, data_dir=first)) == 30


def test_not_found_lists_locations_and_remedies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = get_dataset_spec("fashion-mnist").source
    monkeypatch.setattr(source, "system_dirs", (str(tmp_path / "system"),))
    (tmp_path / "nowhere").mkdir()  # an empty folder
    with pytest.raises(DataNotFoundError) as caught:
        locate_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    message = str(caught.value)
    for expected in (
        str(tmp_path / "nowhere"),
        str(tmp_path / "system"),
        "apt-get install -y dataset-fashion-mnist",
        "--download",
        "--data-dir",
        "train-images-idx3-ubyte",
    ):
        assert expected in message


def test_truncated_gz_is_named(tmp_path: Path) -> None:
    directory = write_idx_dataset(tmp_path / "copy", make_idx_arrays())
    path = directory / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CorruptDataError, match=r"t10k-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        locate_dataset("mnist", data_dir=directory)


def test_truncated_raw_file_is_named(tmp_path: Path) -> None:
    raw = write_idx_dataset(tmp_path / "MNIST" / "raw", make_idx_arrays(), gz=False)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte: truncated or corrupt IDX"):
        locate_dataset("mnist", data_dir=tmp_path)


def test_image_label_count_mismatch_is_named(tmp_path: Path) -> None:
    arrays = make_idx_arrays()
    arrays["test_labels"] = arrays["test_labels"][:5]
    write_idx_dataset(tmp_path / "copy", arrays)
    with pytest.raises(CorruptDataError, match="t10k has 20 images but 5 labels"):
        locate_dataset("mnist", data_dir=tmp_path / "copy")


def test_corrupt_gz_payload_is_named(tmp_path: Path) -> None:
    directory = write_idx_dataset(tmp_path / "copy", make_idx_arrays())
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not idx at all"))
    with pytest.raises(CorruptDataError, match="not an IDX file"):
        locate_dataset("mnist", data_dir=directory)


@pytest.mark.parametrize(("name", "cifar100"), [("cifar10", False), ("cifar100", True)])
def test_cifar_folder(tmp_path: Path, name: str, cifar100: bool) -> None:
    write_cifar_folder(tmp_path, cifar100=cifar100)
    train = load_split(name, train=True, data_dir=tmp_path)
    test = load_split(name, train=False, data_dir=tmp_path)
    assert len(train) == (10 if cifar100 else 50)
    assert len(test) == 10
    image, label = train[3]
    assert np.asarray(image).shape == (32, 32, 3)
    assert label == 3
    assert train.classes[0] == "class_0"


def test_cifar_archive_is_extracted_into_cache(tmp_path: Path, isolated_cache: Path) -> None:
    folder = write_cifar_folder(tmp_path / "src")
    tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    located = locate_dataset("cifar10", data_dir=tmp_path)
    assert located.root.is_relative_to(isolated_cache)
    assert len(load_split("cifar10", train=False, data_dir=tmp_path)) == 10


def test_cifar_batch_that_runs_code_is_refused(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "data_batch_3").write_bytes(malicious_pickle(marker))
    with pytest.raises(CorruptDataError, match=r"data_batch_3: .* is not allowed"):
        load_split("cifar10", train=True, data_dir=tmp_path)
    assert not marker.exists()


def test_cifar_missing_batch_is_named(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="test_batch: missing CIFAR batch file"):
        load_split("cifar10", train=False, data_dir=tmp_path)


def test_image_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    train = load_split("imagefolder", train=True, data_dir=root)
    assert len(train) == 6
    assert train.classes == ["cat", "dog"]
    image, label = train[4]
    assert image.size == (16, 12)
    assert label == 1


def test_image_folder_needs_explicit_dir_and_names_layout(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="train/<class>/<image> and test/<class>/<image>"):
        locate_dataset("imagefolder")


def test_image_folder_corrupt_image_is_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    broken = root / "train" / "dog" / "1.png"
    broken.write_bytes(b"\x89PNG broken")
    train = load_split("imagefolder", train=True, data_dir=root)
    with pytest.raises(CorruptDataError, match=r"dog/1.png: unreadable image"):
        train[4]


def test_empty_image_folder_split_is_named(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataNotFoundError, match="train"):
        load_split("imagefolder", train=True, data_dir=tmp_path)


def test_fixed_class_names_and_files_equal_torchvisions() -> None:
    """The registry names classes and files without importing torchvision; they must stay torchvision's."""
    import torchvision

    from attngraft.data import IMAGE_EXTENSIONS
    from attngraft.data.sources import CIFAR10_FILES, CIFAR100_FILES

    assert get_dataset_spec("fashion-mnist").source.classes == tuple(torchvision.datasets.FashionMNIST.classes)
    assert get_dataset_spec("mnist").source.classes == tuple(torchvision.datasets.MNIST.classes)
    assert IMAGE_EXTENSIONS == torchvision.datasets.folder.IMG_EXTENSIONS
    for files in (CIFAR10_FILES, CIFAR100_FILES):
        torchvision_class = getattr(torchvision.datasets, files.class_name)
        assert (files.base_folder, files.archive) == (torchvision_class.base_folder, torchvision_class.filename)
        assert files.train == tuple(name for name, _ in torchvision_class.train_list)
        assert files.test == tuple(name for name, _ in torchvision_class.test_list)
        assert files.meta == (torchvision_class.meta["filename"], torchvision_class.meta["key"])


def assert_arrays_equal_the_dataset(name: str, data_dir: Path) -> None:
    """split_dataset(in_memory=True) reads what torchvision's dataset holds: same images, labels, classes, splits."""
    from attngraft.data import split_dataset

    arrays = split_dataset(name, data_dir=data_dir, val_size=5, in_memory=True)
    datasets = split_dataset(name, data_dir=data_dir, val_size=5)
    for split in ("train", "val", "test"):
        assert arrays[split].indices == datasets[split].indices
        memory, dataset = arrays[split].dataset, datasets[split].dataset
        np.testing.assert_array_equal(memory.data, np.asarray(dataset.data))
        np.testing.assert_array_equal(memory.targets, np.asarray(dataset.targets))
        assert memory.classes == list(dataset.classes)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_arrays_equal_the_torchvision_dataset(tmp_path: Path, name: str) -> None:
    write_idx_dataset(tmp_path, make_idx_arrays())
    assert_arrays_equal_the_dataset(name, tmp_path)


@pytest.mark.parametrize(("name", "cifar100"), [("cifar10", False), ("cifar100", True)])
def test_cifar_arrays_equal_the_torchvision_dataset(tmp_path: Path, name: str, cifar100: bool) -> None:
    write_cifar_folder(tmp_path, cifar100=cifar100)
    assert_arrays_equal_the_dataset(name, tmp_path)


def test_cifar_arrays_refuse_a_batch_that_runs_code(tmp_path: Path) -> None:
    from attngraft.data import split_dataset

    folder = write_cifar_folder(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "data_batch_2").write_bytes(malicious_pickle(marker))
    with pytest.raises(CorruptDataError, match=r"data_batch_2: .* is not allowed"):
        split_dataset("cifar10", data_dir=tmp_path, val_size=5, in_memory=True)
    assert not marker.exists()


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fall_back(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=f"data_dir {tmp_path / 'nope'} is not a directory"):
        locate_dataset("fashion-mnist", data_dir=tmp_path / "nope")


def test_a_train_size_beyond_the_data_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from attngraft.data import ImageDataModule

    write_idx_dataset(tmp_path, make_idx_arrays())
    module = ImageDataModule("mnist", data_dir=tmp_path, val_size=10, train_size=500, num_workers=0)
    module.setup("fit")
    assert len(module.splits["train"]) == 30
    assert "data.train_size 500: only 30 training images are left" in caplog.text


def test_a_failed_download_says_what_to_do_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    source = get_dataset_spec("cifar10").source

    def offline(root: Path) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(source, "download", offline)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataNotFoundError, match=r"the download into .* failed \(\[Errno -2\] Name or service not known\)"
    ):
        locate_dataset("cifar10", data_dir=tmp_path / "empty", download=True)


@pytest.mark.parametrize("layout", ["flat", "train/test"])
def test_an_image_folder_of_one_class_is_warned(tmp_path: Path, layout: str, caplog: pytest.LogCaptureFixture) -> None:
    from .fixtures import write_class_folders

    root = tmp_path / "pets"
    if layout == "flat":
        write_class_folders(root, {"cat": 3})
    else:
        write_class_folders(root / "train", {"cat": 3})
        write_class_folders(root / "test", {"cat": 1})
    locate_dataset("imagefolder", data_dir=root)
    assert "one class folder (cat/): a classifier needs at least two" in caplog.text
