"""Datasets, their location on disk, transforms and the LightningDataModule.

This room depends on nothing of attngraft's but the registry and the error types. ``ImageDataModule`` is
imported lazily, so that tools which only locate or summarise data do not pay for importing Lightning.
"""

from typing import TYPE_CHECKING, Any

from attngraft.data.datasets import (
    DATASETS,
    DatasetSpec,
    get_dataset_spec,
    list_datasets,
    load_split,
    locate_dataset,
)
from attngraft.data.locate import cache_dir
from attngraft.data.sources import Located
from attngraft.data.splits import TransformedSubset, split_indices
from attngraft.data.summary import DatasetSummary, summarize
from attngraft.data.transforms import RepeatChannels, build_transform

if TYPE_CHECKING:
    from attngraft.data.datamodule import ImageDataModule

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "DatasetSummary",
    "ImageDataModule",
    "Located",
    "RepeatChannels",
    "TransformedSubset",
    "build_transform",
    "cache_dir",
    "get_dataset_spec",
    "list_datasets",
    "load_split",
    "locate_dataset",
    "split_indices",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name == "ImageDataModule":
        from attngraft.data.datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
