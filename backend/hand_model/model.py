"""The hand-model layer: one interface over the embedded open hand model and official MANO.

`HandModel` wraps `smplx.MANO` thinly (as HaMeR's wrapper does): smplx does the LBS; this module
only picks the arrays, registers the fingertip vertex ids and the 21-keypoint order as buffers, and
returns vertices, the 16 MANO joints and the 21 keypoints for a batch of poses (B, 16, 3 axis-angle,
flat-hand rest) and shapes (B, 10).

Sources: ``"open"`` (the default, shipped in backend/assets/open_hand) or ``"mano"`` (the user's
official MANO_RIGHT.pkl / MANO_LEFT.pkl, read by `mano_official` without chumpy).
Imports torch, numpy and smplx; never bpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.lbs import lbs
from smplx.utils import Struct
from torch import Tensor, nn

from .constants import (
    KEYPOINTS_FROM_JOINTS_AND_TIPS,
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    NUM_BETAS,
    NUM_JOINTS,
    check_side,
)

OPEN_HAND_DIR = Path(__file__).resolve().parents[1] / "assets" / "open_hand"
SOURCES = ("open", "mano")
# The arrays every source provides (MANO layout plus fingertip ids).
ARRAY_KEYS = (
    "v_template",
    "shapedirs",
    "posedirs",
    "J_regressor",
    "kintree_table",
    "weights",
    "f",
    "hands_components",
    "hands_mean",
    "tip_vertex_ids",
)


@lru_cache(maxsize=8)
def _load_open_arrays(side: str) -> dict[str, np.ndarray]:
    path = OPEN_HAND_DIR / f"MANO_{side.upper()}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"the embedded open hand model is missing ({path}); regenerate it with `make model`"
        )
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def open_hand_metadata() -> dict:
    """The generator's report for the embedded model (id, mesh facts, shape-space meaning)."""
    return json.loads((OPEN_HAND_DIR / "metadata.json").read_text())


def load_hand_arrays(
    source: str = "open", side: str = "right", mano_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """MANO-layout arrays (v_template (V,3), shapedirs (V,3,10), posedirs (V,3,135), J_regressor
    (16,V), kintree_table (2,16), weights (V,16), f (F,3), hands_components, hands_mean,
    tip_vertex_ids (5,)) of one side of one hand-model source. Returned arrays are shared: copy
    before changing them."""
    check_side(side)
    if source == "open":
        return _load_open_arrays(side)
    if source == "mano":
        from .mano_official import load_official_mano

        return load_official_mano(mano_dir, side=side)
    raise ValueError(f"hand model source must be one of {SOURCES}, got {source!r}")


def hand_model_id(source: str = "open", mano_dir: str | os.PathLike | None = None) -> str:
    """Identifier recorded in checkpoints: the open model's generator id, or a hash of MANO's."""
    if source == "open":
        return open_hand_metadata()["id"]
    arrays = load_hand_arrays("mano", "right", mano_dir)
    h = hashlib.sha256(np.ascontiguousarray(arrays["v_template"], dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(arrays["shapedirs"], dtype=np.float64).tobytes())
    return f"mano-official-{h.hexdigest()[:12]}"


@dataclass
class HandOutput:
    """Result of a forward pass, all in the model frame (plus `transl`), metres."""

    vertices: Tensor  # (B, V, 3)
    joints: Tensor  # (B, 16, 3) MANO joint order
    keypoints: Tensor  # (B, 21, 3) FreiHAND/OpenPose keypoint order, fingertips from vertices


class HandModel(nn.Module):
    """MANO-parameterised hand of one side: pose (B,16,3) + betas (B,10) -> vertices and joints."""

    def __init__(
        self,
        side: str = "right",
        source: str = "open",
        mano_dir: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.side = check_side(side)
        self.source = source
        arrays = load_hand_arrays(source, side, mano_dir)
        struct = Struct(**{k: arrays[k] for k in ARRAY_KEYS})
        # smplx prints a warning about 10 shape coefficients, which is MANO's normal size
        with contextlib.redirect_stdout(io.StringIO()):
            self.mano = smplx.MANO(
                model_path="",
                data_struct=struct,
                is_rhand=side == "right",
                use_pca=False,
                flat_hand_mean=True,
                num_betas=NUM_BETAS,
                create_global_orient=False,
                create_hand_pose=False,
                create_betas=False,
                create_transl=False,
                create_body_pose=False,  # SMPL's body pose has no meaning for a hand
                dtype=dtype,
            )
        self.register_buffer("tip_vertex_ids", torch.as_tensor(arrays["tip_vertex_ids"]).long())
        self.register_buffer("keypoint_index", torch.tensor(KEYPOINTS_FROM_JOINTS_AND_TIPS))
        self.faces = np.asarray(arrays["f"], dtype=np.int64)  # (F, 3)
        self.parents = MANO_PARENTS
        self.joint_names = MANO_JOINT_NAMES
        self.num_vertices = int(arrays["v_template"].shape[0])

    @property
    def faces_tensor(self) -> Tensor:
        """(F, 3) int64 faces on the model's device."""
        return self.mano.faces_tensor

    def forward(
        self, pose: Tensor, betas: Tensor | None = None, transl: Tensor | None = None
    ) -> HandOutput:
        """pose (B, 16, 3) or (B, 48) axis-angle, root first, flat-hand rest; betas (B, 10) or
        None (zeros); transl (B, 3) or None. Returns vertices (B, V, 3), joints (B, 16, 3) and
        keypoints (B, 21, 3)."""
        pose = pose.reshape(pose.shape[0], NUM_JOINTS * 3)
        if betas is None:
            betas = pose.new_zeros(pose.shape[0], NUM_BETAS)
        out = self.mano(
            betas=betas, global_orient=pose[:, :3], hand_pose=pose[:, 3:], transl=transl
        )
        tips = out.vertices[:, self.tip_vertex_ids]  # (B, 5, 3)
        keypoints = torch.cat([out.joints, tips], dim=1)[:, self.keypoint_index]  # (B, 21, 3)
        return HandOutput(out.vertices, out.joints, keypoints)

    def forward_rotmat(
        self, rotmats: Tensor, betas: Tensor | None = None, transl: Tensor | None = None
    ) -> HandOutput:
        """Like `forward`, from rotation matrices (B, 16, 3, 3) instead of axis-angle: the path a
        network regressing a continuous rotation representation takes (no log map needed)."""
        if betas is None:
            betas = rotmats.new_zeros(rotmats.shape[0], NUM_BETAS)
        m = self.mano
        # smplx's own LBS (Eqs. 1-4 of MANO) with rotation matrices in, no axis-angle round trip
        verts, joints = lbs(
            betas,
            rotmats,
            m.v_template,
            m.shapedirs,
            m.posedirs,
            m.J_regressor,
            m.parents,
            m.lbs_weights,
            pose2rot=False,
        )
        if transl is not None:
            verts = verts + transl[:, None]
            joints = joints + transl[:, None]
        tips = verts[:, self.tip_vertex_ids]  # (B, 5, 3)
        keypoints = torch.cat([joints, tips], dim=1)[:, self.keypoint_index]  # (B, 21, 3)
        return HandOutput(verts, joints, keypoints)

    def rest_joints(self, betas: Tensor | None = None) -> Tensor:
        """(B, 16, 3) joint centres of the shaped hand in the flat rest pose, model frame."""
        if betas is None:
            betas = self.mano.shapedirs.new_zeros(1, NUM_BETAS)
        v = self.mano.v_template + torch.einsum("bl,vcl->bvc", betas, self.mano.shapedirs)
        return torch.einsum("jv,bvc->bjc", self.mano.J_regressor, v)


def mirror_pose(pose: Tensor) -> Tensor:
    """Axis-angle (..., 3) of a right hand -> its left-hand mirror image: (x, y, z) -> (x, -y, -z).

    With M = diag(-1, 1, 1), R_left = M R_right M, which maps the axis (x, y, z) to (x, -y, -z)
    and keeps the angle.
    """
    return pose * pose.new_tensor([1.0, -1.0, -1.0])


def mirror_points(points: Tensor) -> Tensor:
    """Points (..., 3) mirrored through the x = 0 plane (x -> -x); model or camera frame."""
    return points * points.new_tensor([-1.0, 1.0, 1.0])
