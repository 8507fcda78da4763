"""A photo's EXIF orientation, and its pixels turned upright; which photos Blender cannot read.
Pure Python and numpy (no bpy).

Phones store many photos sideways and record in EXIF (tag 0x0112, Orientation) how to turn them
for display. The backend decodes a photo with Pillow's `ImageOps.exif_transpose`, so its
prediction is for the upright photo, but Blender loads the stored pixels as they are. The camera
background must be the upright photo, or the hands would not overlay it.

`exif_orientation(data)` reads the tag from JPEG (APP1), PNG (eXIf), WebP (EXIF chunk) and TIFF
files; `upright(pixels, orientation)` applies it to top-down (H, W, C) pixels as
`exif_transpose` does. `is_heif(data)` tells a HEIF/HEIC photo (what phones save by default),
which Blender cannot read at all: the extension shows the backend's decoding of it instead.
"""

from __future__ import annotations

import struct

import numpy as np

ORIENTATION_TAG = 0x0112
# values 5 to 8 swap the width and the height
SWAPS_SIDES = frozenset({5, 6, 7, 8})


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation entry of IFD0 of a TIFF structure (the body of an EXIF block); 1 when
    absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    if struct.unpack(end + "H", tiff[2:4])[0] != 42:
        return 1
    ifd = struct.unpack(end + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(end + "H", tiff[ifd : ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind, n = struct.unpack(end + "HHI", tiff[entry : entry + 8])
        if tag == ORIENTATION_TAG and kind == 3 and n >= 1:  # SHORT, in the entry itself
            value = struct.unpack(end + "H", tiff[entry + 8 : entry + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_orientation(data: bytes) -> int:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this
            return 1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            return _tiff_orientation(body[6:])
        pos += 2 + length
    return 1


def _png_orientation(data: bytes) -> int:
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"eXIf":
            return _tiff_orientation(data[pos + 8 : pos + 8 + length])
        if kind in (b"IDAT", b"IEND"):
            return 1
        pos += 12 + length
    return 1


def _webp_orientation(data: bytes) -> int:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        if kind == b"EXIF":
            body = data[pos + 8 : pos + 8 + length]
            if body[:6] == b"Exif\x00\x00":  # some writers keep JPEG's prefix
                body = body[6:]
            return _tiff_orientation(body)
        pos += 8 + length + (length & 1)
    return 1


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1 to 8) of an encoded image; 1 (as stored) when the file has none,
    is of another format, or cannot be read."""
    try:
        if data[:2] == b"\xff\xd8":
            return _jpeg_orientation(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_orientation(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_orientation(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_orientation(data)
    except struct.error:
        pass
    return 1


# ISO base media "ftyp" brands of HEIF still images (the backend's list, backend.media.image)
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc", b"hevx"})


def is_heif(data: bytes) -> bool:
    """Whether encoded bytes (their first 12 are enough) are a HEIF/HEIC image."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def still_image_format(data: bytes) -> str | None:
    """The still-image format that encoded bytes (their first 12 are enough) start with, by its
    signature: "JPEG", "PNG", "GIF", "BMP", "WebP", "TIFF", "HEIF"; None for anything else (a
    movie, for one: an MP4 or MOV is an "ftyp" box too, but with a movie brand)."""
    signatures = (
        (b"\xff\xd8\xff", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
    )
    for magic, name in signatures:
        if data.startswith(magic):
            return name
    if data[:2] == b"BM" and len(data) >= 14:
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return "HEIF" if is_heif(data) else None


def file_head(path: str, size: int = 64) -> bytes:
    """The first `size` bytes of a file; b"" when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def file_orientation(path: str) -> int:
    """`exif_orientation` of a file; 1 when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return exif_orientation(fh.read())
    except OSError:
        return 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Top-down pixels (H, W, ...) as stored -> as displayed under `orientation`, the way
    Pillow's `ImageOps.exif_transpose` turns them (2 mirror, 3 half turn, 4 flip, 5 transpose,
    6 quarter turn clockwise, 7 transverse, 8 quarter turn counter-clockwise)."""
    a = np.asarray(pixels)
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(a, 1)
    return a
