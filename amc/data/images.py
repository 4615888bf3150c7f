"""Loading an image for a record, with an error that says which record and which file."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from amc.io import DataError


def load_image(path: str | os.PathLike, what: str) -> Image.Image:
    """Open ``path`` as an RGB image; ``what`` (e.g. the record id) goes into any error."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # also forces the lazy decode while the file is open
    except FileNotFoundError:
        raise DataError(f"{what}: image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{what}: cannot read image {path}: {error}") from None
