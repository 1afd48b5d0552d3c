"""The dataset registry: each name maps to a :class:`DatasetSpec` (files, statistics, split sizes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attngraft.data.constants import IMAGENET_MEAN, IMAGENET_STD
from attngraft.data.locate import cache_dir
from attngraft.data.sources import (
    CIFAR10_FILES,
    CIFAR100_FILES,
    CifarSource,
    IdxSource,
    ImageFolderSource,
    Located,
    Source,
)
from attngraft.data.splits import split_indices, stratified_split
from attngraft.errors import ConfigError, DataNotFoundError
from attngraft.registry import Registry

if TYPE_CHECKING:
    from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

# Class names in label order, as torchvision's classes list them (a test keeps them equal).
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(
    f"{digit} - {word}"
    for digit, word in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
)


@dataclass(frozen=True)
class DatasetSpec:
    """What attngraft knows about a dataset before reading it.

    Attributes:
        name: Registered name.
        source: How its files are found and opened.
        mean: Per-channel mean of the training images in [0, 1] (normalisation statistics).
        std: Per-channel standard deviation of the training images.
        val_size: Images of the official train set held out for validation (a float in (0, 1): a fraction); for a
            flat image folder, a count or fraction of all its images.
        test_size: Images of a flat image folder held out for testing (count or fraction of all its images).
        num_classes: Number of classes, or None when it depends on the files (image folders).
        image_shape: (C, H, W) of every image, or None when sizes and modes vary (then channels default to 3).
        stratify: Split class by class (image folders), rather than by one seeded permutation.
        install_hint: Extra ways to get the files, shown when they are not found.
    """

    name: str
    source: Source
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_size: int | float
    test_size: int | float = 0
    num_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None
    stratify: bool = False
    install_hint: str = ""

    @property
    def channels(self) -> int:
        """Channels of the images the data module gives by default: the images' own, else 3 (RGB)."""
        return self.image_shape[0] if self.image_shape is not None else 3

    @property
    def can_download(self) -> bool:
        """Whether ``download=True`` is supported (torchvision has a downloader for it)."""
        return type(self.source).download is not Source.download


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _register(spec: DatasetSpec) -> None:
    DATASETS.add(spec.name, spec)


_register(
    DatasetSpec(
        name="fashion-mnist",
        source=IdxSource(
            "FashionMNIST",
            FASHION_MNIST_CLASSES,
            aliases=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
            system_dirs=("/usr/share/datasets/fashion-mnist",),
        ),
        mean=(0.2860,),
        std=(0.3530,),
        val_size=5_000,
        num_classes=10,
        image_shape=(1, 28, 28),
        install_hint="sudo apt-get install -y dataset-fashion-mnist",
    )
)
_register(
    DatasetSpec(
        name="mnist",
        source=IdxSource(
            "MNIST", MNIST_CLASSES, aliases=("mnist", "MNIST"), system_dirs=("/usr/share/datasets/mnist",)
        ),
        mean=(0.1307,),
        std=(0.3081,),
        val_size=5_000,
        num_classes=10,
        image_shape=(1, 28, 28),
    )
)
_register(
    DatasetSpec(
        name="cifar10",
        source=CifarSource(CIFAR10_FILES),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        val_size=5_000,
        num_classes=10,
        image_shape=(3, 32, 32),
    )
)
_register(
    DatasetSpec(
        name="cifar100",
        source=CifarSource(CIFAR100_FILES),
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        val_size=5_000,
        num_classes=100,
        image_shape=(3, 32, 32),
    )
)
_register(
    DatasetSpec(
        name="imagefolder",
        source=ImageFolderSource(),
        mean=IMAGENET_MEAN,  # nothing measured: the user's images are most often photographs
        std=IMAGENET_STD,
        val_size=0.1,
        test_size=0.1,
        stratify=True,
    )
)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Returns the registered dataset names, optionally filtered by a glob pattern."""
    return DATASETS.names(pattern)


def get_dataset_spec(name: str) -> DatasetSpec:
    """Returns the spec of dataset ``name``; unknown names raise with the closest valid ones."""
    return DATASETS.get(name)


def locate_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Located:
    """Finds dataset ``name``'s files, staging them into the user cache when needed.

    Args:
        name: Registered dataset name.
        data_dir: A directory searched first.
        download: When not found locally, download into the user cache with torchvision (needs internet).

    Raises:
        DataNotFoundError: Listing every searched directory and the ways to get the data.
        CorruptDataError: Naming a file that was found but is truncated or corrupt.
    """
    spec = get_dataset_spec(name)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():  # never a silent fall-back elsewhere
        raise DataNotFoundError(f"dataset {name!r} not found: data_dir {data_dir} is not a directory")
    roots = spec.source.roots(data_dir)
    for root in roots:
        located = spec.source.find(root, name)
        if located is not None:
            logger.info("%s: found in %s", name, located.source)
            return located
    if download and spec.can_download:
        logger.info("%s: downloading into %s", name, cache_dir())
        try:
            spec.source.download(cache_dir())
        except (OSError, RuntimeError) as error:  # no network (URLError is an OSError), a failed checksum
            reason = " ".join(str(getattr(error, "reason", None) or error).split())
            raise DataNotFoundError(
                f"dataset {name!r}: the download into {cache_dir()} failed ({reason}); without internet, copy its "
                f"files ({spec.source.expected_layout()}) into a folder and give it with --data-dir"
            ) from None
        located = spec.source.find(cache_dir(), name)
        if located is not None:
            return located
    raise DataNotFoundError(_not_found_message(spec, roots))


def _not_found_message(spec: DatasetSpec, roots: list[Path]) -> str:
    ways = [spec.install_hint] if spec.install_hint else []
    if spec.can_download:
        ways.append("--download (torchvision's downloader, needs internet)")
    ways.append("--data-dir DIR or ATTNGRAFT_DATA=DIR pointing at a copy")
    searched = ", ".join(str(root) for root in roots) or "(no directory given)"
    return (
        f"dataset {spec.name!r} not found. Looked for {spec.source.expected_layout()} in: {searched}. "
        f"Get it with: {'; or '.join(ways)}"
    )


def load_split(name: str, train: bool, data_dir: str | Path | None = None, download: bool = False) -> Dataset[Any]:
    """Opens the official train (``train=True``) or test split of dataset ``name`` (images as PIL, no transform)."""
    located = locate_dataset(name, data_dir=data_dir, download=download)
    return get_dataset_spec(name).source.open(located.root, train=train)


@dataclass(frozen=True)
class SplitPart:
    """The images of one split: items of a dataset (an official split, or the whole of a flat image folder).

    Attributes:
        dataset: The dataset the indices point into (images as PIL, no transform), or the split's numpy arrays
            when :func:`split_dataset` was asked for them (``in_memory=True``).
        indices: Which of its items, in a seeded order.
        part: Which official part ``dataset`` is: ``train``, ``test``, or ``all`` (a flat folder).
    """

    dataset: Any  # Dataset[Any] | ImageArrays: both have __len__, targets and classes
    indices: list[int]
    part: str


def split_dataset(
    name: str,
    splits: tuple[str, ...] = ("train", "val", "test"),
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_size: int | float | None = None,
    test_size: int | float | None = None,
    seed: int = 0,
    in_memory: bool = False,
) -> dict[str, SplitPart]:
    """The train, val and test images of dataset ``name``, as the data module and ``attngraft data`` use them.

    Datasets with official train and test splits hold ``val_size`` images out of the train split; a flat image
    folder (``<class>/<image>``) is split three ways by ``val_size`` and ``test_size`` (fractions are of all its
    images). Image folders are split class by class (:func:`stratified_split`); the others by one permutation.

    Args:
        name: Registered dataset name.
        splits: Which of ``train``, ``val`` and ``test`` to open (the official test split is read only if asked).
        data_dir: A directory searched first.
        download: Allow torchvision's downloader.
        val_size: Validation images, a count or a fraction; default the dataset's.
        test_size: Test images of a flat image folder, a count or a fraction; default the dataset's.
        seed: Seed of the split.
        in_memory: Read the official splits of in-memory datasets (MNIST family, CIFAR) into numpy arrays
            (:class:`ImageArrays`) without importing torch; other datasets are opened as datasets all the same.

    Raises:
        ConfigError: If ``test_size`` is given for a dataset with its own test split, or a class of an image folder
            has too few images for the split (naming the folder and the class).
    """
    spec = get_dataset_spec(name)
    located = locate_dataset(name, data_dir=data_dir, download=download)
    val_size = spec.val_size if val_size is None else val_size
    if located.layout == "flat":
        test_size = spec.test_size if test_size is None else test_size
        folder = _open(spec, located.root, True, in_memory)
        indices = _split(spec, folder, {"val": val_size, "test": test_size}, seed, located.root)
        return {split: SplitPart(folder, indices[split], "all") for split in splits}
    if test_size is not None:
        raise ConfigError(
            f"data.test_size: {name} in {located.source} has its own test split; test_size applies only to a "
            "folder of class folders"
        )
    parts: dict[str, SplitPart] = {}
    if "train" in splits or "val" in splits:
        official_train = _open(spec, located.root, True, in_memory)
        indices = _split(spec, official_train, {"val": val_size}, seed, located.root)
        parts.update({split: SplitPart(official_train, indices[split], "train") for split in ("train", "val")})
    if "test" in splits:
        official_test = _open(spec, located.root, False, in_memory)
        parts["test"] = SplitPart(official_test, list(range(len(official_test))), "test")
    return {split: parts[split] for split in splits}


def _open(spec: DatasetSpec, root: Path, train: bool, in_memory: bool) -> Any:
    arrays = spec.source.arrays(root, train) if in_memory else None
    return arrays if arrays is not None else spec.source.open(root, train)


def _split(
    spec: DatasetSpec, dataset: Any, sizes: dict[str, int | float], seed: int, where: Path
) -> dict[str, list[int]]:
    """Item indices of ``train`` and the held-out splits of ``sizes``."""
    try:
        if not spec.stratify:
            train, val = split_indices(len(dataset), sizes["val"], seed, what="data.val_size")
            return {"train": train, "val": val}
        return stratified_split(
            dataset.targets,
            sizes,
            seed,
            where=str(getattr(dataset, "root", where)),
            class_names=dataset.classes,
        )
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
