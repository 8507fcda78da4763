"""The only place photo bytes become pixels: decode (JPEG, PNG, WebP, TIFF, 16-bit and float
grey, HEIF/HEIC through pillow-heif), EXIF orientation applied, the EXIF 35 mm-equivalent focal
length read (only when it is one plausible number), size limits checked, large photos decoded at
a reduced size on request (`load_image_within`); and pixels back to PNG bytes.

Raises `errors.InputError` with a message that says what to fix. Imports numpy, PIL and OpenCV
(a whole, intact colour JPEG is decoded by OpenCV's libjpeg-turbo: the same pixels as Pillow's,
in half the time; `_decode_jpeg`).
"""

from __future__ import annotations

import io
import math
import os

import cv2
import numpy as np
from PIL import Image, ImageOps

from backend.errors import InputError

MAX_IMAGE_PIXELS = 80_000_000
NOT_AN_IMAGE = (
    "cannot read the image: not a picture Pillow can decode (JPEG, PNG, WebP, TIFF, BMP, GIF, "
    "HEIF/HEIC)"
)  # refuse larger images (decompression bombs)
# EXIF FocalLengthIn35mmFilm outside this range is no camera's (the widest fisheye is ~8 mm, the
# longest lens ~5,000 mm) and is ignored, like a missing tag: it would put the camera's focal
# length in pixels out of float range
EXIF_F35_RANGE_MM = (1.0, 5000.0)

# ISO base media "ftyp" brands of HEIF still images (phones' HEIC photos)
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc", b"hevx"})
_heif_ready: bool | None = None


def is_heif(head: bytes) -> bool:
    """Whether encoded bytes (their first 12 are enough) are a HEIF/HEIC image."""
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def enable_heif() -> bool:
    """Let Pillow open HEIF/HEIC photos through pillow-heif, when it is installed (make setup
    installs it); whether it is."""
    global _heif_ready
    if _heif_ready is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_ready = True
        except ImportError:
            _heif_ready = False
    return _heif_ready


def require_heif_reader(head: bytes) -> None:
    """Raise InputError, naming what is missing, for a HEIF/HEIC image (by its first 12 bytes)
    when pillow-heif is not installed; make Pillow able to open it otherwise."""
    if is_heif(head) and not enable_heif():
        raise InputError(
            "this is a HEIF/HEIC photo, and reading it needs the pillow-heif package (make setup "
            "installs it; by hand: pip install pillow-heif), or export the photo as JPEG"
        )


# EXIF orientation -> the numpy steps that make the stored pixels upright (ImageOps.exif_transpose's
# transposes: 2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise, 7 transverse,
# 8 quarter turn anticlockwise)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _decode_jpeg(data: bytes | bytearray, im: Image.Image, orientation: int | None):
    """(H, W, 3) uint8 RGB, upright, of a colour JPEG given as bytes, decoded by OpenCV (about
    twice as fast as Pillow here, the same libjpeg-turbo pixels: tests/test_media.py), or None
    where Pillow should decode it: not a YCbCr/RGB JPEG, no end-of-image marker at the end (a cut
    file, which Pillow refuses and OpenCV would fill in), or OpenCV disagrees on the size."""
    if im.format != "JPEG" or im.mode != "RGB" or bytes(data[-2:]) != b"\xff\xd9":
        return None
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None or bgr.shape[:2] != (im.height, im.width):
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    turn = _UPRIGHT.get(orientation or 1)
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


def load_image(data: bytes | str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Decode an image (path or bytes) -> (H, W, 3) uint8 RGB and its EXIF 35 mm-equivalent focal
    length in mm (None when absent or implausible). EXIF orientation is applied. HEIF/HEIC photos
    need the pillow-heif package. Raises InputError."""
    rgb, f35, _ = load_image_within(data, None)
    return rgb, f35


def load_image_within(
    data: bytes | str | os.PathLike, pixel_budget: float | None
) -> tuple[np.ndarray, float | None, tuple[int, int]]:
    """`load_image`, decoded at a reduced size when the image has more than `pixel_budget`
    pixels (None: never): JPEGs through the decoder's DCT scaling (1/2, 1/4, 1/8: the full
    image never exists in memory), others decoded, then reduced by an integer factor (box
    filter). Returns (pixels, EXIF focal, (width, height) of the full upright image); the
    pixels span the same picture, so a point (u, v) in them is (u * width / their width,
    v * height / their height) in the full image."""
    if isinstance(data, (bytes, bytearray)):
        head = bytes(data[:12])
    else:
        try:
            with open(data, "rb") as fh:
                head = fh.read(12)
        except OSError as e:
            raise InputError(f"cannot read the image: {e}") from e
    require_heif_reader(head)
    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        with Image.open(src) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InputError(f"image too large ({im.width}x{im.height} pixels)")
            exif = im.getexif()
            f35 = exif_f35_mm(exif.get_ifd(0x8769).get(0xA405)) if exif else None
            stored_w, stored_h = im.size
            orientation = exif.get(0x0112) if exif else None
            turned = orientation in (5, 6, 7, 8)
            full_size = (stored_h, stored_w) if turned else (stored_w, stored_h)
            rgb = None
            if isinstance(data, (bytes, bytearray)) and (
                pixel_budget is None or im.width * im.height <= pixel_budget
            ):
                rgb = _decode_jpeg(data, im, orientation)
            if rgb is None:
                rgb = _decode_pillow(im, pixel_budget)
    except InputError:
        raise
    except Image.UnidentifiedImageError as e:  # its message holds the file object's repr
        raise InputError(NOT_AN_IMAGE) from e
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise InputError(f"cannot read the image: {e}") from e
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise InputError(f"image too small ({rgb.shape[1]}x{rgb.shape[0]}); need at least 8x8")
    return rgb, f35, full_size


def _decode_pillow(im: Image.Image, pixel_budget: float | None) -> np.ndarray:
    """`load_image_within`'s pixels decoded by Pillow (any format it reads), reduced to the
    pixel budget, upright, RGB."""
    if pixel_budget is not None and im.width * im.height > pixel_budget:
        factor = math.ceil(math.sqrt(im.width * im.height / pixel_budget))
        if im.format == "JPEG":  # DCT scaling: at least the size asked for
            im.draft(im.mode, (im.width // factor, im.height // factor))
        im.load()
        if im.width * im.height > pixel_budget:
            im = im.reduce(math.ceil(math.sqrt(im.width * im.height / pixel_budget)))
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit, 32-bit or float grey
        # values in [0, 1] (float images) as they are, larger ones by the brightest
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64)).clip(0, None)
        arr = (arr / max(arr.max(), 1) * 255).astype(np.uint8)
        im = Image.fromarray(arr)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def exif_f35_mm(value: object) -> float | None:
    """The EXIF FocalLengthIn35mmFilm tag as stored -> mm, or None. The standard says one SHORT;
    some writers store text, a rational or several values: one number (or text of one) within
    EXIF_F35_RANGE_MM counts, anything else is ignored like a missing tag."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            return None
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    try:
        f35 = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    lo, hi = EXIF_F35_RANGE_MM
    return f35 if lo <= f35 <= hi else None


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes (fast compression: the bytes go to a local client)."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=1)
    return out.getvalue()
