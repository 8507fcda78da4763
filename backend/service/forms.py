"""Request bodies -> validated options: multipart (or urlencoded) forms and JSON job requests,
checked with `backend.options` (422 `bad_option`) before any work starts; the image header
checked before anything is decoded.

Imports Starlette, PIL and the backend's options and media.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from backend.detect import mediapipe_hands
from backend.errors import InputError, OptionError
from backend.media.image import NOT_AN_IMAGE, load_image_within, require_heif_reader
from backend.options import check_detector, check_refine, check_side, parse_boxes, parse_focal

from .guard import ApiError

log = logging.getLogger("hamr.server")

PREDICT_FIELDS = frozenset({"image", "side", "box", "focal", "detector", "refine"})
JOB_FIELDS = frozenset({"video", "path", "side", "box", "focal", "smoothing", "detector", "refine"})


async def read_form(request: Request, allowed: frozenset[str]) -> FormData:
    """The multipart (or urlencoded) form of a request; unknown fields are a 422."""
    content_type = request.headers.get("content-type", "")
    if not content_type:
        if request.headers.get("content-length", "0") in ("", "0"):
            raise ApiError(400, "empty_body", "the request has no body; send multipart/form-data")
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(
            415, "unsupported_media_type", f"send multipart/form-data, not {content_type}"
        )
    try:
        form = await request.form(max_files=2, max_fields=32)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
    except (MultiPartException, StarletteHTTPException, ValueError) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
        raise ApiError(400, "bad_multipart", f"malformed form data: {detail}") from exc
    unknown = sorted(set(form.keys()) - allowed)
    if unknown:
        raise ApiError(
            422, "unknown_field", f"unknown field(s) {unknown}; allowed: {sorted(allowed)}"
        )
    return form


@asynccontextmanager
async def form_fields(
    request: Request, allowed: frozenset[str]
) -> AsyncIterator[dict[str, list[Any]]]:
    """{name: [values]} of a request's form (`read_form`); its spooled files are closed on exit."""
    form = await read_form(request, allowed)
    try:
        yield {name: form.getlist(name) for name in form.keys()}
    finally:
        await form.close()


def text_values(fields: Mapping[str, list[Any]], name: str) -> list[str]:
    values = fields.get(name, [])
    if any(isinstance(v, UploadFile) for v in values):
        raise OptionError(f"{name} must be a text field, not a file")
    return [str(v) for v in values]


def single_field(fields: Mapping[str, list[Any]], name: str) -> str | None:
    values = text_values(fields, name)
    if len(values) > 1:
        raise OptionError(f"give {name} once, got {len(values)} values")
    return values[0] if values else None


def json_fields(body: Any) -> dict[str, list[Any]]:
    """A JSON job request -> the {name: [values]} shape of a form: each field one string, number
    or boolean (as text); box as 'x0,y0,x1,y1' text, a list of four numbers, or a list of
    either. Anything else (objects, nested lists) is a 422 before it is looked at further."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the JSON body must be an object")
    fields: dict[str, list[Any]] = {}
    for name, value in body.items():
        if name == "box":
            items = value if isinstance(value, list) else [value]
            if items and all(_is_number(v) for v in items):
                items = [items]  # one box as a flat list of four numbers
            texts = []
            for item in items:
                if isinstance(item, str):
                    texts.append(item)
                elif isinstance(item, list) and all(_is_number(v) for v in item):
                    texts.append(",".join(map(str, item)))
                else:
                    raise OptionError(
                        "box must be 'x0,y0,x1,y1' text or a list of four numbers, or a list "
                        "of those"
                    )
            fields[name] = texts
        elif isinstance(value, (str, int, float)) or value is None:
            fields[name] = [value if isinstance(value, str) else json.dumps(value)]
        else:
            raise OptionError(f"{name} must be a string or a number, not a JSON {_kind(value)}")
    return fields


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "object" if isinstance(value, dict) else "array"


@dataclass(frozen=True)
class HandOptions:
    """Validated options shared by predict and jobs."""

    side: str
    boxes: list[tuple[float, float, float, float]]
    focal: float | None
    detector: str | None = None  # None: the server's --detector
    refine: bool | None = None  # None: the server's --refine


def parse_hand_options(fields: Mapping[str, list[Any]]) -> HandOptions:
    """side / box / focal / detector / refine fields -> HandOptions; raises OptionError (422)."""
    side = check_side(single_field(fields, "side") or "auto")
    return HandOptions(
        side,
        parse_boxes(text_values(fields, "box")),
        parse_focal(single_field(fields, "focal")),
        check_detector_option(single_field(fields, "detector")),
        check_refine_option(single_field(fields, "refine")),
    )


def check_refine_option(refine: str | None) -> bool | None:
    """A request's refine field: None (the server's own setting), "auto" (fit to MediaPipe's
    landmarks where it finds the hand) or "off"."""
    if not refine:
        return None
    return check_refine(refine) == "auto"


def check_detector_option(detector: str | None) -> str | None:
    """A request's detector field: None (the server's own setting) or one that can run here."""
    if not detector:
        return None
    check_detector(detector)
    if detector == "mediapipe" and not mediapipe_hands.available():
        raise OptionError("detector 'mediapipe' is not installed on this server")
    return detector


# photos with more pixels are predicted on a copy decoded at a reduced size (an integer factor;
# JPEGs by DCT scaling) and the results mapped back (app.predict_image): the decoded pixels and
# the network's crops then cost at most a 16 Mpx photo's memory (12 Mpx phone photos are read
# whole)
PREDICT_MAX_PIXELS = 16e6


def decode_image(data: bytes, max_pixels: float) -> tuple[Any, float | None]:
    """Image bytes -> ((H, W, 3) uint8 RGB, EXIF 35 mm focal or None); raises ApiError 400/413.
    The pixel count is checked from the header, before anything is decoded."""
    image, exif_f35, _ = decode_photo(data, max_pixels, None)
    return image, exif_f35


def decode_photo(
    data: bytes, max_pixels: float, pixel_budget: float | None
) -> tuple[Any, float | None, tuple[int, int]]:
    """`decode_image` at a reduced size above `pixel_budget` pixels (None: never), and the full
    upright image's (width, height) (`backend.media.image.load_image_within`)."""
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    try:
        require_heif_reader(data[:12])
    except InputError as exc:
        raise ApiError(400, "bad_image", str(exc)) from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", f"image too large: {exc}") from exc
    except Image.UnidentifiedImageError as exc:  # its message holds the file object's repr
        raise ApiError(400, "bad_image", NOT_AN_IMAGE) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(400, "bad_image", f"cannot read the image: {exc}") from exc
    except Exception as exc:  # a decoder's own failure on hostile bytes is still a bad image
        log.info("image header: %r", exc)
        raise ApiError(400, "bad_image", "cannot read the image") from exc
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image too large ({width}x{height} pixels); the limit is {max_pixels:.0f} pixels",
        )
    try:
        return load_image_within(data, pixel_budget)
    except InputError as exc:
        raise ApiError(400, "bad_image", str(exc)) from exc
    except MemoryError as exc:
        raise ApiError(413, "too_many_pixels", "the image is too large to decode") from exc
    except Exception as exc:
        log.info("image decode: %r", exc)
        raise ApiError(400, "bad_image", "cannot read the image") from exc
