"""One photo through the service: decode (a photo over PREDICT_MAX_PIXELS at a reduced size),
check the boxes, predict under the model lock (stopping when the client leaves), put a reduced
photo's results back in the full photo's pixels, and refuse a result JSON cannot carry.

Imports the backend's camera, options and photo pipeline, and the service's forms and guard.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from backend.camera import default_focal, intrinsics, project_points
from backend.errors import Cancelled
from backend.media.image import encode_png
from backend.options import HandRequest, check_box
from backend.pipeline.photo import Predictor

from .forms import (
    PREDICT_MAX_PIXELS,
    HandOptions,
    decode_image,
    decode_photo,
)
from .guard import ApiError
from .storage import all_finite


def predict_image(
    predictor: Predictor,
    lock: threading.Lock,
    data: bytes,
    options: HandOptions,
    max_pixels: float,
    cancelled: threading.Event | None = None,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """decode -> check boxes -> predict (blocking: run it in the inference worker). A photo over
    PREDICT_MAX_PIXELS is decoded at a reduced size and predicted there with the focal length
    scaled to it; the result is then put back in the full photo's pixels (`to_full_image`).
    Raises ApiError 400 `client_disconnected` when `cancelled` is set before the work starts or
    while it runs (checked between hands and between batches of the network detector's crops),
    422 `non_finite` for a result out of float range. timing: given, it gets the milliseconds
    spent decoding (`decode`) and predicting (`predict`), for the Server-Timing header."""
    started = time.perf_counter()
    image, exif_f35, (full_w, full_h) = decode_photo(data, max_pixels, PREDICT_MAX_PIXELS)
    decoded = time.perf_counter()
    for box in options.boxes:
        check_box(box, full_w, full_h)
    height, width = image.shape[:2]
    sx, sy = width / full_w, height / full_h
    reduced = (width, height) != (full_w, full_h)
    focal = options.focal
    full_focal = focal or default_focal(full_w, full_h, exif_f35)
    boxes = options.boxes
    if reduced:  # the reduced photo's own pixels and focal length, the latter given as the
        # 35 mm equivalent that makes it (default_focal: f35 / 36 * longer side), since a focal in
        # pixels is checked against the limits of full-size photos
        focal, exif_f35 = None, full_focal * sx * 36.0 / max(width, height)
        boxes = [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]
    hands = [HandRequest(box, options.side) for box in boxes] or None
    with lock:
        if cancelled is not None and cancelled.is_set():
            raise ApiError(400, "client_disconnected", "the client went away; nothing was done")
        try:
            predicting = time.perf_counter()
            result = predictor.predict(
                image,
                hands,
                focal=focal,
                exif_f35_mm=exif_f35,
                side=options.side,
                detector=options.detector,
                refine=options.refine,
                cancel=cancelled,
            )
        except Cancelled:  # the client left while its hands were being predicted
            msg = "the client went away; the work stopped"
            raise ApiError(400, "client_disconnected", msg) from None
        predicted = time.perf_counter()
    if timing is not None:
        timing["decode"] = (decoded - started) * 1e3
        timing["predict"] = (predicted - predicting) * 1e3
    if reduced:
        result = to_full_image(result, full_w, full_h, full_focal, sx, sy, options.boxes)
    if not all_finite(result):
        raise ApiError(
            422,
            "non_finite",
            "the result has numbers out of range (NaN or infinite); check the focal length "
            "and the boxes",
        )
    return result


def to_full_image(
    result: dict[str, Any],
    width: int,
    height: int,
    focal: float,
    sx: float,
    sy: float,
    boxes: list[tuple[float, float, float, float]],
) -> dict[str, Any]:
    """A prediction made on a reduced copy of a photo (its pixels sx, sy of the full one's, its
    focal length focal * sx) -> the same hands in the full width x height photo: boxes and crops
    scaled back (given boxes as given), K of the full photo, keypoints2d the projection of
    joints3d_cam with it (3D is the same: the reduced camera sees the same rays), fit residuals
    in full pixels."""
    K = intrinsics(width, height, focal)
    result["image"] = {"width": width, "height": height}
    for i, hand in enumerate(result["hands"]):
        if boxes:
            hand["box_xyxy"] = [round(float(v), 2) for v in boxes[i]]
        else:
            hand["box_xyxy"] = _scaled_box(hand["box_xyxy"], sx, sy)
        if hand.get("crop_xyxy"):
            hand["crop_xyxy"] = _scaled_box(hand["crop_xyxy"], sx, sy)
        hand["camera"] = {"K": K.tolist()}
        joints = np.asarray(hand["joints3d_cam"], dtype=np.float64)
        hand["keypoints2d"] = project_points(joints, K).tolist()
        fit = hand.get("fit")
        if isinstance(fit, dict):
            for key in [k for k in fit if k.startswith("rms_px")]:
                fit[key] = round(float(fit[key]) / sx, 2)
    return result


def encode_upright_png(data: bytes, max_pixels: float) -> bytes:
    """Image bytes -> PNG bytes of the image `decode_image` gives (blocking)."""
    image, _ = decode_image(data, max_pixels)
    return encode_png(image)


def _scaled_box(box: list[float], sx: float, sy: float) -> list[float]:
    """A box in a reduced photo's pixels -> the full photo's (rounded as the pipeline rounds)."""
    x0, y0, x1, y1 = box
    return [round(x0 / sx, 2), round(y0 / sy, 2), round(x1 / sx, 2), round(y1 / sy, 2)]
