"""Pictures from disk as the models' input: any PNG/JPEG (or other raster Pillow reads) -> uint8 32x32 RGB.

CIFAR-10's images are whole scenes shrunk to 32x32 squares. A picture is cut to the largest centred square
(so nothing is stretched) and shrunk with Pillow's bicubic filter, which antialiases as it shrinks;
transparency is dropped and greyscale or palette images become RGB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.core.errors import StageError

SIZE = 32
#: What a folder is searched for (files named on the command line are tried whatever their name).
SUFFIXES = (".png", ".jpg", ".jpeg")


class PictureError(StageError):
    """A file that is missing, unreadable or not an image."""


def read_picture(path: Path) -> np.ndarray:
    """The picture at ``path`` as a (32, 32, 3) uint8 RGB array; :class:`PictureError` if it is not one."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise PictureError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PictureError(f"{path}: is a folder with no pictures") from None
    except UnidentifiedImageError:
        raise PictureError(f"{path}: not an image (expected PNG or JPEG)") from None
    except (OSError, ValueError) as exc:  # permissions, truncated or corrupt data
        raise PictureError(f"{path}: cannot read the image ({exc})") from None
    return shrink(rgb)


def shrink(image: Image.Image) -> np.ndarray:
    """Centre-crop ``image`` to a square and resize it to 32x32 (bicubic, antialiased)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.uint8)


def expand(paths: list[Path]) -> Iterator[Path]:
    """The files to classify: each named file, and the pictures (by suffix) in each named folder, sorted."""
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            yield from found or [path]
        else:
            yield path
