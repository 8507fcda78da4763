"""The hand model reduced to its 21 keypoints: 16 joints by forward kinematics, the 5 fingertip
vertices by linear blend skinning with their pose correctives. `layer_keypoints` gives the numbers
of `HandModel.forward_rotmat(...).keypoints` (to float rounding) without the 778-vertex mesh, at
about a fifth of its cost: what the network's head computes when no mesh is asked for
(`HamrNet.head(mesh=False)`, the photo path) and what the fusion fits (`backend.fuse`, which also
keeps a float64 numpy copy of this layer, `closed_form.KeypointArrays`).

Imports torch and the hand model's constants and model only.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from .constants import KEYPOINTS_FROM_JOINTS_AND_TIPS
from .model import HandModel

# The digits' joints by depth in the MANO tree, digits in MANO order (index, middle, pinky, ring,
# thumb): each level's parents are the previous level (the root for level 1), so forward and
# inverse kinematics run one level at a time for all five digits at once.
LEVELS: tuple[tuple[int, ...], ...] = ((1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))
# The fingertip (index into the 5 tips, thumb first) at the end of each digit of `LEVELS`.
LEVEL_TIPS: tuple[int, ...] = (1, 2, 4, 3, 0)
_LEVEL_INDEX = tuple(torch.tensor(level) for level in LEVELS)
# MANO joint j sits at _FROM_LEVEL_ORDER[j] in (root, level 1, level 2, level 3) order
_FROM_LEVEL_ORDER = torch.tensor([(0, *sum(LEVELS, ())).index(j) for j in range(16)])
KEYPOINT_INDEX = torch.tensor(KEYPOINTS_FROM_JOINTS_AND_TIPS)


@dataclass(frozen=True)
class KeypointLayer:
    """The parts of a `HandModel` its 21 keypoints depend on (tensors in one dtype and device)."""

    side: str
    joints_template: Tensor  # (16, 3) rest joints at beta = 0
    joints_shapedirs: Tensor  # (16, 3, 10) J_regressor applied to shapedirs
    tips_template: Tensor  # (5, 3) rest fingertip vertices at beta = 0, thumb first
    tips_shapedirs: Tensor  # (5, 3, 10)
    tips_posedirs: Tensor  # (5, 3, 135) pose correctives of the fingertip vertices
    tips_weights: Tensor  # (5, 16) skinning weights of the fingertip vertices

    def rest_joints(self, betas: Tensor) -> Tensor:
        """(B, 16, 3) rest joints for betas (B, 10); equals `HandModel.rest_joints`."""
        return self.joints_template + torch.einsum("bl,jcl->bjc", betas, self.joints_shapedirs)

    def rest_tips(self, betas: Tensor) -> Tensor:
        """(B, 5, 3) rest fingertip vertices (thumb first) for betas (B, 10)."""
        return self.tips_template + torch.einsum("bl,jcl->bjc", betas, self.tips_shapedirs)

    def rest_keypoints(self, betas: Tensor) -> Tensor:
        """(B, 21, 3) rest keypoints for betas (B, 10), keypoint order."""
        both = torch.cat([self.rest_joints(betas), self.rest_tips(betas)], dim=-2)
        return both[..., list(KEYPOINTS_FROM_JOINTS_AND_TIPS), :]


_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keypoint_layer(hand_model: HandModel, dtype: torch.dtype | None = None) -> KeypointLayer:
    """The `KeypointLayer` of a hand model (cached per model and dtype)."""
    m = hand_model.mano
    dtype = dtype or m.shapedirs.dtype
    cache = _LAYERS.setdefault(hand_model, {})
    key = (dtype, m.shapedirs.device)
    if key not in cache:
        tips = hand_model.tip_vertex_ids
        shapedirs = m.shapedirs.to(dtype)  # (V, 3, 10)
        regressor = m.J_regressor.to(dtype)  # (16, V)
        template = m.v_template.to(dtype)  # (V, 3)
        posedirs = m.posedirs.to(dtype).reshape(m.posedirs.shape[0], -1, 3)  # (135, V, 3)
        cache[key] = KeypointLayer(
            side=hand_model.side,
            joints_template=regressor @ template,
            joints_shapedirs=torch.einsum("jv,vcl->jcl", regressor, shapedirs),
            tips_template=template[tips],
            tips_shapedirs=shapedirs[tips],
            tips_posedirs=posedirs[:, tips].permute(1, 2, 0).contiguous(),
            tips_weights=m.lbs_weights.to(dtype)[tips],
        )
    return cache[key]


def forward_kinematics(rest_joints: Tensor, rotmats: Tensor) -> tuple[Tensor, Tensor]:
    """Global rotations (..., 16, 3, 3) and joint positions (..., 16, 3) (no translation) from
    rest joints (..., 16, 3) and local rotations (..., 16, 3, 3); smplx's convention (the root
    stays at its rest position). One batched product per tree level, no in-place writes (so
    autograd, forward-mode and vmap all apply)."""
    device = rotmats.device
    rot = rotmats[..., :1, :, :]  # (..., 1, 3, 3) the root; parents of level 1
    pos = rest_joints[..., :1, :]
    parent_rest = pos
    rots, poss = [rot], [pos]
    for level in _LEVEL_INDEX:
        level = level.to(device)
        here = rest_joints.index_select(-2, level)  # (..., 5, 3)
        pos = pos + (rot @ (here - parent_rest)[..., None])[..., 0]
        rot = rot @ rotmats.index_select(-3, level)
        parent_rest = here
        rots.append(rot)
        poss.append(pos)
    # levels' order -> MANO order
    order = _FROM_LEVEL_ORDER.to(device)
    return torch.cat(rots, dim=-3).index_select(-3, order), torch.cat(poss, dim=-2).index_select(
        -2, order
    )


def layer_keypoints(
    layer: KeypointLayer, rotmats: Tensor, betas: Tensor, transl: Tensor | None = None
) -> Tensor:
    """(B, 21, 3) keypoints for local rotations (B, 16, 3, 3), betas (B, 10), transl (B, 3) or
    None; the numbers of `HandModel.forward_rotmat(...).keypoints` without the mesh."""
    rest = layer.rest_joints(betas)  # (B, 16, 3)
    glob, joints = forward_kinematics(rest, rotmats)
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    pose_feature = (rotmats[..., 1:, :, :] - eye).flatten(-3)  # (B, 135), smplx's order
    tips_rest = layer.rest_tips(betas) + torch.einsum(
        "bp,tcp->btc", pose_feature, layer.tips_posedirs
    )
    # linear blend skinning of the 5 tip vertices: sum_k w_k (G_k (v - J_k) + P_k)
    local = tips_rest[..., None, :] - rest[..., None, :, :]  # (B, 5, 16, 3)
    moved = (glob[..., None, :, :, :] @ local[..., None])[..., 0] + joints[..., None, :, :]
    tips = (layer.tips_weights[..., None] * moved).sum(-2)  # (B, 5, 3)
    keypoints = torch.cat([joints, tips], dim=-2).index_select(-2, KEYPOINT_INDEX.to(tips.device))
    return keypoints if transl is None else keypoints + transl[..., None, :]
