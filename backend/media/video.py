"""Video clips in and out: open, probe and read a clip's frames as RGB (turned as the clip's
display matrix says, as players and Blender show them), and write frames to an mp4v clip.

Raises `errors.InputError` for a clip that cannot be opened or decoded. Imports numpy and
OpenCV only.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from backend.errors import InputError

DEFAULT_FPS = 30.0  # when the file does not say


@dataclass
class VideoInfo:
    """What the container says about a clip."""

    fps: float
    frame_count: int  # as the container reports it (may be approximate; 0 when unknown)
    width: int
    height: int


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


@contextlib.contextmanager
def open_writer(
    path: str | os.PathLike, fps: float, width: int, height: int
) -> Iterator[Callable[[np.ndarray], None]]:
    """A function that appends one (H, W, 3) uint8 RGB frame to an mp4v clip at `path`, closed
    on exit; raises InputError when the file cannot be written."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write the video {path}")
    try:
        yield lambda rgb: writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
