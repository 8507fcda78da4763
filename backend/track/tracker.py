"""Following hands from frame to frame: which box each hand's crop takes in the next frame, which
detection continues which track, when a track is lost.

`HandTracker` is the per-frame state machine of the video pipeline (`backend.pipeline.video`,
steps 1-2 of its docstring): tracks take their detections by box overlap (IoU > MATCH_IOU, same
side), so a re-found hand keeps its id; where MediaPipe's landmarks cover a track's hand, its
next box is their tight box grown by TRACK_MARGIN; where only the network saw it, the box moves
with the image's motion (`motion.median_flow`) or, where that cannot be measured, towards the
network's keypoints by bounded steps (`follow_box`). Imports numpy, OpenCV (through `motion`)
and the backend's crop geometry, options and schema; never a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.crop import box_side, iou
from backend.options import HandRequest
from backend.schema import Hand

from .motion import median_flow

TRACK_MARGIN = 0.1  # keypoint box growth on each side, fraction of its longer side (training's)
MIN_BOX_SIDE = 16.0  # pixels: a tracked box is at least this wide and tall
MATCH_IOU = 0.3  # a detection continues a track when their boxes overlap more than this
DUPLICATE_IOU = 0.5  # two tracks overlapping more than this follow one hand: keep the better
# a track that only the network's keypoints place (no MediaPipe landmarks): `follow_box` bounds
MAX_STEP_SCALE = 1.1  # its box side changes at most this factor from one frame to the next
ANCHOR_RANGE = 1.25  # and stays within this factor of the last detected (or landmark) box side
MAX_STEP_SHIFT = 0.25  # its centre moves at most this fraction of the box side per frame
# how such a track's next box is placed: "motion" (the image's motion, `follow_box` where it
# cannot be measured), "bounded" (`follow_box` alone) or "keypoints" (the network's keypoints'
# box, unbounded); the last two only to measure the first against (tools.eval_tracking)
PLACEMENTS = ("motion", "bounded", "keypoints")


@dataclass
class Track:
    """One hand followed through the clip."""

    id: int
    side: str  # "right" / "left"; "auto" only until its first prediction
    box_xyxy: tuple[float, float, float, float]
    low_frames: int = 0  # consecutive frames with a score below min_score
    anchor_side: float = 0.0  # side of the last box a detector or landmarks gave (follow_box)
    # the box of the frame just predicted, while only the network's keypoints placed the hand
    # there: `HandTracker.move` carries it into the next frame by the image's motion
    moving_box: tuple[float, float, float, float] | None = None
    velocity: tuple[float, float] | None = None  # the box centre's last shift per frame, pixels
    landmark_box: tuple[float, float, float, float] | None = None  # last frame's, if it had them

    def __post_init__(self) -> None:
        self.anchor_side = self.anchor_side or box_side(self.box_xyxy)


def keypoint_box(
    keypoints2d: np.ndarray, width: int, height: int
) -> tuple[float, float, float, float]:
    """(21, 2) pixels -> the tracked box: tight keypoint box grown by TRACK_MARGIN of its longer
    side on every side, at least MIN_BOX_SIDE, clipped to the image."""
    centre, half = _grown_box(np.asarray(keypoints2d, dtype=np.float64))
    return _clipped(centre, half, width, height)


def _grown_box(keypoints2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`keypoint_box` before clipping: (centre (2,), half sides (2,))."""
    lo, hi = keypoints2d.min(0), keypoints2d.max(0)
    half = np.maximum((hi - lo) / 2 + TRACK_MARGIN * (hi - lo).max(), MIN_BOX_SIDE / 2)
    return (lo + hi) / 2, half


def _clipped(centre, half, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0 = np.maximum(centre - half, 0.0)
    x1, y1 = np.minimum(centre + half, (width, height))
    return float(x0), float(y0), float(x1), float(y1)


def follow_box(
    previous: tuple[float, float, float, float],
    anchor_side: float,
    keypoints2d: np.ndarray,
    width: int,
    height: int,
) -> tuple[float, float, float, float]:
    """The next box of a track that only the network's keypoints place (no MediaPipe landmarks):
    `keypoint_box` of them, held back so that a poor prediction cannot run away with the crop.
    Its longer side changes by at most MAX_STEP_SCALE per frame and stays within ANCHOR_RANGE
    of `anchor_side` (the side of the track's last box that a detector or landmarks gave), and
    its centre moves at most MAX_STEP_SHIFT of the previous box's side; clipped to the image."""
    centre, half = _grown_box(np.asarray(keypoints2d, dtype=np.float64))
    x0, y0, x1, y1 = (float(v) for v in previous)
    prev_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    prev_side = max(x1 - x0, y1 - y0, MIN_BOX_SIDE)
    side = 2 * float(half.max())
    lo = max(prev_side / MAX_STEP_SCALE, anchor_side / ANCHOR_RANGE, MIN_BOX_SIDE)
    hi = min(prev_side * MAX_STEP_SCALE, anchor_side * ANCHOR_RANGE)
    target = float(np.clip(side, lo, max(lo, hi)))
    half = np.maximum(half * (target / side), MIN_BOX_SIDE / 2)
    step = centre - prev_centre
    reach = MAX_STEP_SHIFT * prev_side
    if (length := float(np.linalg.norm(step))) > reach:
        step *= reach / length
    return _clipped(prev_centre + step, half, width, height)


def match_detections(
    tracks: list[Track], detections: list[HandRequest]
) -> tuple[dict[int, HandRequest], list[HandRequest]]:
    """Greedy matching by IoU (best pairs first, same side or an undecided one, IoU > MATCH_IOU).
    Returns ({track id: its detection}, unmatched detections)."""
    pairs = sorted(
        (
            (iou(t.box_xyxy, d.box_xyxy), ti, di)
            for ti, t in enumerate(tracks)
            for di, d in enumerate(detections)
            if "auto" in (t.side, d.side) or t.side == d.side
        ),
        reverse=True,
    )
    matched: dict[int, HandRequest] = {}
    used: set[int] = set()
    for overlap, ti, di in pairs:
        if overlap <= MATCH_IOU:
            break
        if tracks[ti].id in matched or di in used:
            continue
        matched[tracks[ti].id] = detections[di]
        used.add(di)
    return matched, [d for i, d in enumerate(detections) if i not in used]


class HandTracker:
    """The per-frame tracking state machine of `process_video` (steps 1-2 of the module doc)."""

    def __init__(
        self,
        max_hands: int,
        min_score: float,
        patience: int,
        redetect_every: int,
        placement: str = "motion",
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.max_hands = max_hands
        self.min_score = min_score
        self.patience = patience
        self.redetect_every = redetect_every
        self.tracks: list[Track] = []  # tracks followed into the next frame
        self.lost: list[Track] = []  # tracks lost since the last detection
        self.next_id = 0
        self.frames_since_detection = redetect_every  # so the first frame runs detection

    def needs_detection(self) -> bool:
        return bool(self.lost) or (
            not self.tracks and self.frames_since_detection >= self.redetect_every
        )

    def add_detections(self, detections: list[HandRequest]) -> None:
        """Merge a frame's detections: matched tracks (lost ones included) take the detected box,
        unmatched detections start tracks while there is room; unmatched lost tracks end."""
        candidates = self.tracks + self.lost
        matched, new = match_detections(candidates, detections)
        kept = []
        for track in candidates:
            det = matched.get(track.id)
            if det is not None:
                track.box_xyxy = tuple(float(v) for v in det.box_xyxy)
                track.anchor_side = box_side(track.box_xyxy)
                track.low_frames = 0
                kept.append(track)
            elif track in self.tracks:
                kept.append(track)
        for det in new:
            if len(kept) >= self.max_hands:
                break
            kept.append(Track(self.next_id, det.side, tuple(float(v) for v in det.box_xyxy)))
            self.next_id += 1
        self.tracks, self.lost = sorted(kept, key=lambda t: t.id), []
        self.frames_since_detection = 0

    def requests(self) -> list[HandRequest]:
        return [HandRequest(t.box_xyxy, t.side) for t in self.tracks]

    def update(self, hands: list[Hand], width: int, height: int) -> list[Hand]:
        """Take the predictions of `requests()` (same order), tag them with track ids, move the
        boxes, drop duplicates and mark lost tracks. Returns the frame's hands."""
        self.frames_since_detection += 1
        for track, hand in zip(self.tracks, hands, strict=True):
            hand.track = track.id
            track.side = hand.side
            # MediaPipe's landmarks, where the hand has them, place the next crop better than the
            # network's keypoints (they keep a track on its hand through frames MediaPipe misses);
            # the network's alone move the box only within follow_box's bounds
            landmarks = hand.landmarks
            if landmarks is not None:
                box = keypoint_box(np.asarray(landmarks), width, height)
                if track.landmark_box is not None:  # two frames in a row: the hand's shift
                    track.velocity = _centre_shift(track.landmark_box, box)
                track.box_xyxy, track.anchor_side = box, box_side(box)
                track.landmark_box, track.moving_box = box, None
            elif self.placement == "keypoints":  # the network's keypoints, unbounded
                keypoints = np.asarray(hand.keypoints2d)
                track.box_xyxy = keypoint_box(keypoints, width, height)
            else:
                track.landmark_box = None
                keypoints = np.asarray(hand.keypoints2d)
                track.moving_box = track.box_xyxy if self.placement == "motion" else None
                track.box_xyxy = follow_box(
                    track.box_xyxy, track.anchor_side, keypoints, width, height
                )
            track.low_frames = track.low_frames + 1 if hand.score < self.min_score else 0
        keep = list(range(len(hands)))
        for i in range(len(hands)):
            for j in range(i + 1, len(hands)):
                if i in keep and j in keep:
                    if iou(self.tracks[i].box_xyxy, self.tracks[j].box_xyxy) > DUPLICATE_IOU:
                        keep.remove(j if hands[j].score <= hands[i].score else i)
        lost = [t for i, t in enumerate(self.tracks) if i in keep and t.low_frames >= self.patience]
        self.lost += lost
        self.tracks = [t for i, t in enumerate(self.tracks) if i in keep and t not in lost]
        return [hands[i] for i in keep]

    def needs_motion(self) -> bool:
        """Whether `move` has a track to move (one only the network placed last frame)."""
        return any(t.moving_box is not None for t in self.tracks)

    def move(self, previous_gray: np.ndarray, gray: np.ndarray) -> None:
        """Before a frame's detection: each track that only the network placed in the previous
        frame takes that frame's box moved by the image motion (`motion.median_flow`) instead
        of `follow_box`'s, where the motion can be measured."""
        for track in self.tracks:
            if track.moving_box is not None:
                moved = median_flow(previous_gray, gray, track.moving_box, track.velocity)
                if moved is not None:
                    track.box_xyxy = moved
                    track.velocity = _centre_shift(track.moving_box, moved)
                else:
                    track.velocity = None
                track.moving_box = None


def _centre_shift(box_a, box_b) -> tuple[float, float]:
    """How far the centre of box_b lies from box_a's, pixels (dx, dy)."""
    return (
        (box_b[0] + box_b[2] - box_a[0] - box_a[2]) / 2,
        (box_b[1] + box_b[3] - box_a[1] - box_a[3]) / 2,
    )


def mediapipe_detections(found: list[dict], side: str, tracker: HandTracker) -> list[HandRequest]:
    """MediaPipe's hands in one frame (`mediapipe_hands.detect`'s list) as detections for
    `tracker`. A detection over a track (IoU > MATCH_IOU) takes that track's side, so a flicker
    of MediaPipe's handedness label never splits one hand into two tracks."""
    detections = []
    for d in found:
        det_side = d["side"] if side == "auto" else side
        overlaps = [(iou(t.box_xyxy, d["box_xyxy"]), t) for t in tracker.tracks + tracker.lost]
        best = max(overlaps, key=lambda p: p[0], default=(0.0, None))
        if best[0] > MATCH_IOU and best[1].side != "auto":
            det_side = best[1].side
        detections.append(HandRequest(d["box_xyxy"], det_side, d["score"]))
    return detections
