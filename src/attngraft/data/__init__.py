"""Datasets, their location on disk, transforms and the LightningDataModule.

This room depends on nothing of attngraft's but the registry and the error types. ``ImageDataModule`` is
imported lazily, so that tools which only locate or summarise data do not pay for importing Lightning.
"""

from typing import TYPE_CHECKING, Any

from attngraft.data.datasets import (
    DATASETS,
    DatasetSpec,
    SplitPart,
    get_dataset_spec,
    list_datasets,
    load_split,
    locate_dataset,
    split_dataset,
)
from attngraft.data.images import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from attngraft.data.locate import cache_dir
from attngraft.data.sources import Located
from attngraft.data.splits import TransformedSubset, split_indices, stratified_split
from attngraft.data.summary import DatasetSummary, summarize
from attngraft.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    MatchChannels,
    Normalization,
    RepeatChannels,
    build_transform,
    fit_statistics,
    resolve_normalization,
)

if TYPE_CHECKING:
    from attngraft.data.datamodule import ImageDataModule

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "DatasetSpec",
    "DatasetSummary",
    "ImageDataModule",
    "ImageFolderDataset",
    "Located",
    "MatchChannels",
    "Normalization",
    "RepeatChannels",
    "SplitPart",
    "TransformedSubset",
    "build_transform",
    "cache_dir",
    "fit_statistics",
    "get_dataset_spec",
    "list_datasets",
    "load_image",
    "load_split",
    "locate_dataset",
    "resolve_normalization",
    "split_dataset",
    "split_indices",
    "stratified_split",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name == "ImageDataModule":
        from attngraft.data.datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
