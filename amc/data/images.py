"""Reading images: a full load for a record, and a cheap header check for ``amc prepare``.

Truncated image files load as in the released code (``dataset/caption_dataset.py`` sets
``ImageFile.LOAD_TRUNCATED_IMAGES = True``): the missing tail of the picture comes out grey
instead of raising. The switch is PROCESS-GLOBAL in Pillow, so importing this module turns it on
for every image the process (and its DataLoader workers) opens. It is set here, at import, because
every dataset and evaluation loader imports this module: a worker started by ``fork`` inherits it,
and one started by ``spawn`` re-imports this module when it unpickles its dataset.

A file that cannot be decoded at all (zero bytes, garbage, missing) raises :class:`ImageReadError`;
the training datasets replace such a sample (:mod:`amc.data.datasets`), evaluation does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from amc.io import DataError

ImageFile.LOAD_TRUNCATED_IMAGES = True  # process-global; see the module docstring

# What Pillow raises for a file it cannot identify or decode.
_UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


class ImageReadError(DataError):
    """An image file that is missing or cannot be decoded (the file's fault, not the record's).

    ``reason`` is the short category used in skip counts: ``"image missing"`` or ``"image unreadable"``.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def load_image(path: str | os.PathLike, what: str) -> Image.Image:
    """Open ``path`` as an RGB image; ``what`` (e.g. the record id) goes into any error."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # also forces the lazy decode while the file is open
    except FileNotFoundError:
        raise ImageReadError(f"{what}: image file not found: {path}", "image missing") from None
    except _UNREADABLE as error:
        raise ImageReadError(f"{what}: cannot read image {path}: {error}", "image unreadable") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header only (Pillow decodes no pixels for this)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}", "image missing") from None
    except _UNREADABLE as error:
        raise ImageReadError(f"cannot read image {path}: {error}", "image unreadable") from None
    if width < 1 or height < 1:
        raise ImageReadError(f"image {path} has no pixels ({width}x{height})", "image unreadable")
    return width, height


@dataclass
class ImageChecker:
    """Header checks with a memory: readers ask about the same image once per phrase."""

    _seen: dict[str, tuple[int, int] | ImageReadError] = field(default_factory=dict)

    def size(self, path: str | os.PathLike) -> tuple[int, int]:
        """``image_size(path)``, remembered (a failure is remembered too and raised again)."""
        key = str(path)
        if key not in self._seen:
            try:
                self._seen[key] = image_size(Path(path))
            except ImageReadError as error:
                self._seen[key] = error
        found = self._seen[key]
        if isinstance(found, ImageReadError):
            raise found
        return found

    def problem(self, path: str | os.PathLike) -> ImageReadError | None:
        """``None`` when the header reads, else the error (its ``reason`` is the skip category)."""
        try:
            self.size(path)
        except ImageReadError as error:
            return error
        return None
