"""Parse and validate what the backend sends: rig data, predictions and video results.

Three documents (DESIGN.md "Prediction JSON", backend/rig.py):

- ``hamr.rig/1`` (`parse_rig`): the hand model of one side, arrays base64-encoded;
- ``hamr.prediction/1`` (`parse_prediction`): the hands found in one image;
- ``hamr.video/1`` (`parse_video`, `video_tracks`): per-frame hands with a stable track id.

Every parser checks the schema tag, the keys, array shapes and finiteness, and raises
`PayloadError` with a message that names the offending field, so a malformed or mismatched
backend answer becomes one clear error in Blender instead of a crash halfway through building a
scene. Pure: numpy and the standard library only (no bpy, no torch).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RIG_SCHEMA = "hamr.rig/1"
PREDICTION_SCHEMA = "hamr.prediction/1"
VIDEO_SCHEMA = "hamr.video/1"
NUM_JOINTS = 16
NUM_KEYPOINTS = 21
NUM_BETAS = 10
NUM_POSE_CORRECTIVES = 135
SIDES = ("right", "left")
_DTYPES = {"f4", "f8", "i4", "i8", "u1", "u2", "u4", "i2", "b1"}


class PayloadError(ValueError):
    """The backend sent something that does not follow the documented format."""


# ------------------------------------------------------------------------------ helpers
def decode_array(obj: Any, name: str = "array") -> np.ndarray:
    """{"dtype", "shape", "data": base64 little-endian C-order bytes} -> numpy array (a copy)."""
    if not isinstance(obj, Mapping) or not {"dtype", "shape", "data"} <= set(obj):
        raise PayloadError(f"{name}: expected an encoded array with dtype, shape and data")
    dtype = obj["dtype"]
    if dtype not in _DTYPES:
        raise PayloadError(f"{name}: unsupported dtype {dtype!r}")
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise PayloadError(f"{name}: shape must be a list of non-negative integers, got {shape!r}")
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (ValueError, TypeError) as e:
        raise PayloadError(f"{name}: data is not valid base64 ({e})") from e
    dt = np.dtype(dtype).newbyteorder("<")
    count = math.prod(shape)
    if len(raw) != count * dt.itemsize:
        raise PayloadError(
            f"{name}: {len(raw)} bytes do not hold shape {shape} of {dtype} "
            f"({count * dt.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))


def _array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A JSON nested list -> finite float64 array of exactly `shape`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PayloadError(f"{name}: expected numbers of shape {shape} ({e})") from e
    if arr.shape != shape:
        raise PayloadError(f"{name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PayloadError(f"{name}: contains NaN or infinite values")
    return arr


def _get(obj: Mapping, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping):
        raise PayloadError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise PayloadError(f"{where}: missing {key!r}")
    return obj[key]


def _check_schema(doc: Any, schema: str) -> None:
    if not isinstance(doc, Mapping):
        raise PayloadError(f"expected a {schema} object, got {type(doc).__name__}")
    got = doc.get("schema")
    if got != schema:
        raise PayloadError(f"expected schema {schema!r}, got {got!r}")


# ------------------------------------------------------------------------------ rig
@dataclass
class RigData:
    """The hand model of one side (``hamr.rig/1``), arrays in the model frame (metres)."""

    hand_model: str
    side: str
    joint_names: list[str]  # (16,) MANO order
    parents: list[int]  # (16,) -1 for the root
    tip_names: list[str]  # (5,)
    tip_parents: list[int]  # (5,) index of the MANO joint each tip hangs from
    v_template: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) int
    weights: np.ndarray  # (V, 16)
    joints_rest: np.ndarray  # (16, 3) at beta = 0
    shapedirs: np.ndarray  # (V, 3, 10)
    joints_shapedirs: np.ndarray  # (16, 3, 10)
    posedirs: np.ndarray | None  # (V, 3, 135), None when all zero
    tip_vertex_ids: np.ndarray  # (5,) int
    nail_mask: np.ndarray  # (V,) bool

    @property
    def pose_correctives_zero(self) -> bool:
        """True when the hand model has no pose correctives (all 135 directions are zero)."""
        return self.posedirs is None or not np.any(self.posedirs)

    def joints(self, betas: np.ndarray | None = None) -> np.ndarray:
        """(16, 3) rest joints of the shaped hand: joints_rest + joints_shapedirs @ betas."""
        if betas is None:
            return self.joints_rest.astype(np.float64)
        return self.joints_rest + self.joints_shapedirs @ np.asarray(betas, dtype=np.float64)

    def vertices(self, betas: np.ndarray | None = None) -> np.ndarray:
        """(V, 3) rest vertices of the shaped hand: v_template + shapedirs @ betas."""
        if betas is None:
            return self.v_template.astype(np.float64)
        return self.v_template + self.shapedirs @ np.asarray(betas, dtype=np.float64)

    def tips(self, betas: np.ndarray | None = None) -> np.ndarray:
        """(5, 3) rest fingertip positions (the tip vertices) of the shaped hand."""
        return self.vertices(betas)[self.tip_vertex_ids]


def parse_rig(doc: Any) -> RigData:
    """Validate a ``hamr.rig/1`` dict and decode its arrays."""
    _check_schema(doc, RIG_SCHEMA)
    side = _get(doc, "side", "rig")
    if side not in SIDES:
        raise PayloadError(f"rig: side must be 'right' or 'left', got {side!r}")
    arrays = {
        k: decode_array(_get(doc, k, "rig"), f"rig.{k}")
        for k in (
            "v_template",
            "faces",
            "weights",
            "joints_rest",
            "shapedirs",
            "joints_shapedirs",
            "tip_vertex_ids",
        )
    }
    posedirs = decode_array(doc["posedirs"], "rig.posedirs") if "posedirs" in doc else None
    nail = (
        decode_array(doc["nail_mask"], "rig.nail_mask").astype(bool)
        if "nail_mask" in doc
        else np.zeros(len(arrays["v_template"]), dtype=bool)
    )
    n_v = arrays["v_template"].shape[0] if arrays["v_template"].ndim == 2 else -1
    expected = {
        "v_template": (n_v, 3),
        "weights": (n_v, NUM_JOINTS),
        "joints_rest": (NUM_JOINTS, 3),
        "shapedirs": (n_v, 3, NUM_BETAS),
        "joints_shapedirs": (NUM_JOINTS, 3, NUM_BETAS),
        "tip_vertex_ids": (5,),
    }
    for k, shape in expected.items():
        if arrays[k].shape != shape:
            raise PayloadError(f"rig.{k}: expected shape {shape}, got {arrays[k].shape}")
    faces = arrays["faces"]
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise PayloadError(f"rig.faces: expected shape (F, 3), got {faces.shape}")
    if faces.min() < 0 or faces.max() >= n_v:
        raise PayloadError("rig.faces: vertex index out of range")
    tips = arrays["tip_vertex_ids"]
    if tips.min() < 0 or tips.max() >= n_v:
        raise PayloadError("rig.tip_vertex_ids: vertex index out of range")
    if posedirs is not None and posedirs.shape != (n_v, 3, NUM_POSE_CORRECTIVES):
        raise PayloadError(
            f"rig.posedirs: expected shape {(n_v, 3, NUM_POSE_CORRECTIVES)}, got {posedirs.shape}"
        )
    if nail.shape != (n_v,):
        raise PayloadError(f"rig.nail_mask: expected shape ({n_v},), got {nail.shape}")
    for k in ("v_template", "weights", "joints_rest", "shapedirs", "joints_shapedirs"):
        if not np.all(np.isfinite(arrays[k])):
            raise PayloadError(f"rig.{k}: contains NaN or infinite values")
    names = list(_get(doc, "joint_names", "rig"))
    parents = [int(p) for p in _get(doc, "parents", "rig")]
    tip_names = list(_get(doc, "tip_names", "rig"))
    tip_parents = [int(p) for p in _get(doc, "tip_parents", "rig")]
    if len(names) != NUM_JOINTS or len(parents) != NUM_JOINTS or parents[0] != -1:
        raise PayloadError("rig: need 16 joint names and parents, the root first")
    if any(not (0 <= p < j) for j, p in enumerate(parents[1:], start=1)):
        raise PayloadError("rig.parents: each parent must come before its child")
    if len(tip_names) != 5 or len(tip_parents) != 5:
        raise PayloadError("rig: need 5 fingertip names and parents")
    if len(set(names + tip_names)) != NUM_JOINTS + 5:
        raise PayloadError("rig: joint and fingertip names must be unique")
    return RigData(
        hand_model=str(doc.get("hand_model", "")),
        side=side,
        joint_names=[str(n) for n in names],
        parents=parents,
        tip_names=[str(n) for n in tip_names],
        tip_parents=tip_parents,
        v_template=arrays["v_template"].astype(np.float64),
        faces=faces.astype(np.int64),
        weights=arrays["weights"].astype(np.float64),
        joints_rest=arrays["joints_rest"].astype(np.float64),
        shapedirs=arrays["shapedirs"].astype(np.float64),
        joints_shapedirs=arrays["joints_shapedirs"].astype(np.float64),
        posedirs=None if posedirs is None else posedirs.astype(np.float64),
        tip_vertex_ids=tips.astype(np.int64),
        nail_mask=nail,
    )


# ------------------------------------------------------------------------------ predictions
@dataclass
class Hand:
    """One predicted hand (an entry of ``hands`` in ``hamr.prediction/1``)."""

    side: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    pose_axis_angle: np.ndarray  # (16, 3) model frame, relative to parents
    betas: np.ndarray  # (10,)
    K: np.ndarray  # (3, 3) full-image intrinsics, pixels
    transl: np.ndarray  # (3,) camera frame (OpenCV), metres
    joints3d_cam: np.ndarray  # (21, 3) camera frame, metres
    keypoints2d: np.ndarray  # (21, 2) image pixels
    track: int | None = None  # stable id across video frames
    raw: dict = field(default_factory=dict, repr=False)  # the hand's JSON as received


@dataclass
class Prediction:
    """A parsed ``hamr.prediction/1`` document."""

    width: int
    height: int
    checkpoint: str
    hand_model: str
    hands: list[Hand]
    raw: dict = field(default_factory=dict, repr=False)


def parse_hand(obj: Any, where: str = "hand") -> Hand:
    """Validate one hand entry (prediction or video frame)."""
    side = _get(obj, "side", where)
    if side not in SIDES:
        raise PayloadError(f"{where}.side: must be 'right' or 'left', got {side!r}")
    camera = _get(obj, "camera", where)
    score = float(obj.get("score", 1.0))
    if not math.isfinite(score):
        raise PayloadError(f"{where}.score: not a finite number")
    box = obj.get("box_xyxy", [0.0, 0.0, 0.0, 0.0])
    track = obj.get("track")
    if track is not None and not isinstance(track, int):
        raise PayloadError(f"{where}.track: must be an integer, got {track!r}")
    k = _array(_get(camera, "K", f"{where}.camera"), f"{where}.camera.K", (3, 3))
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise PayloadError(f"{where}.camera.K: focal lengths must be positive")
    return Hand(
        side=side,
        score=score,
        box_xyxy=tuple(float(v) for v in _array(box, f"{where}.box_xyxy", (4,))),
        pose_axis_angle=_array(
            _get(obj, "pose_axis_angle", where), f"{where}.pose_axis_angle", (NUM_JOINTS, 3)
        ),
        betas=_array(_get(obj, "betas", where), f"{where}.betas", (NUM_BETAS,)),
        K=k,
        transl=_array(_get(obj, "transl", where), f"{where}.transl", (3,)),
        joints3d_cam=_array(
            _get(obj, "joints3d_cam", where), f"{where}.joints3d_cam", (NUM_KEYPOINTS, 3)
        ),
        keypoints2d=_array(
            _get(obj, "keypoints2d", where), f"{where}.keypoints2d", (NUM_KEYPOINTS, 2)
        ),
        track=track,
        raw=dict(obj),
    )


def _image_size(doc: Mapping, where: str) -> tuple[int, int]:
    image = _get(doc, "image", where)
    w, h = _get(image, "width", f"{where}.image"), _get(image, "height", f"{where}.image")
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        raise PayloadError(f"{where}.image: width and height must be positive integers")
    return w, h


def parse_prediction(doc: Any) -> Prediction:
    """Validate a ``hamr.prediction/1`` dict."""
    _check_schema(doc, PREDICTION_SCHEMA)
    w, h = _image_size(doc, "prediction")
    hands_raw = _get(doc, "hands", "prediction")
    if not isinstance(hands_raw, Sequence) or isinstance(hands_raw, (str, bytes)):
        raise PayloadError("prediction.hands: expected a list")
    hands = [parse_hand(hd, f"prediction.hands[{i}]") for i, hd in enumerate(hands_raw)]
    model = doc.get("model") or {}
    return Prediction(
        width=w,
        height=h,
        checkpoint=str(model.get("checkpoint", "")),
        hand_model=str(model.get("hand_model", "")),
        hands=hands,
        raw=dict(doc),
    )


# ------------------------------------------------------------------------------ video
@dataclass
class VideoResult:
    """A parsed ``hamr.video/1`` document."""

    fps: float
    width: int | None  # image size when the backend sends it (``image``), else None
    height: int | None
    frames: list[tuple[int, list[Hand]]]  # (video frame index, hands), in index order
    hand_model: str = ""


@dataclass
class Track:
    """One hand followed through a video: per-frame parameters at the frames where it was seen."""

    track: int
    side: str
    frame_indices: np.ndarray  # (N,) video frame indices, increasing
    pose_axis_angle: np.ndarray  # (N, 16, 3)
    betas: np.ndarray  # (N, 10)
    transl: np.ndarray  # (N, 3) camera frame
    K: np.ndarray  # (3, 3) of the first frame
    fitted_frames: int = 0  # frames fitted to MediaPipe's landmarks (the hand's "fit" is set)
    scores: np.ndarray | None = None  # (N,) each frame's confidence
    signals: str = "network"  # what made the track's hands: the frames' "fit" signals, joined

    @property
    def median_score(self) -> float:
        """The track's confidence: the median of its frames' scores (1.0 when unknown)."""
        return 1.0 if self.scores is None or not len(self.scores) else float(np.median(self.scores))

    @property
    def shape_betas(self) -> np.ndarray:
        """(10,) the one shape of the track: the median over frames (robust to a bad frame)."""
        return np.median(self.betas, axis=0)


def parse_video(doc: Any) -> VideoResult:
    """Validate a ``hamr.video/1`` dict; hands without a track id get track 0."""
    _check_schema(doc, VIDEO_SCHEMA)
    fps = _get(doc, "fps", "video")
    if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise PayloadError(f"video.fps: must be a positive number, got {fps!r}")
    width = height = None
    if "image" in doc:
        width, height = _image_size(doc, "video")
    frames_raw = _get(doc, "frames", "video")
    if not isinstance(frames_raw, Sequence) or isinstance(frames_raw, (str, bytes)):
        raise PayloadError("video.frames: expected a list")
    frames: list[tuple[int, list[Hand]]] = []
    for i, fr in enumerate(frames_raw):
        index = _get(fr, "index", f"video.frames[{i}]")
        if not isinstance(index, int) or index < 0:
            raise PayloadError(f"video.frames[{i}].index: must be a non-negative integer")
        hands = [
            parse_hand(hd, f"video.frames[{i}].hands[{j}]")
            for j, hd in enumerate(_get(fr, "hands", f"video.frames[{i}]"))
        ]
        frames.append((index, hands))
    frames.sort(key=lambda f: f[0])
    model = doc.get("model") or {}
    return VideoResult(
        fps=float(fps),
        width=width,
        height=height,
        frames=frames,
        hand_model=str(model.get("hand_model", "")),
    )


def video_tracks(video: VideoResult) -> list[Track]:
    """Group a video's hands by track id -> one Track each, ordered by track id. A track's side
    is its most frequent side; frames where it was seen with the other side are dropped (the rig
    of one side cannot show the other)."""
    by_track: dict[int, list[tuple[int, Hand]]] = {}
    for index, hands in video.frames:
        seen: set[int] = set()
        for hand in hands:
            tid = 0 if hand.track is None else hand.track
            if tid in seen:  # two hands with one id in a frame: keep the first
                continue
            seen.add(tid)
            by_track.setdefault(tid, []).append((index, hand))
    tracks = []
    for tid in sorted(by_track):
        items = by_track[tid]
        sides = [h.side for _, h in items]
        side = max(SIDES, key=sides.count)
        items = [(i, h) for i, h in items if h.side == side]
        signals: list[str] = []
        for _, h in items:
            fit = h.raw.get("fit")
            listed = fit.get("signals") if isinstance(fit, Mapping) else None
            for name in listed if isinstance(listed, list) else ["network"]:
                if str(name) not in signals:
                    signals.append(str(name))
        tracks.append(
            Track(
                track=tid,
                side=side,
                frame_indices=np.array([i for i, _ in items], dtype=np.int64),
                pose_axis_angle=np.stack([h.pose_axis_angle for _, h in items]),
                betas=np.stack([h.betas for _, h in items]),
                transl=np.stack([h.transl for _, h in items]),
                K=items[0][1].K,
                fitted_frames=sum(bool(h.raw.get("fit")) for _, h in items),
                scores=np.array([h.score for _, h in items], dtype=np.float64),
                signals=", ".join(signals),
            )
        )
    return tracks


DETECTOR_NAMES = {"mediapipe": "MediaPipe Hands", "hamr": "the HAMR network"}
SIGNAL_NAMES = {
    "mediapipe_2d": "MediaPipe 2D",
    "mediapipe_3d": "MediaPipe 3D",
    "network": "network",
}


def describe(doc: Any) -> list[str]:
    """Short lines for the UI about a hand's stored record: the one-hand ``hamr.prediction/1``
    kept on an imported armature, or the ``hamr.video/1`` track record of a keyed one. Unknown
    or damaged records give one line saying so (never an exception)."""
    if not isinstance(doc, Mapping):
        return ["No HAMR record on this hand"]
    schema = doc.get("schema")
    if schema == VIDEO_SCHEMA:
        lines = [f"Video track {doc.get('track', '?')}, {doc.get('fps', 0):g} fps"]
        if isinstance(doc.get("score"), (int, float)):
            lines.append(f"Median confidence {float(doc['score']):.2f}")
        frames, fitted = doc.get("frames"), doc.get("fitted_frames")
        if isinstance(frames, int) and isinstance(fitted, int):
            lines.append(f"Fitted to landmarks on {fitted} of {frames} frames")
        return lines
    hands = doc.get("hands")
    if schema != PREDICTION_SCHEMA or not isinstance(hands, list) or not hands:
        return ["Unrecognised HAMR record"]
    hand = hands[0] if isinstance(hands[0], Mapping) else {}
    side = str(hand.get("side", "?")).capitalize()
    lines = [f"{side} hand, confidence {float(hand.get('score', 0.0)):.2f}"]
    detector = doc.get("detector")
    lines.append(
        f"Found by {DETECTOR_NAMES[detector]}" if detector in DETECTOR_NAMES else "Box given"
    )
    fit = hand.get("fit")
    if isinstance(fit, Mapping) and "rms_px_after" in fit:
        before, after = float(fit.get("rms_px_before", math.nan)), float(fit["rms_px_after"])
        lines.append(f"Fitted to landmarks: {before:.1f} -> {after:.1f} px")
        signals = fit.get("signals")
        if isinstance(signals, list) and signals:
            names = ", ".join(SIGNAL_NAMES.get(str(x), str(x)) for x in signals)
            lines.append(f"Signals: {names}")
        weight = fit.get("network_weight")
        if isinstance(weight, (int, float)):
            lines.append(f"Network weight {float(weight):.2f}")
    else:
        lines.append("Not fitted to landmarks (the network's hand)")
    return lines


def image_size_from_K(K: np.ndarray) -> tuple[int, int]:
    """Image size implied by a K whose principal point is the image centre (the backend's
    default): (round(2 cx), round(2 cy)). Used only when a video result carries no image size."""
    return int(round(2 * K[0, 2])), int(round(2 * K[1, 2]))
