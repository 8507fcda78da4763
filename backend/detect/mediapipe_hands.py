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
import os
import sys
import threading

import numpy as np

MIN_CONFIDENCE = 0.5  # palm detection and landmark presence thresholds
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


def detect(image: np.ndarray, max_hands: int = 4) -> list[dict]:
    """(H, W, 3) uint8 RGB -> hands, best first: {"box_xyxy", "side", "score", "keypoints2d"}.

    side is "right" or "left" for the photo as it is (not mirrored); keypoints2d are MediaPipe's
    21 landmarks in image pixels, in the same joint order as the project's (wrist, then thumb,
    index, middle, ring, pinky, each from the base to the tip)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    # MediaPipe projects its landmarks correctly only for square inputs (it warns otherwise):
    # pad to a square at the bottom / right, which leaves pixel coordinates unchanged
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[:h, :w] = image
    with _lock:  # one MediaPipe graph per process; it is not safe to call from two threads
        solution, first = _solution(int(max_hands))
        with _stderr_to_devnull() if first else contextlib.nullcontext():
            result = solution.process(square)
    hands = []
    for landmarks, handedness in zip(
        result.multi_hand_landmarks or [], result.multi_handedness or [], strict=True
    ):
        pts = np.array([[p.x * side, p.y * side] for p in landmarks.landmark], np.float64)
        lo = np.clip(pts.min(0), 0, [w, h])
        hi = np.clip(pts.max(0), 0, [w, h])
        if (hi - lo).min() < MIN_BOX:
            continue
        label = handedness.classification[0]
        hands.append(
            {
                "box_xyxy": (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                "side": "right" if label.label == "Left" else "left",  # mirrored labels
                "score": float(label.score),
                "keypoints2d": pts,
            }
        )
    hands.sort(key=lambda d: -d["score"])
    return hands
