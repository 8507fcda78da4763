"""Pixels -> hand requests: where the hands in a photo are, which side each is, and MediaPipe's
landmarks for each where it has them.

`detect_hands` picks the detector (`options.DETECTORS`):
- "mediapipe": MediaPipe Hands (`mediapipe_hands`), when the package is installed;
- "hamr": the network itself (`network.find_hands`);
- "auto" (the default): MediaPipe when it is installed and finds a hand, else the network.
`with_mediapipe` gives requests whose boxes came from elsewhere (the user, a tracker) the
landmarks and handedness of the MediaPipe hand over each.

Imports numpy, torch and the backend's crop geometry, network and options; never a pipeline.
"""

from __future__ import annotations

import numpy as np

from backend.crop import iou
from backend.errors import OptionError
from backend.network.runner import HandNetwork
from backend.options import HandRequest, check_detector

from . import mediapipe_hands
from .network import find_hands

LANDMARK_MATCH_IOU = 0.3  # a MediaPipe hand gives its landmarks to a box it overlaps this much

__all__ = ["detect_hands", "find_hands", "mediapipe_hands", "resolve_detector", "with_mediapipe"]


def detect_hands(
    network: HandNetwork,
    image: np.ndarray,
    side: str = "auto",
    max_hands: int = 4,
    detector: str | None = None,
    views: bool = True,
    cancel=None,
) -> tuple[list, str]:
    """(HandRequests for the hands found, best first; the detector that found them).

    detector: one of DETECTORS; None means the network's own setting (`Predictor.detector`).
    side: "auto" takes each hand's side from the detector; "right" / "left" forces it. views:
    let MediaPipe look again at tiles and closer views (`mediapipe_hands.detect`; a photo's
    default), or the whole image only (video frames). cancel: a threading.Event that stops the
    network's search (`errors.Cancelled`).
    Raises InputError for an unknown detector, or "mediapipe" when it is not installed."""
    asked = check_detector(detector or getattr(network, "detector", "auto"))
    if resolve_detector(network, asked) == "mediapipe":
        found = mediapipe_hands.detect(image, max_hands, tiles=views, closer=views)
        if found or asked == "mediapipe":
            hands = [
                HandRequest(
                    d["box_xyxy"],
                    d["side"] if side == "auto" else side,
                    d["score"],
                    landmarks=d["keypoints2d"],
                    world=d["keypoints3d_world"],
                )
                for d in found
            ]
            return hands, "mediapipe"
    elif asked == "mediapipe":
        raise OptionError(
            "detector 'mediapipe' needs the mediapipe package (make setup installs it; by hand: "
            "pip install --no-deps mediapipe==0.10.21 and the 'detect' extra)"
        )
    return find_hands(network, image, side, max_hands, cancel=cancel), "hamr"


def resolve_detector(network, detector: str | None = None) -> str:
    """The detector `detect_hands` tries first: "mediapipe" or "hamr" (None: the network's)."""
    detector = check_detector(detector or getattr(network, "detector", "auto"))
    if detector == "hamr" or not mediapipe_hands.available():
        return "hamr"
    return "mediapipe"


def with_mediapipe(
    image: np.ndarray, hands: list[HandRequest], found: list[dict] | None = None, views=True
) -> list[HandRequest]:
    """The requests, each given MediaPipe's landmarks (and, where its side is "auto", MediaPipe's
    handedness) from the MediaPipe hand that best overlaps its box (IoU > LANDMARK_MATCH_IOU).
    MediaPipe runs once on the whole image, and only for requests without landmarks, unless its
    hands in this image are given as `found` (`mediapipe_hands.detect`'s list); a request it
    does not match is returned as it is (so are all, when MediaPipe is not installed). views: as
    `detect_hands`'."""
    if all(h.landmarks is not None for h in hands):
        return list(hands)
    if found is None:
        if not mediapipe_hands.available():
            return list(hands)
        found = mediapipe_hands.detect(image, max(2, len(hands)), tiles=views, closer=views)
    used: set[int] = set()
    out = []
    for req in hands:
        overlaps = [(iou(req.box_xyxy, d["box_xyxy"]), k) for k, d in enumerate(found)]
        best = max((o for o in overlaps if o[1] not in used), default=(0.0, -1))
        if req.landmarks is None and best[0] > LANDMARK_MATCH_IOU:
            used.add(best[1])
            det = found[best[1]]
            side = det["side"] if req.side == "auto" else req.side
            req = HandRequest(
                req.box_xyxy, side, req.score, det["keypoints2d"], det["keypoints3d_world"]
            )
        out.append(req)
    return out
