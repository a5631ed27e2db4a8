"""Pictures -> 32x32 RGB uint8: a CIFAR-sized picture comes back pixel for pixel, others are centre-cropped
and shrunk, and anything that is not a picture is one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.pictures import PictureError, expand, read_picture


def test_a_32x32_png_is_read_back_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    assert np.array_equal(read_picture(tmp_path / "x.png"), pixels)


def test_other_sizes_and_modes_become_32x32_rgb_from_the_centre(tmp_path: Path) -> None:
    # A wide picture whose centre square is red and whose sides are blue: only red survives the crop.
    wide = np.zeros((64, 192, 3), dtype=np.uint8)
    wide[:, :64, 2] = wide[:, 128:, 2] = 255
    wide[:, 64:128, 0] = 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = read_picture(tmp_path / "wide.png")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[..., 0].min() > 250 and out[..., 2].max() < 5
    Image.fromarray(np.full((50, 50), 128, dtype=np.uint8), "L").save(tmp_path / "grey.jpg")
    grey = read_picture(tmp_path / "grey.jpg")
    assert grey.shape == (32, 32, 3) and abs(int(grey.mean()) - 128) <= 2


def test_not_a_picture_is_one_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_text("hello")
    with pytest.raises(PictureError, match="a.png: not an image"):
        read_picture(tmp_path / "a.png")
    with pytest.raises(PictureError, match="b.png: no such file"):
        read_picture(tmp_path / "b.png")


def test_folders_yield_their_pictures_sorted(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "c.txt", "sub/d.jpeg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in expand([tmp_path])] == ["a.PNG", "b.jpg", "sub/d.jpeg"]
    assert list(expand([tmp_path / "c.txt"])) == [tmp_path / "c.txt"]
