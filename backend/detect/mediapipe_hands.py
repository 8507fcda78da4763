"""MediaPipe Hands as a hand detector: boxes and sides for the HAMR network to reconstruct.

MediaPipe 0.10.21 is the last release whose wheel bundles its hand models (the palm detector and
the 21-landmark model, `mediapipe/modules/`), so it works offline. `make setup` installs it
without its declared dependencies (jax, jaxlib and opencv-contrib-python: the legacy hand
solution needs none of them, and opencv-contrib's cv2 would shadow opencv-python-headless's);
the small ones it does need are in pyproject's `detect` extra.

What is used from it: the landmarks' tight box (image pixels, clipped to the image) becomes the
hand box, the same convention as a user's `--box`, and its handedness label becomes the side.
MediaPipe labels handedness as if the photo were mirrored (a selfie camera), so for ordinary
photos its "Left" is a right hand: the label is swapped here. Its handedness score is the
detection's score. The network still does everything after the box: the crop, the 3D pose,
shape and camera.

Imports numpy; mediapipe only when a detector is first made (`available()` says whether it can).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import threading

import numpy as np

MIN_CONFIDENCE = 0.5  # palm detection and landmark presence thresholds
# longer side MediaPipe sees: larger photos are shrunk (area-averaged) first. MediaPipe resamples
# the whole photo to its palm detector's 192 px input without averaging, so on a phone-sized
# photo (a 1024-px photo that works, upscaled 3x) the aliased palm is not found at all. At 640
# rather than 1280, a 1024-px photo and the same photo at 3x and 6x are all seen at the same size,
# so MediaPipe gives them the same landmarks (wild_hamer/test3: within 0.3 % of the hand box,
# against 2.8 % at 6x with 1280); the annotated samples (all under 640 px) are not affected, and
# webcam photos pasted 2x into a 12 MP canvas were found as often (29 of 34 hands both ways)
MAX_SIDE = 640
TILE = 512  # pixels: the side each tile is looked at (`detect`)
TILE_MERGE_IOU = 0.3  # a hand found in two tiles is one hand
CLOSER_GROW = 2.0  # the closer view's side, in the hand box's longer side
# a hand whose box is smaller than this (pixels of the view MediaPipe saw) gets the closer view;
# on ../shared/samples it made MediaPipe's landmarks better for hands of 140 px and below
# (85-px FreiHAND hands: 0.125 -> 0.102 box sides), the same at 153 px and worse at 194 and
# 318 px (0.038 -> 0.039, 0.066 -> 0.069), and it costs a second MediaPipe pass
CLOSER_BELOW = 160.0
MODEL_COMPLEXITY = 1  # the bundled "full" landmark model
# a box smaller than this (pixels) is dropped: too small for the network's 256-px crop to help
MIN_BOX = 8.0

_lock = threading.Lock()
_solutions: dict[int, object] = {}  # max_hands -> mediapipe Hands, made once per process


def available() -> bool:
    """Whether the mediapipe package is installed (without importing it)."""
    try:
        return importlib.util.find_spec("mediapipe") is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _stderr_to_devnull():
    """Silence the C++ side's start-up warnings (TFLite delegate, feedback tensors, ROI
    projection), which it writes straight to file descriptor 2 before any logging is set up."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _solution(max_hands: int):
    """(MediaPipe Hands for at most max_hands, whether it has not run yet)."""
    if max_hands not in _solutions:
        with _stderr_to_devnull():
            from mediapipe.python.solutions import hands as mp_hands

            _solutions[max_hands] = mp_hands.Hands(
                static_image_mode=True,
                max_num_hands=max_hands,
                model_complexity=MODEL_COMPLEXITY,
                min_detection_confidence=MIN_CONFIDENCE,
                min_tracking_confidence=MIN_CONFIDENCE,
            )
        return _solutions[max_hands], True
    return _solutions[max_hands], False


def detect(
    image: np.ndarray, max_hands: int = 4, tiles: bool = True, closer: bool = True
) -> list[dict]:
    """(H, W, 3) uint8 RGB -> hands, best first: {"box_xyxy", "side", "score", "keypoints2d",
    "keypoints3d_world"}.

    side is "right" or "left" for the photo as it is (not mirrored); keypoints2d are MediaPipe's
    21 landmarks in image pixels, in the same joint order as the project's (wrist, then thumb,
    index, middle, ring, pinky, each from the base to the tip); keypoints3d_world are its world
    landmarks (21, 3): metres, roughly the camera's axes (x right, y down, z away from the
    camera), origin near the hand's centre (measured: tests/test_fusion.py).

    MediaPipe looks at the whole photo (shrunk to MAX_SIDE when larger). Its palm detector sees
    that at 192 px and misses hands it finds in a closer view: a hand found in a 1024-px photo
    was missed in the same photo at 2, 3, 4 and 6 times the size, and at most sizes between 480
    and 1280 px. Where the whole photo gives nothing and `tiles` is on, it looks again at square
    tiles of the photo's shorter side, overlapping by half, each at TILE px; hands found twice
    are merged (IoU > TILE_MERGE_IOU, the higher score kept). With `closer`, each hand found that
    is small in the view MediaPipe saw (its box under CLOSER_BELOW px there) is looked at once
    more in a square view CLOSER_GROW times its box, at TILE px: its landmarks then come from a
    view that the hand's own size sets, not the photo's, so a small hand in a large photo is
    seen at the landmark model's working size; a larger hand keeps the first pass's landmarks
    (a second pass costs as much as the first and did not make them better)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")

    hands = _detect_view(image, max_hands)
    if not hands and tiles:
        hands = _detect_tiles(image, max_hands)
    if closer:
        from backend.crop import box_side

        seen = min(1.0, MAX_SIDE / max(image.shape[:2]))  # MediaPipe's pixels per photo pixel
        hands = [
            _closer(image, hand) if box_side(hand["box_xyxy"]) * seen < CLOSER_BELOW else hand
            for hand in hands
        ]
    return hands


@contextlib.contextmanager
def video_session(max_hands: int = 2):
    """MediaPipe Hands in its video mode, for the frames of one clip in order: it follows each
    hand from the last frame's landmarks instead of searching every frame anew, so its landmarks
    shake less and a frame costs less (tools.eval_video, 6 clips of a still hand panned across
    webcam photos: the fused hands' jitter 0.49-0.83 px RMS from frame to frame, against
    0.52-1.71 px with a search per frame). Yields
    detect(frame) -> `detect`'s list for that frame (whole frame, no tiles or closer views).
    Its own graph, closed on exit; use it from one thread."""
    with _lock, _stderr_to_devnull():
        from mediapipe.python.solutions import hands as mp_hands

        graph = mp_hands.Hands(
            static_image_mode=False,
            max_num_hands=int(max_hands),
            model_complexity=MODEL_COMPLEXITY,
            min_detection_confidence=MIN_CONFIDENCE,
            min_tracking_confidence=MIN_CONFIDENCE,
        )
    try:
        yield lambda frame: _detect_view(frame, max_hands, graph)
    finally:
        graph.close()


def _view_pixels(image: np.ndarray, view: tuple[float, float, float]):
    """The square view (cx, cy, side) of the photo at TILE px, area-averaged when it shrinks
    (the same view of the photo and of the photo enlarged 3x then look alike, which a box
    filter of whole pixels then bilinear sampling did not give: 1.5 % of the hand box apart
    in MediaPipe's landmarks), black outside the photo. Its corner and side are whole photo
    pixels: returns (pixels, (x0, y0, side)) for mapping points back."""
    import cv2

    cx, cy, side = view
    s = max(1, round(side))
    x0, y0 = round(cx - s / 2), round(cy - s / 2)
    h, w = image.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    if (xa, ya, xb, yb) == (x0, y0, x0 + s, y0 + s):  # inside the photo (tiles): no copy
        square = image[ya:yb, xa:xb]
    else:  # padded with black; the view is at most twice a small hand's box
        square = np.zeros((s, s, 3), np.uint8)
        if xb > xa and yb > ya:
            square[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    interp = cv2.INTER_AREA if s > TILE else cv2.INTER_LINEAR
    return cv2.resize(square, (TILE, TILE), interpolation=interp), (x0, y0, s)


def _in_view(image: np.ndarray, view: tuple[float, float, float], max_hands: int) -> list[dict]:
    """`_detect_view` of the square view (cx, cy, side) of the photo, resampled to TILE px, its
    hands in the photo's pixels (boxes clipped to the photo)."""
    h, w = image.shape[:2]
    pixels, (vx, vy, side) = _view_pixels(image, view)
    found = []
    for hand in _detect_view(pixels, max_hands):
        pts = hand["keypoints2d"] * (side / TILE) + np.array([vx, vy])
        lo = np.clip(pts.min(0), 0, [w, h])
        hi = np.clip(pts.max(0), 0, [w, h])
        if (hi - lo).min() < MIN_BOX:
            continue
        box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        found.append({**hand, "box_xyxy": box, "keypoints2d": pts})
    return found


def _closer(image: np.ndarray, hand: dict) -> dict:
    """The hand as a view around its own box sees it (`detect`'s `closer`); as it is when that
    view finds no hand over it."""
    from backend.crop import iou

    x0, y0, x1, y1 = hand["box_xyxy"]
    view = ((x0 + x1) / 2, (y0 + y1) / 2, CLOSER_GROW * max(x1 - x0, y1 - y0))
    again = [d for d in _in_view(image, view, 2) if iou(d["box_xyxy"], hand["box_xyxy"]) > 0.5]
    if not again:
        return hand
    best = max(again, key=lambda d: iou(d["box_xyxy"], hand["box_xyxy"]))
    return {**best, "side": hand["side"], "score": hand["score"]}


def _detect_tiles(image: np.ndarray, max_hands: int) -> list[dict]:
    """`detect`'s tiles: square views of the shorter side, overlapping by half."""
    from backend.crop import iou

    h, w = image.shape[:2]
    side = float(min(h, w))
    count = max(1, math.ceil((max(h, w) - side) / (side / 2)) + 1)
    found: list[dict] = []
    for t in np.linspace(side / 2, max(h, w) - side / 2, count):
        centre = (t, h / 2) if w >= h else (w / 2, t)
        found += _in_view(image, (*centre, side), max_hands)
    merged: list[dict] = []
    for hand in sorted(found, key=lambda d: -d["score"]):
        if all(iou(hand["box_xyxy"], kept["box_xyxy"]) <= TILE_MERGE_IOU for kept in merged):
            merged.append(hand)
    return merged[:max_hands]


def _detect_view(image: np.ndarray, max_hands: int, session=None) -> list[dict]:
    """`detect` on one view of the photo: the whole of it, shrunk to MAX_SIDE when larger; by
    the process's static-image graph, or by a `video_session`'s own graph."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    full_h, full_w = image.shape[:2]
    ratio = np.ones(2)  # (x, y): MediaPipe's pixels per image pixel
    if max(full_h, full_w) > MAX_SIDE:
        import cv2

        f = MAX_SIDE / max(full_h, full_w)
        size = (max(1, round(full_w * f)), max(1, round(full_h * f)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ratio = np.array([size[0] / full_w, size[1] / full_h])
    h, w = image.shape[:2]
    # MediaPipe projects its landmarks correctly only for square inputs (it warns otherwise):
    # pad to a square at the bottom / right, which leaves pixel coordinates unchanged
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[:h, :w] = image
    if session is not None:
        result = session.process(square)
    else:
        with _lock:  # one static graph per process; it is not safe to call from two threads
            solution, first = _solution(int(max_hands))
            with _stderr_to_devnull() if first else contextlib.nullcontext():
                result = solution.process(square)
    hands = []
    world = result.multi_hand_world_landmarks or [None] * len(result.multi_hand_landmarks or [])
    for landmarks, handedness, world_landmarks in zip(
        result.multi_hand_landmarks or [], result.multi_handedness or [], world, strict=True
    ):
        # pixel coordinates of the (shrunk) image, origin at its top-left corner, back in the
        # photo's pixels: the corner maps to the corner, so dividing by the ratio is exact
        pts = np.array([[p.x * side, p.y * side] for p in landmarks.landmark], np.float64) / ratio
        lo = np.clip(pts.min(0), 0, [full_w, full_h])
        hi = np.clip(pts.max(0), 0, [full_w, full_h])
        if (hi - lo).min() < MIN_BOX:
            continue
        xyz = (
            np.array([[p.x, p.y, p.z] for p in world_landmarks.landmark], np.float64)
            if world_landmarks is not None
            else np.full((21, 3), np.nan)
        )
        label = handedness.classification[0]
        hands.append(
            {
                "box_xyxy": (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                "side": "right" if label.label == "Left" else "left",  # mirrored labels
                "score": float(label.score),
                "keypoints2d": pts,
                "keypoints3d_world": xyz,
            }
        )
    hands.sort(key=lambda d: -d["score"])
    return hands
