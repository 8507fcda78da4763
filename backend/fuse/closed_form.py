"""Closed-form inverse kinematics: 21 3D hand keypoints -> MANO pose, shape and translation.

A fast, iteration-free start for the fusion of every signal into the MANO hand (the refinement in
`backend.fuse.gauss_newton` then polishes it). Batched over hands; on one CPU thread ~3 ms for
one hand, ~0.13 ms per hand for 32. For keypoints (B, 21, 3) in metres, in any frame (camera
frame, MediaPipe's world landmarks, ...), in the project's 21-keypoint order (`KEYPOINT_NAMES`):

1. shape beta (B, 10) from bone lengths: the rest skeleton is linear in beta (the joints' shape
   blend J_regressor @ shapedirs, the fingertips' from their vertices), so each length is a known
   function of beta; three Gauss-Newton steps of a ridge-regularised least squares on the 20
   bones and the 10 other distances between the palm's rigid points (weak shape directions shrink
   towards 0; `beta_ridge`). Or beta given.
2. global orientation from the palm: the wrist and the five first joints of the digits (index1,
   middle1, pinky1, ring1, thumb1) hang rigidly from the root, so a weighted Kabsch fit of the rest
   palm onto the observed one gives the root rotation exactly for a model's own keypoints.
3. every digit joint, root to tip: its child's observed position, seen from the joint's model
   position in the parent's recovered frame, fixes the child bone's direction (2 degrees of
   freedom). The rotation is written as flexion about the digit's flexion axis after a sideways
   turn about its spread axis (the axes of `backend.hand_model.poses.digit_axes`, the convention of
   `pose_from_angles`), solved exactly (Paden-Kahan subproblem 2). That sets the unobservable twist
   about the bone anatomically (none), so the named poses come back as they were built.
4. the fingertips are mesh vertices skinned partly to the middle phalanx and moved by the pose
   correctives, so one correction re-aims each distal joint with the tip's actual offset.
5. translation: the mean offset between the input and the model's keypoints.

Missing keypoints (NaN, or False in `mask`) drop out of every step; a joint whose child is missing
keeps its rest rotation, so no NaN ever reaches the outputs.

`KeypointLayer` is the hand model reduced to its 21 keypoints (16 joints by forward kinematics, the
5 fingertip vertices by linear blend skinning with their pose correctives): the same numbers as
`HandModel.forward(...).keypoints` without the mesh, cheap enough to differentiate many times.

Imports torch, the backend's hand model and `backend.network.rotation` only (never FastAPI, bpy,
OpenCV, the training package or other backend modules).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.hand_model.constants import (
    KEYPOINT_PARENTS,
    KEYPOINTS_FROM_JOINTS_AND_TIPS,
    NUM_BETAS,
    NUM_JOINTS,
    check_side,
)
from backend.hand_model.model import HandModel
from backend.network.rotation import axis_angle_to_matrix, matrix_to_axis_angle

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
# Keypoint index of every MANO joint (inverse of KEYPOINTS_FROM_JOINTS_AND_TIPS for joints).
JOINT_KEYPOINT: tuple[int, ...] = tuple(KEYPOINTS_FROM_JOINTS_AND_TIPS.index(j) for j in range(16))
# Keypoint index of each fingertip, thumb first.
TIP_KEYPOINT: tuple[int, ...] = tuple(
    KEYPOINTS_FROM_JOINTS_AND_TIPS.index(16 + t) for t in range(5)
)
# The root and the digits' first joints: rigid with the root, so they fix its rotation.
PALM_JOINTS: tuple[int, ...] = (0, *LEVELS[0])
# Distances used for the shape: the 20 bones of the keypoint skeleton and the other pairs of palm
# points (their distances are pose-independent too).
_PALM_KEYPOINTS = tuple(JOINT_KEYPOINT[j] for j in PALM_JOINTS)
SHAPE_EDGES: tuple[tuple[int, int], ...] = tuple(
    (k, p) for k, p in enumerate(KEYPOINT_PARENTS) if p >= 0
) + tuple(
    (a, b)
    for i, a in enumerate(_PALM_KEYPOINTS)
    for b in _PALM_KEYPOINTS[i + 1 :]
    if a != 0 and b != 0  # the wrist's pairs are bones already
)
DEFAULT_BETA_RIDGE = 1e-6  # m^2: a shape direction moving the lengths < 1 mm per unit shrinks


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


@dataclass
class ClosedFormResult:
    """MANO parameters recovered from 3D keypoints (the hand model's side and frame)."""

    pose: Tensor  # (B, 16, 3) axis-angle, root first, flat-hand rest
    betas: Tensor  # (B, 10)
    transl: Tensor  # (B, 3)
    rotmats: Tensor  # (B, 16, 3, 3) the same pose as local rotation matrices


def digit_frames(rest_joints: Tensor, side: str) -> tuple[Tensor, Tensor]:
    """Flexion and spread axes (B, 5, 3) of the digits in `LEVELS` order, rest frame, for rest
    joints (B, 16, 3): the batched `backend.hand_model.poses.digit_axes`."""
    along = rest_joints[:, 4] - rest_joints[:, 0]  # wrist -> middle knuckle
    across = rest_joints[:, 1] - rest_joints[:, 7]  # pinky knuckle -> index knuckle
    normal = (
        torch.linalg.cross(across, along) if side == "right" else torch.linalg.cross(along, across)
    )
    normal = F.normalize(normal, dim=-1)[:, None].expand(-1, 5, -1)  # (B, 5, 3)
    first, second = list(LEVELS[0]), list(LEVELS[1])
    d = F.normalize(rest_joints[:, second] - rest_joints[:, first], dim=-1)  # (B, 5, 3)
    flex = F.normalize(torch.linalg.cross(d, normal, dim=-1), dim=-1)
    # spread: +-n, signed so a positive turn moves the digit away from the middle finger (the
    # thumb away from the index), as in `digit_axes`
    middle = d[:, 1:2]
    away = d - middle
    away = torch.cat(
        [away[:, :1], torch.zeros_like(away[:, 1:2]), away[:, 2:4], d[:, 4:] - d[:, :1]], 1
    )
    sign = torch.where((torch.linalg.cross(normal, d, dim=-1) * away).sum(-1) >= 0, 1.0, -1.0)
    return flex, normal * sign[..., None].to(normal.dtype)


def _rotation_about(axis: Tensor, angle: Tensor) -> Tensor:
    """(..., 3, 3) rotation by angle (...) about unit axis (..., 3)."""
    return axis_angle_to_matrix(axis * angle[..., None])


def _signed_angle(axis: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """(...) angle of the rotation about unit axis (..., 3) taking u's direction towards v's,
    both projected on the plane normal to the axis; 0 where either projection vanishes."""
    u = u - (u * axis).sum(-1, keepdim=True) * axis
    v = v - (v * axis).sum(-1, keepdim=True) * axis
    return torch.atan2((axis * torch.linalg.cross(u, v, dim=-1)).sum(-1), (u * v).sum(-1))


def flex_spread_rotation(
    rest_dir: Tensor, target_dir: Tensor, flex: Tensor, spread: Tensor
) -> Tensor:
    """(..., 3, 3) R = R(flex, a) R(spread, b) with R rest_dir parallel to target_dir.

    Paden-Kahan subproblem 2 for perpendicular unit axes (..., 3): the intermediate direction
    z = R(spread, b) rest_dir keeps rest_dir's spread component and must have target_dir's flexion
    component (a turn about flex keeps it), so z = alpha flex + beta spread + gamma (flex x spread)
    with gamma^2 = 1 - alpha^2 - beta^2. Of the two roots the one on rest_dir's side is taken (the
    one giving the identity at rest; spread turns stay below 90 degrees). A target out of reach
    (gamma^2 < 0, only for a sideways turn of nearly 90 degrees) gets the nearest z."""
    p = F.normalize(rest_dir, dim=-1)
    q = F.normalize(target_dir, dim=-1)
    third = torch.linalg.cross(flex, spread, dim=-1)
    alpha = (flex * q).sum(-1, keepdim=True)
    beta = (spread * p).sum(-1, keepdim=True)
    gamma = (1.0 - alpha.square() - beta.square()).clamp(min=0.0).sqrt()
    side = torch.where((third * p).sum(-1, keepdim=True) >= 0, 1.0, -1.0).to(p.dtype)
    z = alpha * flex + beta * spread + side * gamma * third
    b = _signed_angle(spread, p, z)
    a = _signed_angle(flex, z, q)
    return _rotation_about(flex, a) @ _rotation_about(spread, b)


def _kabsch(source: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """(B, 3, 3) rotation R minimising sum_i w_i |R (s_i - s_bar) - (t_i - t_bar)|^2 for points
    (B, N, 3) and weights (B, N) (weighted centroids); identity where fewer than 3 points count."""
    w = weight / weight.sum(-1, keepdim=True).clamp(min=1e-12)
    s = source - (w[..., None] * source).sum(-2, keepdim=True)
    t = target - (w[..., None] * target).sum(-2, keepdim=True)
    cov = torch.einsum("bn,bni,bnj->bij", w, t, s)  # (B, 3, 3) sum w t s^T
    u, _, vh = torch.linalg.svd(cov)
    det = torch.linalg.det(u @ vh)
    fix = torch.ones_like(u[..., 0, :])  # (B, 3)
    fix[:, 2] = torch.where(det < 0, -1.0, 1.0)
    rot = (u * fix[:, None, :]) @ vh
    enough = (weight > 0).sum(-1) >= 3
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device).expand_as(rot)
    return torch.where(enough[:, None, None], rot, eye)


def betas_from_lengths(
    layer: KeypointLayer,
    keypoints3d: Tensor,
    valid: Tensor,
    ridge: float = DEFAULT_BETA_RIDGE,
    iterations: int = 3,
) -> Tensor:
    """(B, 10) shape whose rest skeleton has the bone and palm lengths (`SHAPE_EDGES`) of
    keypoints (B, 21, 3) where both ends are valid (B, 21): Gauss-Newton on
    sum_e (|K_a(beta) - K_b(beta)| - l_e)^2 + ridge |beta|^2, from beta = 0."""
    a_idx = [a for a, _ in SHAPE_EDGES]
    b_idx = [b for _, b in SHAPE_EDGES]
    observed = (keypoints3d[:, a_idx] - keypoints3d[:, b_idx]).norm(dim=-1)  # (B, E)
    weight = (valid[:, a_idx] & valid[:, b_idx]).to(keypoints3d.dtype)  # (B, E)
    zero = keypoints3d.new_zeros(1, NUM_BETAS)
    template = layer.rest_keypoints(zero)[0]  # (21, 3)
    both = torch.cat([layer.joints_shapedirs, layer.tips_shapedirs], dim=0)
    shapedirs = both[list(KEYPOINTS_FROM_JOINTS_AND_TIPS)]  # (21, 3, 10)
    edge0 = template[a_idx] - template[b_idx]  # (E, 3)
    edge_dirs = shapedirs[a_idx] - shapedirs[b_idx]  # (E, 3, 10)
    betas = keypoints3d.new_zeros(keypoints3d.shape[0], NUM_BETAS)
    eye = torch.eye(NUM_BETAS, dtype=betas.dtype, device=betas.device)
    for _ in range(iterations):
        edge = edge0 + torch.einsum("ecl,bl->bec", edge_dirs, betas)  # (B, E, 3)
        length = edge.norm(dim=-1).clamp(min=1e-9)
        grad = torch.einsum("bec,ecl->bel", edge / length[..., None], edge_dirs)  # (B, E, 10)
        wg = grad * weight[..., None]
        lhs = wg.transpose(1, 2) @ grad + ridge * eye
        rhs = (wg * (observed - length)[..., None]).sum(1) - ridge * betas
        betas = betas + torch.linalg.solve(lhs, rhs)
    return betas


def keypoints_to_mano(
    hand_model: HandModel,
    keypoints3d: Tensor,
    side: str | None = None,
    *,
    mask: Tensor | None = None,
    betas: Tensor | None = None,
    beta_ridge: float = DEFAULT_BETA_RIDGE,
    tip_correction: bool = True,
) -> ClosedFormResult:
    """MANO pose (B, 16, 3), betas (B, 10) and translation (B, 3) whose keypoints match
    keypoints3d (B, 21, 3) (metres, any frame, the project's keypoint order), in closed form.

    side: the hand's side, which must be the model's (None: the model's); a left hand needs
    `HandModel("left")`. mask: (B, 21) bool, False for keypoints to ignore (NaN coordinates are
    ignored too). betas: (B, 10) to fix the shape instead of estimating it from the bone lengths
    (`beta_ridge`, m^2, is the ridge of that estimate). tip_correction: re-aim the distal joints
    once with the fingertips' actual skinned offsets (one extra keypoint evaluation)."""
    side = check_side(side or hand_model.side)
    if side != hand_model.side:
        raise ValueError(f"a {side} hand needs HandModel({side!r}), got a {hand_model.side} model")
    if keypoints3d.ndim != 3 or keypoints3d.shape[1:] != (21, 3):
        raise ValueError(f"keypoints3d must be (B, 21, 3), got {tuple(keypoints3d.shape)}")
    layer = keypoint_layer(hand_model)
    dtype, device = layer.joints_template.dtype, layer.joints_template.device
    keypoints3d = keypoints3d.to(dtype=dtype, device=device)
    eye = torch.eye(3, dtype=dtype, device=device)
    valid = torch.isfinite(keypoints3d).all(-1)  # (B, 21)
    if mask is not None:
        valid = valid & mask.to(device=device, dtype=torch.bool)
    observed = torch.where(valid[..., None], keypoints3d, torch.zeros_like(keypoints3d))
    count = keypoints3d.shape[0]

    if betas is None:
        betas = betas_from_lengths(layer, observed, valid, beta_ridge)
    else:
        betas = torch.nan_to_num(betas.to(dtype=dtype, device=device).expand(count, NUM_BETAS))
    rest = layer.rest_joints(betas)  # (B, 16, 3)
    rest_tips = layer.rest_tips(betas)  # (B, 5, 3)
    flex, spread = digit_frames(rest, side)  # (B, 5, 3) each

    # root: the palm's rigid points; model joints are J_0 + R0 (J_j - J_0) + transl
    palm_kp = [JOINT_KEYPOINT[j] for j in PALM_JOINTS]
    palm_valid = valid[:, palm_kp].to(dtype)
    root = _kabsch(rest[:, list(PALM_JOINTS)], observed[:, palm_kp], palm_valid)  # (B, 3, 3)
    rotmats = eye.repeat(count, NUM_JOINTS, 1, 1)
    rotmats[:, 0] = root
    wsum = palm_valid.sum(-1, keepdim=True).clamp(min=1e-12)
    rest_palm = rest[:, list(PALM_JOINTS)] - rest[:, :1]
    posed_palm = (root[:, None] @ rest_palm[..., None])[..., 0] + rest[:, :1]
    transl = ((observed[:, palm_kp] - posed_palm) * palm_valid[..., None]).sum(1) / wsum

    def aim(level: int, parent_rot: Tensor, joint_pos: Tensor, child_rest: Tensor) -> Tensor:
        """Local rotations (B, 5, 3, 3) of one level's joints pointing their child bones at the
        observed children; identity where the child is missing."""
        joints = list(LEVELS[level])
        if level < 2:
            child_kp = [JOINT_KEYPOINT[j + 1] for j in joints]
        else:
            child_kp = [TIP_KEYPOINT[t] for t in LEVEL_TIPS]
        world = observed[:, child_kp] - transl[:, None] - joint_pos  # (B, 5, 3)
        target = (parent_rot.transpose(-1, -2) @ world[..., None])[..., 0]
        ok = valid[:, child_kp] & (target.norm(dim=-1) > 1e-9)
        target = torch.where(ok[..., None], target, child_rest)
        rot = flex_spread_rotation(child_rest, target, flex, spread)
        return torch.where(ok[..., None, None], rot, eye.expand_as(rot))

    parent_rot = root[:, None].expand(-1, 5, -1, -1)  # (B, 5, 3, 3)
    parent_pos = rest[:, :1].expand(-1, 5, -1)  # (B, 5, 3)
    parent_rest = rest[:, :1].expand(-1, 5, -1)
    level_state = []
    for level, joints in enumerate(LEVELS):
        here = rest[:, list(joints)]  # (B, 5, 3)
        joint_pos = parent_pos + (parent_rot @ (here - parent_rest)[..., None])[..., 0]
        child = rest[:, [j + 1 for j in joints]] if level < 2 else rest_tips[:, list(LEVEL_TIPS)]
        local = aim(level, parent_rot, joint_pos, child - here)
        rotmats[:, list(joints)] = local
        level_state.append((parent_rot, joint_pos))
        parent_rot, parent_pos, parent_rest = parent_rot @ local, joint_pos, here

    if tip_correction:
        # the fingertip's skinned offset from the distal joint, in that joint's frame: the rest
        # direction that the distal rotation really moves
        keypoints = layer_keypoints(layer, rotmats, betas)
        distal_rot = parent_rot  # (B, 5, 3, 3) global rotations of the distal joints
        parent_rot, joint_pos = level_state[2]
        tips = keypoints[:, [TIP_KEYPOINT[t] for t in LEVEL_TIPS]]
        offset = (distal_rot.transpose(-1, -2) @ (tips - joint_pos)[..., None])[..., 0]
        rotmats[:, list(LEVELS[2])] = aim(2, parent_rot, joint_pos, offset)

    keypoints = layer_keypoints(layer, rotmats, betas)
    vw = valid.to(dtype)[..., None]
    transl = ((observed - keypoints) * vw).sum(1) / vw.sum(1).clamp(min=1e-12)
    pose = matrix_to_axis_angle(rotmats)
    return ClosedFormResult(pose=pose, betas=betas, transl=transl, rotmats=rotmats)


__all__ = [
    "LEVELS",
    "ClosedFormResult",
    "KeypointLayer",
    "betas_from_lengths",
    "digit_frames",
    "flex_spread_rotation",
    "forward_kinematics",
    "keypoint_layer",
    "keypoints_to_mano",
    "layer_keypoints",
]
