"""How each dataset family is found on disk and opened with torchvision's dataset classes.

A *source* answers two questions: is the dataset in this candidate directory (staging it into the cache if
its files need decompressing or extracting), and how to open a split from the resulting torchvision root.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torchvision
from torch.utils.data import Dataset
from typing_extensions import override

from attngraft._io import atomic_path
from attngraft.data import formats
from attngraft.data.images import ImageFolderDataset, class_folders
from attngraft.data.locate import is_fresh, search_roots, stage_gunzip, stage_tar, staging_dir
from attngraft.errors import CorruptDataError, DataNotFoundError

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
        """The class names, when they can be listed without reading the images (image folders); else None."""
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
        dataset_class: The torchvision class (``torchvision.datasets.FashionMNIST``, ``MNIST``).
        aliases: Extra sub-folder names to look in (``fashion-mnist``).
        system_dirs: System-wide locations, searched last.
    """

    FILES: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(self, dataset_class: Any, aliases: tuple[str, ...], system_dirs: tuple[str, ...] = ()) -> None:
        self.dataset_class = dataset_class
        self.folder: str = dataset_class.__name__
        self.aliases = aliases
        self.system_dirs = system_dirs

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
        return self.dataset_class(root=str(root), train=train)

    @override
    def download(self, root: Path) -> None:
        self.dataset_class(root=str(root), train=True, download=True)

    @override
    def expected_layout(self) -> str:
        return f"{', '.join(self.FILES)} (raw or .gz), directly or under {self.folder}/raw/"


class _ValidatedCifarMixin:
    """Replaces torchvision's md5-only checks by format validation with a safe unpickler.

    torchvision unpickles the batches with ``pickle.load``; we first parse every file it will read with
    :func:`formats.safe_unpickle`, which refuses any global other than numpy array reconstruction, so the
    later load cannot run code. It also accepts valid files whose checksum differs (re-packed copies).
    """

    root: str
    base_folder: str
    train: bool
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]
    classes: list[str]
    class_to_idx: dict[str, int]
    label_key: ClassVar[str]

    def _check_integrity(self) -> bool:  # replaces torchvision's md5 check
        folder = Path(self.root) / self.base_folder
        for file, _ in self.train_list if self.train else self.test_list:
            path = folder / file
            if not path.is_file():
                raise DataNotFoundError(f"{path}: missing CIFAR batch file")
            formats.check_cifar_batch(path, self.label_key)
        return True

    def _load_meta(self) -> None:  # replaces torchvision's md5 check + pickle.load
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if not path.is_file():
            raise DataNotFoundError(f"{path}: missing CIFAR metadata file")
        meta = formats.safe_unpickle(path)
        if not isinstance(meta, dict) or self.meta["key"] not in meta:
            raise CorruptDataError(f"{path}: expected a dict with key {self.meta['key']!r}")
        self.classes = list(meta[self.meta["key"]])
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


class _CIFAR10(_ValidatedCifarMixin, torchvision.datasets.CIFAR10):  # type: ignore[misc]
    label_key = "labels"


class _CIFAR100(_ValidatedCifarMixin, torchvision.datasets.CIFAR100):  # type: ignore[misc]
    label_key = "fine_labels"


class CifarSource(Source):
    """CIFAR-10/100 python batches: the extracted folder or the original ``.tar.gz`` archive."""

    def __init__(self, dataset_class: Any, download_class: Any) -> None:
        self.dataset_class = dataset_class
        self.download_class = download_class
        self.base_folder: str = dataset_class.base_folder
        self.archive: str = dataset_class.filename

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
        return self.dataset_class(root=str(root), train=train)

    @override
    def download(self, root: Path) -> None:
        # torchvision's own class checks the archive's md5 before extracting it.
        self.download_class(root=str(root), train=True, download=True)

    @override
    def expected_layout(self) -> str:
        return f"{self.base_folder}/ (extracted) or {self.archive}"


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
        return "flat"
    others = [name for name in folders if name not in splits]
    if others:
        raise CorruptDataError(
            f"{folder}: train/ and test/ split folders beside other folders ({', '.join(others)}); an image folder "
            "holds either train/<class>/ and test/<class>/, or only <class>/ folders"
        )
    return "train/test"
