"""The video pipeline: a clip -> tracked, smoothed hands, `hamr.video/1` (DESIGN.md).

`process_video` reads the clip (`backend.media.video`; fps from the file) and, frame by frame:

1. detection, on the first frame (the user's boxes there when given, else `detect_hands`),
   whenever a track was lost, and every `redetect_every` frames while no hand is tracked; when
   the detector is MediaPipe (and no boxes were given), on every frame;
   detections are matched to the tracks by box overlap (IoU > MATCH_IOU, same side), so a
   re-found hand keeps its id, and new hands get the next id;
2. tracking (`backend.track.tracker`): where MediaPipe's landmarks cover a track's hand, its box
   for the next frame is their tight box grown on every side by TRACK_MARGIN of its longer side
   (as training crops hands), clipped to the image. Where only the network saw the hand, its own
   keypoints are not trusted to place the next crop (a poor prediction fed back shrinks, grows
   or walks the box off the hand within a few frames): the box moves with the image's motion
   between the two frames (`motion.median_flow`, started from the track's last shift), and where
   that cannot be measured, towards the keypoints' box by bounded steps (`follow_box`); a track
   whose score stays below `min_score` for `patience` frames is lost; of two tracks that
   collapse onto one hand (IoU > DUPLICATE_IOU) the weaker is dropped;
3. the network, through `Predictor.predict_hands` with the tracked boxes and each track's fixed
   side, so every frame gets exactly the camera placement of a single photo (the K of the first
   frame, from --focal or the default field of view, is kept for the whole clip).

Then, per track (`backend.track.finalize.finalize_tracks`):

4. one shape: β is the score-weighted mean of the track's per-frame β; each frame's joints are
   recomputed with it and its translation refitted (`camera.solve_translation`) to the frame's
   2D keypoints, so the hand keeps its place in the image;
4b. with refine (the default when MediaPipe is installed): MediaPipe runs on every frame, each
   track takes the landmarks (2D and world) of the MediaPipe hand over its box, and every frame
   that has them is fused with them (`backend.fuse.fusion`, a batch of frames at a time, the
   track's one shape from its world landmarks kept fixed); frames without landmarks keep the
   network's hand; each hand's "fit" records the signals that made it;
5. smoothing (`smoothing.smooth_track`): a One-Euro filter on the joint rotations as unit
   quaternions and on the translation, timed by the frame times;
6. joints3d_cam and keypoints2d are recomputed from the smoothed parameters, so keypoints2d is
   still exactly joints3d_cam projected with K.

Each hand dict is a `hamr.prediction/1` hand plus "track" (a small int, stable across frames);
"score" is the frame's own confidence and "cam_weak" the network's raw crop camera of that frame.
`write_overlay_video` draws the result over the clip (mp4v). Cancellation: a threading.Event,
checked between frames, makes `process_video` raise `VideoCancelled`.

Imports numpy, torch, OpenCV and the backend's stages; never the HTTP service, the CLI, bpy or
the training package.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.camera import default_focal
from backend.detect import (
    detect_hands,
    find_hands,
    mediapipe_hands,
    resolve_detector,
    with_mediapipe,
)
from backend.errors import Cancelled, InputError
from backend.media.video import open_writer, probe_video, read_frames
from backend.options import (
    DEFAULT_SMOOTHING,
    HandRequest,
    check_box,
    check_side,
    parse_focal,
    parse_smoothing,
)
from backend.schema import Hand, video_json
from backend.track.finalize import ProgressCallback, finalize_tracks
from backend.track.motion import to_gray
from backend.track.tracker import HandTracker, mediapipe_detections

from .photo import Predictor, overlay


class VideoCancelled(Cancelled):
    """`process_video` stopped because its cancel event was set."""


@dataclass(frozen=True)
class VideoOptions:
    """What `process_video` does with a clip; every field checked on entry."""

    # hand boxes (image pixels) on the first frame instead of detection
    boxes: list[tuple[float, float, float, float]] | None = None
    side: str = "auto"  # "auto", "right" or "left" for every hand
    focal: float | None = None  # full-frame focal length, pixels (default field of view)
    smoothing: float = DEFAULT_SMOOTHING  # strength in [0, 1] (`smoothing.params_for_strength`)
    max_hands: int = 2  # most hands tracked at once
    # a track whose score stays below min_score for `patience` frames is re-detected
    min_score: float = 0.2
    patience: int = 3
    redetect_every: int = 15  # frames between detection attempts while no hand is tracked
    detector: str | None = None  # what finds hands (options.DETECTORS); None: the predictor's
    # fuse each track's hands with MediaPipe's landmarks on the frames where it finds the hand
    # (`backend.fuse.fusion`); None: the predictor's own setting, on when MediaPipe is installed
    refine: bool | None = None
    # how a track moves into the next frame where only the network's keypoints placed it
    # (tracker.PLACEMENTS; the others than "motion" are there to measure it against)
    placement: str = "motion"


def process_video(
    predictor: Predictor,
    path: str | os.PathLike,
    options: VideoOptions | None = None,
    *,
    progress_cb: ProgressCallback | None = None,
    fit_progress_cb: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    frame_lock: threading.Lock | None = None,
) -> dict[str, Any]:
    """Track and reconstruct the hands of a clip -> `hamr.video/1` dict (module doc).

    options: `VideoOptions` (defaults without it); progress_cb(done, total) after every frame
    (total is the container's count, corrected at the end); fit_progress_cb(done, total) while
    refine fits the tracks (frames fitted of the frames to fit, all tracks together: (0, total)
    first, then after each fitted chunk; never called when nothing is fitted); cancel_event:
    raises VideoCancelled when set (checked between frames, and between fitted chunks);
    frame_lock: held around each frame's network work, and around each track's fit, so a server
    can serve other requests between them.
    Raises InputError for an unreadable clip, OptionError for bad options."""
    o = options or VideoOptions()
    boxes, side, max_hands = o.boxes, o.side, o.max_hands
    check_side(side)
    focal = parse_focal(o.focal)
    smoothing = parse_smoothing(o.smoothing)
    info = probe_video(path)
    for box in boxes or []:
        check_box(box, info.width, info.height)
    lock = frame_lock or contextlib.nullcontext()
    # MediaPipe is cheap enough to run on every frame: with it, each track takes the box
    # MediaPipe finds for it (a frame where it finds none falls back to the steps above)
    asked = o.detector or getattr(predictor, "detector", "auto")
    per_frame = not boxes and resolve_detector(predictor, asked) == "mediapipe"
    refine = will_refine(predictor, o.refine)
    focal = focal or default_focal(info.width, info.height)
    tracker = HandTracker(max_hands, o.min_score, o.patience, o.redetect_every, o.placement)
    frames: list[tuple[int, list[Hand]]] = []
    total = info.frame_count
    previous, previous_gray = None, None  # the last frame, and its grey if it was made
    with contextlib.ExitStack() as stack:
        # MediaPipe in its video mode for this clip, where it runs on every frame
        mp_detect = (
            stack.enter_context(mediapipe_hands.video_session(max_hands))
            if per_frame or refine
            else None
        )
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
                # MediaPipe's hands in this frame (video mode: it follows them from the last
                # frame): boxes for the tracks (per_frame), landmarks to fuse with
                mp_hands = mp_detect(image) if mp_detect is not None else []
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
                        found_now = detect_hands(predictor, image, side, max_hands, asked, False)
                        fallback = found_now[0]
                    tracker.add_detections(fallback)
                requests = tracker.requests()
                if mp_hands:
                    requests = with_mediapipe(image, requests, found=mp_hands)
                ran = per_frame or refine  # MediaPipe has looked at this frame: not again
                hands, _ = predictor.predict_hands(
                    image, requests, focal=focal, refine=False, found=mp_hands if ran else None,
                    views=False,
                )  # fmt: skip
            frames.append((index, tracker.update(hands, w, h)))
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
    return video_json(info.fps, info.width, info.height, frames)


def will_refine(predictor: Predictor, refine: bool | None) -> bool:
    """Whether `process_video(refine=refine)` fits its tracks to MediaPipe's landmarks: None
    takes the predictor's own setting; either way only when MediaPipe is installed."""
    if refine is None:
        refine = getattr(predictor, "refine", "off") == "auto"
    return bool(refine) and mediapipe_hands.available()


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
    total = len(result["frames"])
    with open_writer(out_path, info.fps, info.width, info.height) as write:
        for frame, image in zip(result["frames"], read_frames(path), strict=False):
            write(overlay(predictor, image, frame))
            if progress_cb is not None:
                progress_cb(frame["index"] + 1, total)
    return out_path
