"""backend.media.image: a colour JPEG given as bytes is decoded by OpenCV (`_decode_jpeg`, the
server's path); Pillow's decoder with ImageOps.exif_transpose is the reference it must equal bit
for bit, for every EXIF orientation and the JPEG variants cameras write. What OpenCV must not
take (cut files, grey and CMYK JPEGs) goes to Pillow as before."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from backend.errors import InputError
from backend.media.image import _decode_jpeg, load_image, load_image_within


def photo(width: int = 203, height: int = 131) -> Image.Image:
    """A photo-like picture: smooth colour gradients, edges and noise (odd sizes, so chroma
    subsampling and the MCU grid do not line up with the edges)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], -1)
    rgb[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 40)
    rgb = rgb + rng.normal(0, 12, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def jpeg(image: Image.Image, orientation: int | None = None, **save) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), **save)
    return out.getvalue()


def pillow_reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_jpeg_orientations_equal_pillow(orientation):
    data = jpeg(photo(), orientation, quality=90)
    reference = pillow_reference(data)
    with Image.open(io.BytesIO(data)) as im:
        fast = _decode_jpeg(data, im, orientation)
    assert fast is not None  # OpenCV took it
    assert fast.shape == reference.shape and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, reference)
    np.testing.assert_array_equal(load_image(data)[0], reference)
    turned = orientation in (5, 6, 7, 8)
    assert load_image_within(data, None)[2] == ((131, 203) if turned else (203, 131))


@pytest.mark.parametrize(
    "save",
    [
        {"quality": 95, "subsampling": 0},  # 4:4:4
        {"quality": 75, "subsampling": 1},  # 4:2:2
        {"quality": 60, "subsampling": 2},  # 4:2:0, most cameras
        {"quality": 85, "progressive": True},
        {"quality": 85, "optimize": True},
    ],
)
def test_jpeg_variants_equal_pillow(save):
    data = jpeg(photo(640, 480), 6, **save)
    with Image.open(io.BytesIO(data)) as im:
        assert _decode_jpeg(data, im, 6) is not None
    np.testing.assert_array_equal(load_image(data)[0], pillow_reference(data))


def test_what_opencv_must_not_take_goes_to_pillow():
    colour = jpeg(photo(), quality=90)
    cut = colour[: len(colour) // 2]  # no end-of-image marker: Pillow refuses it, as before
    with Image.open(io.BytesIO(cut)) as im:
        assert _decode_jpeg(cut, im, None) is None
    with pytest.raises(InputError, match="cannot read the image"):
        load_image(cut)
    for mode in ("L", "CMYK"):  # Pillow's conversion to RGB stays the reference
        data = jpeg(photo().convert(mode), quality=90)
        with Image.open(io.BytesIO(data)) as im:
            assert _decode_jpeg(data, im, None) is None
        np.testing.assert_array_equal(load_image(data)[0], pillow_reference(data))
    tiny = jpeg(photo(7, 30), quality=90)
    with pytest.raises(InputError, match="too small"):
        load_image(tiny)


def test_a_pixel_budget_still_decodes_at_a_reduced_size():
    data = jpeg(photo(640, 480), 8, quality=90)
    rgb, _, full = load_image_within(data, 640 * 480 / 3)
    assert full == (480, 640)  # the upright full size
    assert rgb.shape[0] * rgb.shape[1] <= 640 * 480 / 3 and rgb.shape[0] > rgb.shape[1]
