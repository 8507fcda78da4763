"""Every user option's parsing and checks, in one place: the CLI and the HTTP forms validate with
these at the edge, and the pipelines re-check nothing else.

Sides, detectors and refine modes; boxes ('X0,Y0,X1,Y1', several joined by ';'), focal length,
smoothing strength; and `HandRequest`, one hand to predict. Every check raises
`errors.OptionError` (the CLI prints it, the HTTP service answers 422). Imports nothing
heavy, so the CLI can import it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.errors import OptionError

if TYPE_CHECKING:
    import numpy as np

SIDES = ("auto", "right", "left")
DETECTORS = ("auto", "mediapipe", "hamr")
REFINE_MODES = ("auto", "off")  # auto: fit each hand to MediaPipe's landmarks where it has them
DEFAULT_SMOOTHING = 0.5
MAX_BOXES = 8  # hand boxes per request (a photo or a clip's first frame); detection finds <= 4
MAX_COORD = 1e6  # |box coordinate| in pixels: 25x the largest side the server decodes
MAX_BOX_TEXT = 4096  # characters of one box option (several boxes joined by ';')
# focal length in pixels: 1 px is a 180-degree-wide view of a 2-pixel image, 1e7 px a 0.02 degree
# view of a 40 Mpx one; outside, the camera fit's numbers leave float range (NaN/inf in the JSON)
MIN_FOCAL, MAX_FOCAL = 1.0, 1e7

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), image pixels


@dataclass
class HandRequest:
    """One hand to predict: its box (image pixels) and side ('right', 'left' or 'auto')."""

    box_xyxy: Box
    side: str = "auto"
    score: float = 1.0  # detector confidence when the box came from detection
    landmarks: np.ndarray | None = None  # (21, 2) image pixels, when the detector gave them
    world: np.ndarray | None = None  # (21, 3) MediaPipe's world landmarks (metres), with them


def parse_box(text: str) -> Box:
    """'X0,Y0,X1,Y1' (image pixels) -> (x0, y0, x1, y1); each |coordinate| <= MAX_COORD."""
    if len(text) > MAX_BOX_TEXT:
        raise OptionError(f"box must be four numbers X0,Y0,X1,Y1, got {len(text)} characters")
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise OptionError(f"box must be four numbers X0,Y0,X1,Y1, got {text!r}")
    if any(abs(v) > MAX_COORD for v in values):
        raise OptionError(f"box {text!r}: coordinates must lie within +-{MAX_COORD:.0f} pixels")
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise OptionError(f"box {text!r} is empty: need X1 > X0 and Y1 > Y0")
    return values


def parse_boxes(values: list[str] | None) -> list[Box]:
    """Repeated box options, each 'X0,Y0,X1,Y1' or several joined by ';' -> boxes (at most
    MAX_BOXES, counted before any is parsed, so a request with thousands is refused at once)."""
    parts = [part for v in values or [] for part in v.split(";") if part.strip()]
    if len(parts) > MAX_BOXES:
        raise OptionError(f"at most {MAX_BOXES} boxes per request, got {len(parts)}")
    return [parse_box(part) for part in parts]


def check_box(box, width: int, height: int) -> None:
    """Raise unless `box` (x0, y0, x1, y1) is finite, non-empty, overlaps the width x height
    image and is no wider or taller than 4 times the image's larger side (a hand box that large
    is no hand's, and its crop would cost as much memory as a photo 16 times the size)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise OptionError(f"box {list(box)} is not four finite numbers")
    if not (x1 > x0 and y1 > y0) or x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise OptionError(f"box {list(box)} is empty or outside the {width}x{height} image")
    if max(x1 - x0, y1 - y0) > 4 * max(width, height):
        raise OptionError(
            f"box {list(box)} is more than 4 times the {width}x{height} image's larger side"
        )


def check_side(side: str) -> str:
    if side not in SIDES:
        raise OptionError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    return side


def check_detector(detector: str) -> str:
    if detector not in DETECTORS:
        raise OptionError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    return detector


def check_refine(refine: str) -> str:
    if refine not in REFINE_MODES:
        raise OptionError(f"refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
    return refine


def _number(value: str | float, problem: str) -> float:
    """float(value), else OptionError(problem)."""
    try:
        return float(value)
    except (ValueError, TypeError, OverflowError):
        raise OptionError(problem) from None


def parse_focal(value: str | float | None) -> float | None:
    """Focal length in pixels (positive, finite, within [MIN_FOCAL, MAX_FOCAL]) or None."""
    if value is None or value == "":
        return None
    focal = _number(value, f"focal must be a number of pixels, got {value!r}")
    if not (math.isfinite(focal) and focal > 0):
        raise OptionError(f"focal must be a positive number of pixels, got {value!r}")
    if not MIN_FOCAL <= focal <= MAX_FOCAL:
        raise OptionError(
            f"focal must be between {MIN_FOCAL:g} and {MAX_FOCAL:g} pixels, got {value!r}"
        )
    return focal


def parse_smoothing(value: str | float | None) -> float:
    """Smoothing strength in [0, 1] (DEFAULT_SMOOTHING when None)."""
    if value is None or value == "":
        return DEFAULT_SMOOTHING
    strength = _number(value, f"smoothing must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= strength <= 1.0:
        raise OptionError(f"smoothing must be between 0 and 1, got {value!r}")
    return strength
