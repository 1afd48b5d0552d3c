"""Reading the user's image files: any PIL mode in, grey or RGB out, and folders of one sub-folder per class.

Every image leaves :func:`load_image` in one of three modes, which the transforms turn into float tensors in [0, 1]:

- ``"L"`` (8-bit grey): from ``L`` and ``1`` (bilevel), and ``LA`` after compositing on black.
- ``"RGB"`` (8-bit colour): from ``RGB``, palette ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``; ``RGBA``, ``RGBa``,
  ``PA`` and palettes with a transparent colour after compositing on black.
- ``"F"`` (32-bit float grey, already in [0, 1]): from 16-bit grey (``I;16``, ``I;16B``, ...) and 32-bit integer
  ``I`` divided by 65535, so 65535 becomes 1.0 (``I`` holds 16-bit PNG and TIFF data; larger values are clipped),
  and from float ``F`` clipped to [0, 1].

Transparency is composited on black: a pixel of opacity ``a`` keeps ``a`` times its colour (premultiplied alpha).
A fully transparent pixel is then black whatever colour the file stores under it, and opaque images are unchanged.
Pillow reads 16-bit colour PNGs as 8-bit ``RGB``; they keep 8 bits.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image, UnidentifiedImageError
from typing_extensions import override

from attngraft.data.folders import IMAGE_EXTENSIONS, class_folders, is_hidden
from attngraft.errors import CorruptDataError, DataNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "canonical_image", "class_folders", "is_hidden", "load_image"]

logger = logging.getLogger(__name__)

SIXTEEN_BIT_MAX = 65535.0

_GREY_MODES = frozenset({"L", "1"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "PA", "LA", "La"})
_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS", "I;32", "I;32B"})


def load_image(path: str | Path) -> Image.Image:
    """Reads an image file of any mode and returns it as ``L``, ``RGB`` or ``F`` (see the module's description).

    Raises:
        CorruptDataError: Naming the file, when it cannot be decoded (truncated, corrupt or not an image), or when it
            declares more pixels than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            return canonical_image(opened)
    except Image.DecompressionBombError as error:
        raise CorruptDataError(f"{path}: refused to decode it ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptDataError(f"{path}: unreadable image ({error})") from None


def canonical_image(image: Image.Image) -> Image.Image:
    """Converts a decoded image of any mode to ``L``, ``RGB`` or ``F``, compositing transparency on black."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in _GREY_MODES:
        return image.convert("L")
    if mode in _INTEGER_MODES:
        pixels = np.asarray(image, dtype=np.float64) / SIXTEEN_BIT_MAX
        return Image.fromarray(np.clip(pixels, 0.0, 1.0).astype(np.float32), mode="F")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), mode="F")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        return _composite_on_black(image)
    return image.convert("RGB")


def _composite_on_black(image: Image.Image) -> Image.Image:
    """Premultiplies the colour by the alpha channel and drops it: ``LA`` → ``L``, the others → ``RGB``."""
    grey = image.mode in ("LA", "La")
    opaque_black = Image.new("RGBA", image.size, (0, 0, 0, 255))
    return Image.alpha_composite(opaque_black, image.convert("RGBA")).convert("L" if grey else "RGB")


class ImageFolderDataset(torchvision.datasets.ImageFolder):  # type: ignore[misc]
    """torchvision's ImageFolder over ``root/<class>/<image>``, with our loader and clear errors.

    Hidden class folders, hidden files and anything under a hidden folder are ignored. Files without an image
    extension (``IMAGE_EXTENSIONS``) are skipped with one warning naming a few of them. Sub-folders of a class
    folder belong to that class (torchvision's rule).

    Args:
        root: The folder of class folders.
        classes: The class names to read, in label order (default: every class folder, sorted). A test folder is
            read with its training folder's classes, so a label means the same class in both.

    Raises:
        DataNotFoundError: Naming the folder when it has no class folders, or naming the classes without images.
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None) -> None:
        self._given_classes = classes
        self._skipped: list[str] = []
        root = Path(root)
        try:
            super().__init__(str(root), loader=load_image, is_valid_file=self._is_image(root))
        except FileNotFoundError as error:
            raise DataNotFoundError(f"{root}: {error}") from None
        if self._skipped:
            shown = ", ".join(self._skipped[:3]) + (", ..." if len(self._skipped) > 3 else "")
            logger.warning("%s: skipped %d files that are not images (%s)", root, len(self._skipped), shown)

    @override
    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        found = class_folders(Path(directory))
        if self._given_classes is not None:
            extra = sorted(set(found) - set(self._given_classes))
            if extra:
                raise DataNotFoundError(f"{directory}: class folders {extra} are not among the classes {found}")
            found = list(self._given_classes)
        if not found:
            raise DataNotFoundError(f"{directory}: no class folders (expected {directory}/<class>/<image>)")
        return found, {name: index for index, name in enumerate(found)}

    def _is_image(self, root: Path) -> Callable[[str], bool]:
        def is_image(path: str) -> bool:
            relative = Path(path).relative_to(root)
            if any(is_hidden(part) for part in relative.parts):
                return False
            if path.lower().endswith(IMAGE_EXTENSIONS):
                return True
            self._skipped.append(str(relative))
            return False

        return is_image

    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        """The file listing of torchvision, with an error naming the classes that have no images."""
        samples: list[tuple[str, int]] = torchvision.datasets.folder.make_dataset(
            directory, class_to_idx, extensions, is_valid_file, allow_empty=True
        )
        counts = Counter(label for _, label in samples)
        empty = [name for name, label in class_to_idx.items() if counts[label] == 0]
        if empty and not allow_empty:
            raise DataNotFoundError(
                f"{directory}: no images for the classes {', '.join(empty)} "
                f"(image files end in {', '.join(IMAGE_EXTENSIONS)})"
            )
        return samples
