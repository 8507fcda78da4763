"""Video on real photos of a still hand: speed, jitter and track count of `hamr video`, against
MediaPipe's own video mode on the same frames. `python -m tools.eval_video`.

From --photos webcam photos of ../shared/realhands/webcam_scenes with one annotated hand that
MediaPipe finds, two 720p clips each (--frames frames, the photo scaled 2.2x, the frame panning
2 px right and 1 px down per frame, so the true motion is known):
- "centre": the hand near the frame's middle;
- "edge": the hand cut by the frame's right side, coming into view as the frame pans.
For each clip:
- `hamr video` (`process_video`, default options): frames per second end to end (decode,
  MediaPipe, network, fusion, smoothing), the number of tracks, and the keypoints' jitter: the
  RMS of their frame-to-frame motion once the known pan is taken off, pixels, on the longest
  track;
- MediaPipe alone in its video mode (`static_image_mode=False`), the same frames: frames per
  second and jitter, as the peer.
Prints one JSON object (per clip and the means; `--out PATH` writes it to a file too). CPU, the
shipped checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import torch

from backend.detect import mediapipe_hands
from backend.pipeline.photo import Predictor
from backend.pipeline.video import process_video
from benchmarks.output import add_out_argument, emit

WEBCAM = Path(__file__).resolve().parents[1].parent / "shared" / "realhands" / "webcam_scenes"
SCALE = 2.2  # the photo's scale in the clip
FRAME = (1280, 720)
PAN = np.array([2.0, 1.0])  # pixels per frame the frame moves (the content moves the other way)


def one_hand_photos(folder: Path, count: int) -> list[tuple[Path, tuple[float, ...]]]:
    """(photo, its one annotated hand box) for `count` photos spread over the sorted folder."""
    picked = []
    for xml in sorted((folder / "images").glob("*.xml")):
        boxes = [
            tuple(float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            for o in ET.parse(xml).getroot().iter("object")
        ]
        photo = xml.with_suffix(".jpg")
        if len(boxes) == 1 and photo.is_file():
            picked.append((photo, boxes[0]))
    step = max(1, len(picked) // max(count * 3, 1))
    return picked[::step]


def write_clip(photo: np.ndarray, start: np.ndarray, frames: int, path: Path) -> None:
    """`frames` 720p frames of the scaled photo, the window's corner at start + PAN * i."""
    big = cv2.resize(photo, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_LINEAR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, FRAME)
    for i in range(frames):
        x, y = (start + PAN * i).astype(int)
        window = big[y : y + FRAME[1], x : x + FRAME[0]]
        writer.write(cv2.cvtColor(np.ascontiguousarray(window), cv2.COLOR_RGB2BGR))
    writer.release()


def jitter(points: dict[int, np.ndarray]) -> float:
    """RMS frame-to-frame motion (px) of keypoints {frame: (21, 2)} once the pan is taken off."""
    frames = sorted(points)
    steps = [
        (points[b] + PAN * b) - (points[a] + PAN * a)
        for a, b in zip(frames, frames[1:], strict=False)
        if b == a + 1
    ]
    return float(np.sqrt(np.mean(np.square(steps)))) if steps else float("nan")


def mediapipe_video(path: Path) -> tuple[float, float]:
    """(frames per second, jitter px) of MediaPipe Hands in video mode, first hand."""
    from mediapipe.python.solutions import hands as mp_hands

    cap = cv2.VideoCapture(str(path))
    frames = []
    while (read := cap.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    cap.release()
    found: dict[int, np.ndarray] = {}
    with mp_hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=1) as hands:
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):
            result = hands.process(frame)
            if result.multi_hand_landmarks:
                lm = result.multi_hand_landmarks[0].landmark
                found[i] = np.array([[p.x * FRAME[0], p.y * FRAME[1]] for p in lm])
        seconds = time.perf_counter() - t0
    return len(frames) / seconds, jitter(found)


def run_clip(predictor: Predictor, path: Path, frames: int) -> dict:
    t0 = time.perf_counter()
    result = process_video(predictor, path)
    seconds = time.perf_counter() - t0
    tracks: dict[int, dict[int, np.ndarray]] = {}
    for frame in result["frames"]:
        for hand in frame["hands"]:
            tracks.setdefault(hand["track"], {})[frame["index"]] = np.asarray(hand["keypoints2d"])
    longest = max(tracks.values(), key=len, default={})
    mp_fps, mp_jitter = mediapipe_video(path)
    return {
        "frames": frames,
        "fps": round(frames / seconds, 2),
        "tracks": len(tracks),
        "frames_tracked": len(longest),
        "jitter_px": round(jitter(longest), 2),
        "mediapipe_video_fps": round(mp_fps, 1),
        "mediapipe_video_jitter_px": round(mp_jitter, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    add_out_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not WEBCAM.is_dir() or not mediapipe_hands.available():
        emit({"skipped": f"needs {WEBCAM} and mediapipe"}, args.out)
        return
    predictor = Predictor(frozen=True)  # the network as `hamr video` loads it
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo_path, box in one_hand_photos(WEBCAM, args.photos):
            if len(clips) >= 2 * args.photos:
                break
            photo = cv2.cvtColor(cv2.imread(str(photo_path)), cv2.COLOR_BGR2RGB)
            if len(mediapipe_hands.detect(photo)) != 1:
                continue
            centre = (np.array(box[:2]) + box[2:]) / 2 * SCALE
            width = (box[2] - box[0]) * SCALE
            span = PAN * args.frames
            room = np.array(photo.shape[1::-1]) * SCALE - FRAME - span
            starts = {
                "centre": centre - np.array(FRAME) / 2 - span / 2,
                # the hand's box a third outside the right side at the first frame
                "edge": np.array([centre[0] + width / 6 - FRAME[0], centre[1] - FRAME[1] / 2]),
            }
            for kind, start in starts.items():
                start = np.clip(start, 0, np.maximum(room, 0))
                path = Path(tmp) / f"{photo_path.stem}_{kind}.mp4"
                write_clip(photo, start, args.frames, path)
                row = {"photo": photo_path.name, "clip": kind}
                row.update(run_clip(predictor, path, args.frames))
                clips.append(row)
    keys = ("fps", "tracks", "jitter_px", "mediapipe_video_fps", "mediapipe_video_jitter_px")
    means = {k: round(float(np.nanmean([c[k] for c in clips])), 2) for k in keys} if clips else {}
    emit({"threads": args.threads, "clips": clips, "mean": means}, args.out)


if __name__ == "__main__":
    main()
