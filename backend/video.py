"""From a video to tracked, smoothed hands: `hamr.video/1` (DESIGN.md "Prediction JSON").

`process_video` reads the clip with OpenCV (fps from the file) and, frame by frame:

1. detection, on the first frame (the user's boxes there when given, else `detect.detect_hands`),
   whenever a track was lost, and every `redetect_every` frames while no hand is tracked; when
   the detector is MediaPipe (and no boxes were given), on every frame;
   detections are matched to the tracks by box overlap (IoU > MATCH_IOU, same side), so a
   re-found hand keeps its id, and new hands get the next id;
2. tracking: where MediaPipe's landmarks cover a track's hand, its box for the next frame is
   their tight box grown on every side by TRACK_MARGIN of its longer side (as training crops
   hands), clipped to the image. Where only the network saw the hand, its own keypoints are
   not trusted to place the next crop (a poor prediction fed back shrinks, grows or walks the
   box off the hand within a few frames): the box moves with the image's motion between the
   two frames (`motion.median_flow`, started from the track's last shift), and where that
   cannot be measured, towards the keypoints' box by bounded steps (`follow_box`); a track
   whose score stays below `min_score` for `patience` frames is lost; of two tracks that
   collapse onto one hand (IoU > DUPLICATE_IOU) the weaker is dropped;
3. the network, through `Predictor.predict` with the tracked boxes and each track's fixed side,
   so every frame gets exactly the camera placement of a single photo (the K of the first frame,
   from --focal or the default field of view, is kept for the whole clip).

Then, per track (`finalize_tracks`):

4. one shape: β is the score-weighted mean of the track's per-frame β; each frame's joints are
   recomputed with it and its translation refitted (`inference.solve_translation`) to the frame's
   2D keypoints, so the hand keeps its place in the image;
4b. with refine (the default when MediaPipe is installed): MediaPipe runs on every frame, each
   track takes the landmarks of the MediaPipe hand over its box, and `fit.fit_track` fits the
   whole track to them at once (per-frame pose and translation, the track's one β, the network's
   pose as the prior, a penalty on the joints' acceleration between consecutive frames); frames
   without landmarks follow their neighbours; each hand's "fit" records its landmark error;
5. smoothing (`smoothing.smooth_track`): a One-Euro filter on the joint rotations as unit
   quaternions and on the translation, timed by the frame times;
6. joints3d_cam and keypoints2d are recomputed from the smoothed parameters, so keypoints2d is
   still exactly joints3d_cam projected with K.

Each hand dict is a `hamr.prediction/1` hand plus "track" (a small int, stable across frames);
"score" is the frame's own confidence and "cam_weak" the network's raw crop camera of that frame.
`write_overlay_video` draws the result over the clip (mp4v). Cancellation: a threading.Event,
checked between frames, makes `process_video` raise `VideoCancelled`.

Imports numpy, torch, OpenCV and the backend; never bpy or the training package.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from backend import detect_mediapipe
from backend.cli import check_box, check_side, parse_focal, parse_smoothing
from backend.crop import box_side
from backend.detect import detect_hands, find_hands, iou, resolve_detector
from backend.fit import fit_track
from backend.inference import (
    HandRequest,
    InputError,
    Predictor,
    default_focal,
    overlay,
    solve_translation,
    with_mediapipe,
)
from backend.motion import median_flow, to_gray
from backend.smoothing import smooth_track

SCHEMA = "hamr.video/1"
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
DEFAULT_FPS = 30.0  # when the file does not say
LANDMARKS_KEY = "_landmarks"  # a hand's MediaPipe landmarks between its frame and finalize_tracks

ProgressCallback = Callable[[int, int], None]  # (done, total): frames read, or frames fitted


class VideoCancelled(Exception):
    """`process_video` stopped because its cancel event was set."""


@dataclass
class VideoInfo:
    """What the container says about a clip."""

    fps: float
    frame_count: int  # as the container reports it (may be approximate; 0 when unknown)
    width: int
    height: int


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


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a clip and decode its first frame; raises InputError when that fails."""
    with open_capture(path) as cap:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise InputError(f"cannot decode the video {Path(path).name}: no frame could be read")
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    return VideoInfo(float(fps), max(count, 0), frame.shape[1], frame.shape[0])


@contextlib.contextmanager
def open_capture(path: str | os.PathLike) -> Iterator[cv2.VideoCapture]:
    """cv2.VideoCapture of a file, released on exit; raises InputError if it cannot be opened."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such video file: {path}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"cannot decode the video {path.name}: not a readable video file")
        # frames turned as the clip's display matrix says (phones store portrait clips sideways
        # and tag them), as players and Blender's movie clips show them; this OpenCV build
        # leaves the frames as stored unless asked
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        yield cap
    finally:
        cap.release()


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The clip's frames as (H, W, 3) uint8 RGB, in order."""
    with open_capture(path) as cap:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


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

    def update(self, hands: list[dict], width: int, height: int) -> list[dict]:
        """Take the predictions of `requests()` (same order), tag them with track ids, move the
        boxes, drop duplicates and mark lost tracks. Returns the frame's hands."""
        self.frames_since_detection += 1
        for track, hand in zip(self.tracks, hands, strict=True):
            hand["track"] = track.id
            track.side = hand["side"]
            # MediaPipe's landmarks, where the hand has them, place the next crop better than the
            # network's keypoints (they keep a track on its hand through frames MediaPipe misses);
            # the network's alone move the box only within follow_box's bounds
            landmarks = hand.get(LANDMARKS_KEY)
            if landmarks is not None:
                box = keypoint_box(np.asarray(landmarks), width, height)
                if track.landmark_box is not None:  # two frames in a row: the hand's shift
                    track.velocity = _centre_shift(track.landmark_box, box)
                track.box_xyxy, track.anchor_side = box, box_side(box)
                track.landmark_box, track.moving_box = box, None
            elif self.placement == "keypoints":  # the network's keypoints, unbounded
                keypoints = np.asarray(hand["keypoints2d"])
                track.box_xyxy = keypoint_box(keypoints, width, height)
            else:
                track.landmark_box = None
                keypoints = np.asarray(hand["keypoints2d"])
                track.moving_box = track.box_xyxy if self.placement == "motion" else None
                track.box_xyxy = follow_box(
                    track.box_xyxy, track.anchor_side, keypoints, width, height
                )
            track.low_frames = track.low_frames + 1 if hand["score"] < self.min_score else 0
        keep = list(range(len(hands)))
        for i in range(len(hands)):
            for j in range(i + 1, len(hands)):
                if i in keep and j in keep:
                    if iou(self.tracks[i].box_xyxy, self.tracks[j].box_xyxy) > DUPLICATE_IOU:
                        keep.remove(j if hands[j]["score"] <= hands[i]["score"] else i)
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
    """MediaPipe's hands in one frame (`detect_mediapipe.detect`'s list) as detections for
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


def process_video(
    predictor: Predictor,
    path: str | os.PathLike,
    *,
    boxes: list[tuple[float, float, float, float]] | None = None,
    side: str = "auto",
    focal: float | None = None,
    smoothing: float = 0.5,
    max_hands: int = 2,
    min_score: float = 0.2,
    patience: int = 3,
    redetect_every: int = 15,
    detector: str | None = None,
    refine: bool | None = None,
    placement: str = "motion",
    progress_cb: ProgressCallback | None = None,
    fit_progress_cb: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    frame_lock: threading.Lock | None = None,
) -> dict[str, Any]:
    """Track and reconstruct the hands of a clip -> `hamr.video/1` dict (module doc).

    boxes: hand boxes (image pixels) on the first frame instead of detection; side: "auto",
    "right" or "left" for every hand; focal: full-frame focal length in pixels (default field
    of view without it); smoothing: strength in [0, 1] (`smoothing.params_for_strength`);
    max_hands: most hands tracked at once; min_score, patience: a track whose score stays below
    min_score for `patience` frames is re-detected; redetect_every: frames between detection
    attempts while no hand is tracked; detector: what finds hands (`backend.detect.DETECTORS`;
    None: the predictor's own setting); refine: fit each track to MediaPipe's landmarks on the
    frames where it finds the hand (`fit.fit_track`; None: the predictor's own setting, on when
    MediaPipe is installed); placement: how a track moves into the next frame where only the
    network's keypoints placed it (PLACEMENTS; the others than "motion" are there to measure it
    against); progress_cb(done, total) after every frame (total is the container's count,
    corrected at the end); fit_progress_cb(done, total) while refine fits
    the tracks (frames fitted of the frames to fit, all tracks together: (0, total) first, then
    after each fitted chunk; never called when nothing is fitted); cancel_event: raises
    VideoCancelled when set (checked between frames, and between fitted chunks); frame_lock: held
    around each frame's network work, and around each track's fit, so a server can serve other
    requests between them.
    Raises InputError for an unreadable clip, cli.OptionError for bad options."""
    check_side(side)
    focal = parse_focal(focal)
    smoothing = parse_smoothing(smoothing)
    info = probe_video(path)
    for box in boxes or []:
        check_box(box, info.width, info.height)
    lock = frame_lock or contextlib.nullcontext()
    # MediaPipe is cheap enough to run on every frame: with it, each track takes the box
    # MediaPipe finds for it (a frame where it finds none falls back to the steps above)
    asked = detector or getattr(predictor, "detector", "auto")
    per_frame = not boxes and resolve_detector(predictor, asked) == "mediapipe"
    refine = will_refine(predictor, refine)
    focal = focal or default_focal(info.width, info.height)
    tracker = HandTracker(max_hands, min_score, patience, redetect_every, placement)
    frames: list[dict[str, Any]] = []
    total = info.frame_count
    previous, previous_gray = None, None  # the last frame, and its grey if it was made
    for index, image in enumerate(read_frames(path)):
        if cancel_event is not None and cancel_event.is_set():
            raise VideoCancelled(f"cancelled at frame {index}")
        h, w = image.shape[:2]
        gray = None  # made only when a track needs the image motion, once per frame
        if previous is not None and tracker.needs_motion():
            gray = to_gray(image)
            tracker.move(to_gray(previous) if previous_gray is None else previous_gray, gray)
        previous, previous_gray = image, gray
        with lock:
            # MediaPipe's hands in this frame: boxes for the tracks (per_frame), landmarks to fit
            mp_hands = detect_mediapipe.detect(image, max_hands) if per_frame or refine else []
            found = mediapipe_detections(mp_hands, side, tracker) if per_frame else []
            if index == 0 and boxes:
                tracker.add_detections([HandRequest(tuple(b), side) for b in boxes])
            elif found:
                tracker.add_detections(found)
            elif tracker.needs_detection():
                if per_frame:  # MediaPipe has just found nothing here: only the network is left
                    network = asked != "mediapipe"
                    fallback = find_hands(predictor, image, side, max_hands) if network else []
                else:
                    fallback = detect_hands(predictor, image, side, max_hands, asked)[0]
                tracker.add_detections(fallback)
            requests = tracker.requests()
            if mp_hands:
                requests = with_mediapipe(image, requests, found=mp_hands)
            hands = predictor.predict(image, hands=requests, focal=focal, refine=False)["hands"]
            for hand, req in zip(hands, requests, strict=True):
                if req.landmarks is not None:
                    hand[LANDMARKS_KEY] = req.landmarks  # taken off again by finalize_tracks
        frames.append({"index": index, "hands": tracker.update(hands, w, h)})
        total = max(total, index + 1)
        if progress_cb is not None:
            progress_cb(index + 1, total)
    if not frames:
        raise InputError(f"cannot decode the video {Path(path).name}: no frame could be read")
    if progress_cb is not None and total != len(frames):
        progress_cb(len(frames), len(frames))

    def fit_progress(done: int, total: int) -> None:
        if cancel_event is not None and cancel_event.is_set():
            raise VideoCancelled(f"cancelled while fitting ({done} of {total} frames fitted)")
        if fit_progress_cb is not None:
            fit_progress_cb(done, total)

    finalize_tracks(
        predictor, frames, info.fps, smoothing, refine=refine, fit_progress_cb=fit_progress,
        lock=lock,
    )  # fmt: skip
    return {
        "schema": SCHEMA,
        "fps": info.fps,
        "image": {"width": info.width, "height": info.height},
        "frames": frames,
    }


def will_refine(predictor: Predictor, refine: bool | None) -> bool:
    """Whether `process_video(refine=refine)` fits its tracks to MediaPipe's landmarks: None
    takes the predictor's own setting; either way only when MediaPipe is installed."""
    if refine is None:
        refine = getattr(predictor, "refine", "off") == "auto"
    return bool(refine) and detect_mediapipe.available()


@torch.no_grad()
def finalize_tracks(
    predictor: Predictor,
    frames: list[dict[str, Any]],
    fps: float,
    smoothing: float,
    refine: bool = False,
    fit_progress_cb: ProgressCallback | None = None,
    lock: contextlib.AbstractContextManager | None = None,
) -> None:
    """Steps 4-6 of the module doc, in place on `frames`' hand dicts; with `refine`, step 4b
    fits each track to the MediaPipe landmarks its frames carry (LANDMARKS_KEY), reporting
    fit_progress_cb(frames fitted, frames to fit) as `process_video` documents. lock: held
    around each track's work (default: none)."""
    lock = lock or contextlib.nullcontext()
    by_track: dict[int, list[tuple[int, dict]]] = {}
    for frame in frames:
        for hand in frame["hands"]:
            by_track.setdefault(hand["track"], []).append((frame["index"], hand))
    fits = {
        track: refine and any(h.get(LANDMARKS_KEY) is not None for _, h in items)
        for track, items in by_track.items()
    }
    to_fit = sum(len(items) for track, items in by_track.items() if fits[track])
    done = 0
    if to_fit and fit_progress_cb is not None:
        fit_progress_cb(0, to_fit)
    for track, items in by_track.items():
        chunk_cb = None
        if fits[track] and fit_progress_cb is not None:

            def chunk_cb(fitted: int, before: int = done) -> None:
                fit_progress_cb(before + fitted, to_fit)

        with lock:
            _finalize_track(predictor, items, fps, smoothing, refine, chunk_cb)
        done += len(items) if fits[track] else 0


@torch.no_grad()
def _finalize_track(
    predictor: Predictor,
    items: list[tuple[int, dict]],
    fps: float,
    smoothing: float,
    refine: bool,
    chunk_cb: Callable[[int], None] | None,
) -> None:
    """`finalize_tracks` for one track's (frame index, hand) items; chunk_cb goes to
    `fit.fit_track`."""
    hands = [h for _, h in items]
    times = np.array([i / fps for i, _ in items])
    model = predictor.hands[hands[0]["side"]]
    device = predictor.device
    K = torch.tensor(hands[0]["camera"]["K"], dtype=torch.float64)
    weights = np.array([max(h["score"], 1e-3) for h in hands])
    betas = np.average([h["betas"] for h in hands], axis=0, weights=weights)  # (10,)
    betas_t = torch.tensor(betas, dtype=torch.float32, device=device)
    poses = np.array([h["pose_axis_angle"] for h in hands])  # (N, 16, 3)
    # step 4: the track's β, each frame's translation refitted to its 2D keypoints
    kp3d = _keypoints(model, poses, betas_t)  # (N, 21, 3) float64, model frame rotated
    transl = np.stack(
        [
            solve_translation(
                torch.from_numpy(kp3d[i]),
                torch.tensor(h["keypoints2d"], dtype=torch.float64),
                K,
                torch.tensor(h["transl"], dtype=torch.float64),
            ).numpy()
            for i, h in enumerate(hands)
        ]
    )
    # step 4b: the track fitted to MediaPipe's landmarks, all its frames at once
    landmarks = [h.pop(LANDMARKS_KEY, None) for h in hands]
    if refine and any(lm is not None for lm in landmarks):
        fitted = fit_track(
            model,
            hands[0]["side"],
            poses,
            betas,
            transl,
            K.numpy(),
            landmarks,
            [box_side(h["box_xyxy"]) for h in hands],
            [i for i, _ in items],
            chunk_cb=chunk_cb,
        )
        poses, transl = fitted["pose"].astype(np.float64), fitted["transl"].astype(np.float64)
        betas = fitted["betas"].astype(np.float64)
        betas_t = torch.tensor(betas, dtype=torch.float32, device=device)
        for hand, lm, before, after in zip(
            hands, landmarks, fitted["rms_px_before"], fitted["rms_px_after"], strict=True
        ):
            hand["fit"] = (
                None
                if lm is None
                else {
                    "landmarks": "mediapipe",
                    "rms_px_before": round(float(before), 2),
                    "rms_px_after": round(float(after), 2),
                }
            )
    # step 5: smoothing in rotation and translation space
    poses, transl = smooth_track(times, poses, transl, smoothing)
    # step 6: the camera identity, recomputed
    joints = _keypoints(model, poses, betas_t) + transl[:, None]  # (N, 21, 3)
    uvw = joints @ K.numpy().T
    uv = uvw[..., :2] / uvw[..., 2:]
    for i, hand in enumerate(hands):
        hand.update(
            pose_axis_angle=poses[i].tolist(),
            betas=betas.tolist(),
            transl=transl[i].tolist(),
            joints3d_cam=joints[i].tolist(),
            keypoints2d=uv[i].tolist(),
        )


def _keypoints(model: torch.nn.Module, poses: np.ndarray, betas: torch.Tensor) -> np.ndarray:
    """(N, 16, 3) axis-angle poses with one β (10,) -> (N, 21, 3) float64 keypoints, no transl."""
    pose_t = torch.tensor(poses, dtype=torch.float32, device=betas.device)
    out = model(pose_t, betas.expand(len(poses), -1))
    return out.keypoints.double().cpu().numpy()


def write_overlay_video(
    predictor: Predictor,
    path: str | os.PathLike,
    result: dict[str, Any],
    out_path: str | os.PathLike,
    progress_cb: ProgressCallback | None = None,
) -> Path:
    """Draw `result` (from `process_video` on `path`) over the clip into an mp4v file."""
    info = probe_video(path)
    out_path = Path(out_path)
    writer = cv2.VideoWriter(
        str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), info.fps, (info.width, info.height)
    )
    if not writer.isOpened():
        raise InputError(f"cannot write the video {out_path}")
    total = len(result["frames"])
    try:
        for frame, image in zip(result["frames"], read_frames(path), strict=False):
            drawn = overlay(predictor, image, frame)
            writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            if progress_cb is not None:
                progress_cb(frame["index"] + 1, total)
    finally:
        writer.release()
    return out_path
