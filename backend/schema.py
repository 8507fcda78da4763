"""The JSON the backend speaks, one home per schema (DESIGN.md "Prediction JSON"):

- `hamr.prediction/1` (`prediction_json`): one photo's hands;
- `hamr.video/1` (`video_json`): a clip's frames, each hand with a stable "track";
- `hamr.rig/1` (`rig_json`): what Blender needs to build the rig of a hand model.

Inside the pipelines a hand is a typed `Hand` record; it becomes JSON (`Hand.to_json`) only at
the edge, so working data such as MediaPipe's landmarks rides along without ever reaching the
output. The Blender extension's parser of these documents is `hamr_blender.io.payload`.
Imports numpy and the backend's hand model.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.hand_model.constants import (
    KEYPOINT_NAMES,
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    NUM_BETAS,
    NUM_POSE_CORRECTIVES,
    TIP_NAMES,
    TIP_PARENTS,
    check_side,
)
from backend.hand_model.model import hand_model_id, load_hand_arrays

PREDICTION_SCHEMA = "hamr.prediction/1"
VIDEO_SCHEMA = "hamr.video/1"
RIG_SCHEMA = "hamr.rig/1"


@dataclass
class Hand:
    """One reconstructed hand, as the pipelines pass it along (fields as in `hamr.prediction/1`;
    lists of floats, as they go into JSON)."""

    side: str  # "right" / "left"
    score: float  # confidence in [0, 1]
    box_xyxy: list[float]  # the hand box used, image pixels
    crop_xyxy: list[float]  # the square crop around it that the network saw
    pose_axis_angle: list[list[float]]  # (16, 3) MANO joint order, flat-hand rest
    betas: list[float]  # (10,)
    cam_weak: list[float]  # the network's weak camera of the crop (s, tx, ty)
    camera: dict[str, Any]  # {"K": (3, 3)} the full-image pinhole
    transl: list[float]  # (3,) camera-frame translation of the model's origin, metres
    joints3d_cam: list[list[float]]  # (21, 3) camera frame, metres
    keypoints2d: list[list[float]]  # (21, 2) joints3d_cam projected with K, image pixels
    fit: dict[str, Any] | None = None  # which signals made the hand and their residuals
    track: int | None = None  # video only: the hand's track id, stable across frames
    # working data, never in the JSON: MediaPipe's (21, 2) landmarks for this hand, if any, and
    # its (21, 3) world landmarks (metres)
    landmarks: np.ndarray | None = field(default=None, repr=False, compare=False)
    world: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = {
            "side": self.side,
            "score": self.score,
            "box_xyxy": self.box_xyxy,
            "crop_xyxy": self.crop_xyxy,
            "pose_axis_angle": self.pose_axis_angle,
            "betas": self.betas,
            "cam_weak": self.cam_weak,
            "camera": self.camera,
            "transl": self.transl,
            "joints3d_cam": self.joints3d_cam,
            "keypoints2d": self.keypoints2d,
            "fit": self.fit,
        }
        if self.track is not None:
            out["track"] = self.track
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hand:
        """A hand dict of `hamr.prediction/1` or `hamr.video/1` -> Hand."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("landmarks", "world")]
        return cls(**{name: data.get(name) for name in names})


def prediction_json(
    width: int, height: int, checkpoint: str, hand_model: str, detector: str | None, hands
) -> dict[str, Any]:
    """`hamr.prediction/1`: the photo's size, the model that ran, what found the hands (None for
    given boxes) and the hands (`Hand`s)."""
    return {
        "schema": PREDICTION_SCHEMA,
        "image": {"width": width, "height": height},
        "model": {"checkpoint": checkpoint, "hand_model": hand_model},
        "detector": detector,
        "hands": [h.to_json() for h in hands],
    }


def video_json(fps: float, width: int, height: int, frames) -> dict[str, Any]:
    """`hamr.video/1`: frames are (index, hands) pairs, each hand a `Hand` with its track."""
    return {
        "schema": VIDEO_SCHEMA,
        "fps": fps,
        "image": {"width": width, "height": height},
        "frames": [{"index": i, "hands": [h.to_json() for h in hands]} for i, hands in frames],
    }


def encode_array(a: np.ndarray, dtype: str) -> dict:
    """numpy array -> {"dtype", "shape", "data"} (base64, little-endian, C order)."""
    arr = np.ascontiguousarray(np.asarray(a).astype(np.dtype(dtype).newbyteorder("<")))
    return {
        "dtype": dtype,
        "shape": list(arr.shape),
        "data": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def decode_array(obj: dict) -> np.ndarray:
    """Inverse of `encode_array`."""
    raw = base64.b64decode(obj["data"])
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"]).newbyteorder("<")).reshape(obj["shape"])


def rig_json(
    side: str = "right", source: str = "open", mano_dir: str | os.PathLike | None = None
) -> dict:
    """The `hamr.rig/1` dict of one side of a hand model. Arrays travel as {"dtype", "shape",
    "data": base64 of the little-endian C-order bytes} (`encode_array`), which numpy (inside
    Blender too) decodes with `decode_array`. Keys:

      schema, hand_model (id), side, joint_names (16, MANO order), parents (16), tip_names (5),
      tip_parents (5), keypoint_names (21), num_betas, num_pose_correctives,
      v_template (V,3) f4, faces (F,3) i4, weights (V,16) f4, J_regressor (16,V) f4,
      joints_rest (16,3) f4 (beta = 0), shapedirs (V,3,10) f4, joints_shapedirs (16,3,10) f4 (how
      the joints move with beta: J_regressor applied to shapedirs), posedirs (V,3,135) f4 or
      absent when all zero (`pose_correctives_zero` says which), tip_vertex_ids (5) i4,
      nail_mask (V) u1 (zeros if the model has none).

    All in the hand model's own frame (metres); the frame conversion into Blender is the
    extension's."""
    check_side(side)
    a = load_hand_arrays(source, side, mano_dir)
    v = np.asarray(a["v_template"], dtype=np.float64)
    shapedirs = np.asarray(a["shapedirs"], dtype=np.float64)[:, :, :NUM_BETAS]
    reg = np.asarray(a["J_regressor"], dtype=np.float64)
    posedirs = np.asarray(a["posedirs"], dtype=np.float64)
    zero_correctives = not np.any(posedirs)
    nail = a.get("nail_mask", np.zeros(len(v), dtype=bool))
    data = {
        "schema": RIG_SCHEMA,
        "hand_model": hand_model_id(source, mano_dir),
        "side": side,
        "joint_names": list(MANO_JOINT_NAMES),
        "parents": list(MANO_PARENTS),
        "tip_names": list(TIP_NAMES),
        "tip_parents": list(TIP_PARENTS),
        "keypoint_names": list(KEYPOINT_NAMES),
        "num_betas": NUM_BETAS,
        "num_pose_correctives": NUM_POSE_CORRECTIVES,
        "pose_correctives_zero": zero_correctives,
        "v_template": encode_array(v, "f4"),
        "faces": encode_array(a["f"], "i4"),
        "weights": encode_array(a["weights"], "f4"),
        "J_regressor": encode_array(reg, "f4"),
        "joints_rest": encode_array(reg @ v, "f4"),
        "shapedirs": encode_array(shapedirs, "f4"),
        "joints_shapedirs": encode_array(np.einsum("jv,vcl->jcl", reg, shapedirs), "f4"),
        "tip_vertex_ids": encode_array(a["tip_vertex_ids"], "i4"),
        "nail_mask": encode_array(np.asarray(nail, dtype=np.uint8), "u1"),
    }
    if not zero_correctives:
        data["posedirs"] = encode_array(posedirs, "f4")
    return data
