"""Datasets, their location on disk, transforms and the LightningDataModule.

This room depends on nothing of attngraft's but the registry and the error types. Its public names are imported
on first use (PEP 562): locating, splitting and describing in-memory datasets (``attngraft data``) needs numpy
only, the transforms torch and torchvision, and ``ImageDataModule`` Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports these on first use
    from attngraft.data.constants import IMAGENET_MEAN, IMAGENET_STD
    from attngraft.data.datamodule import ImageDataModule
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
    from attngraft.data.folders import IMAGE_EXTENSIONS
    from attngraft.data.images import ImageFolderDataset, load_image
    from attngraft.data.locate import cache_dir
    from attngraft.data.sources import ImageArrays, Located
    from attngraft.data.splits import split_indices, stratified_split
    from attngraft.data.subset import TransformedSubset
    from attngraft.data.summary import DatasetSummary, summarize
    from attngraft.data.transforms import (
        NORMALIZATIONS,
        MatchChannels,
        Normalization,
        RepeatChannels,
        build_transform,
        fit_statistics,
        resolve_normalization,
    )

# Public name -> the submodule that defines it (tests/data/test_package.py checks it against __all__).
_LAZY: dict[str, str] = {
    "DATASETS": "attngraft.data.datasets",
    "DatasetSpec": "attngraft.data.datasets",
    "DatasetSummary": "attngraft.data.summary",
    "IMAGENET_MEAN": "attngraft.data.constants",
    "IMAGENET_STD": "attngraft.data.constants",
    "IMAGE_EXTENSIONS": "attngraft.data.folders",
    "ImageArrays": "attngraft.data.sources",
    "ImageDataModule": "attngraft.data.datamodule",
    "ImageFolderDataset": "attngraft.data.images",
    "Located": "attngraft.data.sources",
    "MatchChannels": "attngraft.data.transforms",
    "NORMALIZATIONS": "attngraft.data.transforms",
    "Normalization": "attngraft.data.transforms",
    "RepeatChannels": "attngraft.data.transforms",
    "SplitPart": "attngraft.data.datasets",
    "TransformedSubset": "attngraft.data.subset",
    "build_transform": "attngraft.data.transforms",
    "cache_dir": "attngraft.data.locate",
    "fit_statistics": "attngraft.data.transforms",
    "get_dataset_spec": "attngraft.data.datasets",
    "list_datasets": "attngraft.data.datasets",
    "load_image": "attngraft.data.images",
    "load_split": "attngraft.data.datasets",
    "locate_dataset": "attngraft.data.datasets",
    "resolve_normalization": "attngraft.data.transforms",
    "split_dataset": "attngraft.data.datasets",
    "split_indices": "attngraft.data.splits",
    "stratified_split": "attngraft.data.splits",
    "summarize": "attngraft.data.summary",
}

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "DatasetSpec",
    "DatasetSummary",
    "ImageArrays",
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
    """Imports a public name's submodule on first access and caches the name in the package namespace."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
