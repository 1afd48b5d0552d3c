"""How each dataset family is found on disk and opened with torchvision's dataset classes.

A *source* answers two questions: is the dataset in this candidate directory (staging it into the cache if
its files need decompressing or extracting), and how to open a split from the resulting torchvision root.
Sources of in-memory datasets (MNIST family, CIFAR) can also read a split into numpy arrays without torch
(:meth:`Source.arrays`), which is how ``attngraft data`` describes them in well under a second; torchvision is
imported only when a split is opened as a dataset.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from typing_extensions import override

from attngraft._io import atomic_path
from attngraft.data import formats
from attngraft.data.folders import class_folders
from attngraft.data.locate import is_fresh, search_roots, stage_gunzip, stage_tar, staging_dir
from attngraft.errors import CorruptDataError, DataNotFoundError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Located:
    """Where a dataset was found.

    Attributes:
        root: The directory to hand to the torchvision dataset class.
        source: The directory the files came from (equal to ``root`` when nothing was staged).
        layout: ``"train/test"``: official train and test splits. ``"flat"``: one folder of class folders, which the
            data module splits into train, val and test.
    """

    root: Path
    source: Path
    layout: str = "train/test"


@dataclass(frozen=True)
class ImageArrays:
    """An official split read into memory with numpy (no torch): what ``attngraft data`` measures.

    Attributes:
        data: The images, uint8 of shape (N, H, W) (grey) or (N, H, W, C), as torchvision's ``dataset.data``.
        targets: The label of every image.
        classes: Class names in label order.
    """

    data: np.ndarray
    targets: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.targets)


class Source:
    """Base class: finds a dataset's files in candidate directories and opens its splits."""

    system_dirs: tuple[str, ...] = ()

    def roots(self, data_dir: str | Path | None) -> list[Path]:
        """Directories to search, in priority order."""
        return search_roots(data_dir, self.system_dirs)

    def find(self, candidate: Path, name: str) -> Located | None:
        """Returns where the dataset is in ``candidate`` (staging it if needed), or None if it is not there."""
        raise NotImplementedError

    def open(self, root: Path, train: bool) -> Dataset[Any]:
        """Opens the official train (``train=True``) or test split from a root returned by :meth:`find`."""
        raise NotImplementedError

    def class_names(self, root: Path) -> list[str] | None:
        """The class names, when they can be listed without reading the images; else None."""
        return None

    def arrays(self, root: Path, train: bool) -> ImageArrays | None:
        """The official train or test split read into numpy arrays, for in-memory datasets; else None."""
        return None

    def download(self, root: Path) -> None:
        """Downloads the dataset into ``root`` with torchvision's downloader."""
        raise DataNotFoundError("this dataset cannot be downloaded; give its folder with --data-dir")

    def expected_layout(self) -> str:
        """Describes the files looked for, for error messages."""
        raise NotImplementedError


class IdxSource(Source):
    """MNIST-family datasets in LeCun's IDX format (raw or ``.gz``), read by torchvision's MNIST classes.

    Args:
        class_name: The torchvision class in ``torchvision.datasets`` (``FashionMNIST``, ``MNIST``); also the folder
            torchvision reads (``<root>/<class_name>/raw``).
        classes: The class names in label order (as the torchvision class lists them; a test keeps them equal).
        aliases: Extra sub-folder names to look in (``fashion-mnist``).
        system_dirs: System-wide locations, searched last.
    """

    FILES: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(
        self, class_name: str, classes: tuple[str, ...], aliases: tuple[str, ...], system_dirs: tuple[str, ...] = ()
    ) -> None:
        self.folder = class_name
        self.classes = classes
        self.aliases = aliases
        self.system_dirs = system_dirs

    def dataset_class(self) -> Any:
        """The torchvision dataset class (imports torchvision)."""
        import torchvision

        return getattr(torchvision.datasets, self.folder)

    @override
    def find(self, candidate: Path, name: str) -> Located | None:
        torchvision_raw = candidate / self.folder / "raw"
        if all((torchvision_raw / file).is_file() for file in self.FILES):
            self._check(torchvision_raw)
            return Located(root=candidate, source=torchvision_raw)
        for directory in (candidate, *(candidate / alias for alias in self.aliases), torchvision_raw):
            files = [self._file_or_gz(directory / file) for file in self.FILES]
            if all(file is not None for file in files):
                return self._stage(name, directory, [file for file in files if file is not None])
        return None

    @staticmethod
    def _file_or_gz(path: Path) -> Path | None:
        for option in (path, path.with_name(path.name + ".gz")):
            if option.is_file():
                return option
        return None

    def _stage(self, name: str, directory: Path, files: list[Path]) -> Located:
        root = staging_dir(name, directory)
        raw = root / self.folder / "raw"
        for source, file in zip(files, self.FILES, strict=True):
            destination = raw / file
            if is_fresh(destination, source):
                continue
            logger.info("staging %s -> %s", source, destination)
            if source.suffix == ".gz":
                stage_gunzip(source, destination, check=formats.check_idx_file)
            else:
                with atomic_path(destination) as temporary:
                    temporary.unlink()
                    os.symlink(source.resolve(), temporary)
        self._check(raw)
        return Located(root=root, source=directory)

    def _check(self, raw: Path) -> None:
        shapes = {file: formats.check_idx_file(raw / file) for file in self.FILES}
        for split in ("train", "t10k"):
            images, labels = shapes[f"{split}-images-idx3-ubyte"], shapes[f"{split}-labels-idx1-ubyte"]
            if images[0] != labels[0]:
                raise CorruptDataError(f"{raw}: {split} has {images[0]} images but {labels[0]} labels")

    @override
    def open(self, root: Path, train: bool) -> Dataset[Any]:
        dataset: Dataset[Any] = self.dataset_class()(root=str(root), train=train)
        return dataset

    @override
    def class_names(self, root: Path) -> list[str] | None:
        return list(self.classes)

    @override
    def arrays(self, root: Path, train: bool) -> ImageArrays:
        raw, prefix = root / self.folder / "raw", "train" if train else "t10k"
        images = formats.read_idx(raw / f"{prefix}-images-idx3-ubyte", expected_ndim=3)  # (N, H, W)
        labels = formats.read_idx(raw / f"{prefix}-labels-idx1-ubyte", expected_ndim=1)  # (N,)
        return ImageArrays(images, labels.astype(np.int64), list(self.classes))

    @override
    def download(self, root: Path) -> None:
        self.dataset_class()(root=str(root), train=True, download=True)

    @override
    def expected_layout(self) -> str:
        return f"{', '.join(self.FILES)} (raw or .gz), directly or under {self.folder}/raw/"


@dataclass(frozen=True)
class CifarFiles:
    """The files of a CIFAR variant (torchvision's class attributes; a test keeps them equal).

    Attributes:
        class_name: The class in ``torchvision.datasets`` (``CIFAR10``, ``CIFAR100``).
        base_folder: The extracted folder.
        archive: The original ``.tar.gz`` archive.
        train: The training batch files.
        test: The test batch files.
        meta: The metadata file and its key of class names.
        label_key: The key of the labels in each batch.
    """

    class_name: str
    base_folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: tuple[str, str]
    label_key: str


CIFAR10_FILES = CifarFiles(
    "CIFAR10",
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{number}" for number in range(1, 6)),
    ("test_batch",),
    ("batches.meta", "label_names"),
    "labels",
)
CIFAR100_FILES = CifarFiles(
    "CIFAR100",
    "cifar-100-python",
    "cifar-100-python.tar.gz",
    ("train",),
    ("test",),
    ("meta", "fine_label_names"),
    "fine_labels",
)


class CifarSource(Source):
    """CIFAR-10/100 python batches: the extracted folder or the original ``.tar.gz`` archive.

    Args:
        files: The variant's files (:data:`CIFAR10_FILES`, :data:`CIFAR100_FILES`).
    """

    def __init__(self, files: CifarFiles) -> None:
        self.files = files
        self.base_folder = files.base_folder
        self.archive = files.archive

    @override
    def find(self, candidate: Path, name: str) -> Located | None:
        if (candidate / self.base_folder).is_dir():
            return Located(root=candidate, source=candidate / self.base_folder)
        archive = candidate / self.archive
        if not archive.is_file():
            return None
        root = staging_dir(name, candidate)
        if not is_fresh(root / self.base_folder, archive):
            logger.info("extracting %s -> %s", archive, root)
            stage_tar(archive, root, self.base_folder)
        return Located(root=root, source=archive)

    @override
    def open(self, root: Path, train: bool) -> Dataset[Any]:
        from attngraft.data import cifar

        dataset: Dataset[Any] = getattr(cifar, f"Safe{self.files.class_name}")(root=str(root), train=train)
        return dataset

    @override
    def class_names(self, root: Path) -> list[str] | None:
        return cifar_class_names(root / self.base_folder / self.files.meta[0], self.files.meta[1])

    @override
    def arrays(self, root: Path, train: bool) -> ImageArrays:
        folder = root / self.base_folder
        images, labels = [], []
        for file in self.files.train if train else self.files.test:
            path = folder / file
            if not path.is_file():
                raise DataNotFoundError(f"{path}: missing CIFAR batch file")
            batch_images, batch_labels = formats.read_cifar_batch(path, self.files.label_key)
            images.append(np.asarray(batch_images, dtype=np.uint8).reshape(-1, 3, 32, 32))  # (N, C, H, W)
            labels.extend(batch_labels)
        data = np.concatenate(images).transpose(0, 2, 3, 1)  # (N, H, W, C), as torchvision's dataset.data
        names = self.class_names(root) or []
        return ImageArrays(data, np.asarray(labels, dtype=np.int64), names)

    @override
    def download(self, root: Path) -> None:
        import torchvision

        # torchvision's own class checks the archive's md5 before extracting it.
        getattr(torchvision.datasets, self.files.class_name)(root=str(root), train=True, download=True)

    @override
    def expected_layout(self) -> str:
        return f"{self.base_folder}/ (extracted) or {self.archive}"


def cifar_class_names(path: Path, key: str) -> list[str]:
    """The class names of a CIFAR metadata file, read with the safe unpickler.

    Raises:
        DataNotFoundError: If the file is missing.
        CorruptDataError: If it is not a dict holding ``key``.
    """
    if not path.is_file():
        raise DataNotFoundError(f"{path}: missing CIFAR metadata file")
    meta = formats.safe_unpickle(path)
    if not isinstance(meta, dict) or key not in meta:
        raise CorruptDataError(f"{path}: expected a dict with key {key!r}")
    return [str(name) for name in meta[key]]


class ImageFolderSource(Source):
    """The user's images: one sub-folder per class, either split or not.

    Two layouts, told apart by this rule:

    - ``train/<class>/<image>`` and ``test/<class>/<image>`` (**train/test**): the folder has sub-folders named
      ``train`` and ``test`` that both hold sub-folders. No other visible sub-folder may stand beside them (an error
      names it). The validation images are held out of ``train/``; ``test/`` is the test set and must have the
      classes of ``train/``.
    - ``<class>/<image>`` (**flat**): any other folder with visible sub-folders; every one is a class, split into
      train/val/test by the data module. A flat folder whose only classes are ``train`` and ``test`` is read as flat
      when those hold images directly and no sub-folders.

    Only an explicit ``data_dir`` or ``$ATTNGRAFT_DATA`` is searched: there is no default location. Images are read
    by :func:`attngraft.data.images.load_image` (any mode, converted to grey or RGB).
    """

    SPLITS: ClassVar[tuple[str, str]] = ("train", "test")

    @override
    def roots(self, data_dir: str | Path | None) -> list[Path]:
        return search_roots(data_dir, include_cache=False)

    @override
    def find(self, candidate: Path, name: str) -> Located | None:
        layout = folder_layout(candidate)
        return None if layout is None else Located(root=candidate, source=candidate, layout=layout)

    @override
    def open(self, root: Path, train: bool) -> Dataset[Any]:
        from attngraft.data.images import ImageFolderDataset

        if folder_layout(root) == "flat":
            if not train:
                raise DataNotFoundError(
                    f"{root}: no test/ folder; its test images are split off the class folders (data.test_size)"
                )
            return ImageFolderDataset(root)
        if train:
            return ImageFolderDataset(root / "train")
        return ImageFolderDataset(root / "test", classes=class_folders(root / "train"))

    @override
    def class_names(self, root: Path) -> list[str] | None:
        return class_folders(root if folder_layout(root) == "flat" else root / "train")

    @override
    def expected_layout(self) -> str:
        return "<class>/<image> folders, or train/<class>/<image> and test/<class>/<image>"


def folder_layout(folder: Path) -> str | None:
    """``"train/test"`` or ``"flat"`` by :class:`ImageFolderSource`'s rule; None without visible sub-folders.

    Raises:
        CorruptDataError: When ``train/`` and ``test/`` split folders stand beside other folders.
    """
    if not folder.is_dir():
        return None
    folders = class_folders(folder)
    if not folders:
        return None
    splits = ImageFolderSource.SPLITS
    if not all(split in folders and class_folders(folder / split) for split in splits):
        _check_classes(folder, folders)
        return "flat"
    others = [name for name in folders if name not in splits]
    if others:
        raise CorruptDataError(
            f"{folder}: train/ and test/ split folders beside other folders ({', '.join(others)}); an image folder "
            "holds either train/<class>/ and test/<class>/, or only <class>/ folders"
        )
    _check_classes(folder / "train", class_folders(folder / "train"))
    return "train/test"


def _check_classes(folder: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        logger.warning(
            "%s: one class folder (%s/): a classifier needs at least two (one folder of images per class); with "
            "one, every prediction is right",
            folder,
            classes[0],
        )
