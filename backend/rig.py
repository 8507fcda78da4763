"""Rig data for Blender (`GET /v1/model?side=`): everything needed to build the rigged hand.

Format `hamr.rig/1` (JSON). Arrays travel as {"dtype", "shape", "data": base64 of the little-endian
C-order bytes}, which numpy (inside Blender too) decodes with `decode_array`. Keys:

  schema, hand_model (id), side, joint_names (16, MANO order), parents (16), tip_names (5),
  tip_parents (5), keypoint_names (21), num_betas, num_pose_correctives,
  v_template (V,3) f4, faces (F,3) i4, weights (V,16) f4, J_regressor (16,V) f4,
  joints_rest (16,3) f4 (β = 0), shapedirs (V,3,10) f4, joints_shapedirs (16,3,10) f4 (how the
  joints move with β: J_regressor applied to shapedirs), posedirs (V,3,135) f4 or absent when all
  zero (`pose_correctives_zero` says which), tip_vertex_ids (5) i4, nail_mask (V) u1 (zeros if the
  model has none).

All in the hand model's own frame (metres); the frame conversion into Blender is the extension's.
Imports numpy and the backend's hand model.
"""

from __future__ import annotations

import base64
import os

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

SCHEMA = "hamr.rig/1"


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


def rig_data(
    side: str = "right", source: str = "open", mano_dir: str | os.PathLike | None = None
) -> dict:
    """The `hamr.rig/1` dict of one side of a hand model."""
    check_side(side)
    a = load_hand_arrays(source, side, mano_dir)
    v = np.asarray(a["v_template"], dtype=np.float64)
    shapedirs = np.asarray(a["shapedirs"], dtype=np.float64)[:, :, :NUM_BETAS]
    reg = np.asarray(a["J_regressor"], dtype=np.float64)
    posedirs = np.asarray(a["posedirs"], dtype=np.float64)
    zero_correctives = not np.any(posedirs)
    nail = a.get("nail_mask", np.zeros(len(v), dtype=bool))
    data = {
        "schema": SCHEMA,
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
