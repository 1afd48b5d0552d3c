"""Folders of one sub-folder per class, listed without importing torch or torchvision."""

from __future__ import annotations

import os
from pathlib import Path

# torchvision.datasets.folder.IMG_EXTENSIONS (a test keeps them equal).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_hidden(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are never read as classes or images."""
    return name.startswith(".")


def class_folders(directory: Path) -> list[str]:
    """The sorted names of the visible sub-folders of ``directory`` (the classes of an image folder)."""
    with os.scandir(directory) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not is_hidden(entry.name))
