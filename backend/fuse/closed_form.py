"""Closed-form inverse kinematics: 21 3D hand keypoints -> MANO pose, shape and translation.

A fast, iteration-free start for the fusion of every signal into the MANO hand (the refinement in
`backend.fuse.gauss_newton` then polishes it). Batched over hands; on one CPU thread ~0.7 ms for
one hand, ~0.06 ms per hand for 64 (float64 numpy inside: on these (B, 21, 3)-sized arrays each
torch op costs ~5-10 us of dispatch, a numpy op ~1 us). For keypoints (B, 21, 3) in metres, in
any frame (camera frame, MediaPipe's world landmarks, ...), in the project's 21-keypoint order
(`KEYPOINT_NAMES`):

1. shape beta (B, 10) from bone lengths: the rest skeleton is linear in beta (the joints' shape
   blend J_regressor @ shapedirs, the fingertips' from their vertices), so each length is a known
   function of beta; three Gauss-Newton steps of a ridge-regularised least squares on the 20
   bones and the 10 other distances between the palm's rigid points (weak shape directions shrink
   towards 0; `beta_ridge`). Or beta given.
2. global orientation from the palm: the wrist and the five first joints of the digits (index1,
   middle1, pinky1, ring1, thumb1) hang rigidly from the root, so a weighted least-squares
   rotation of the rest palm onto the observed one (Horn's quaternion) gives the root rotation
   exactly for a model's own keypoints.
3. every digit joint, root to tip: its child's observed position, seen from the joint's model
   position in the parent's recovered frame, fixes the child bone's direction (2 degrees of
   freedom). The rotation is written as flexion about the digit's flexion axis after a sideways
   turn about its spread axis (the axes of `backend.hand_model.poses.digit_axes`, the convention of
   `pose_from_angles`), solved exactly (Paden-Kahan subproblem 2) as a quaternion, so the
   axis-angle comes without a matrix round trip. That sets the unobservable twist about the bone
   anatomically (none), so the named poses come back as they were built.
4. the fingertips are mesh vertices skinned partly to the middle phalanx and moved by the pose
   correctives, so one correction re-aims each distal joint with the tip's actual offset.
5. translation: the mean offset between the input and the model's keypoints.

Missing keypoints (NaN, or False in `mask`) drop out of every step; a joint whose child is missing
keeps its rest rotation, so no NaN ever reaches the outputs.

`KeypointLayer` (`backend.hand_model.keypoints`, re-exported here) is the hand model reduced to its
21 keypoints (16 joints by forward kinematics, the 5 fingertip vertices by linear blend skinning
with their pose correctives): the same numbers as `HandModel.forward(...).keypoints` without the
mesh. `layer_keypoints` evaluates it in torch (the differentiable reference the tests hold the
numpy path to); `KeypointArrays` is the same layer as
float64 numpy arrays, cached once per model, and `posed_hand` evaluates it for the closed form and
the refinement.

Imports numpy, torch and the backend's hand model only (never FastAPI, bpy, OpenCV, the training
package or other backend modules).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from backend.hand_model.constants import (
    KEYPOINT_PARENTS,
    KEYPOINTS_FROM_JOINTS_AND_TIPS,
    NUM_BETAS,
    NUM_JOINTS,
    check_side,
)
from backend.hand_model.keypoints import (  # noqa: F401  (re-exported)
    KEYPOINT_INDEX,
    LEVEL_TIPS,
    LEVELS,
    KeypointLayer,
    forward_kinematics,
    keypoint_layer,
    layer_keypoints,
)
from backend.hand_model.model import HandModel

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


@dataclass(frozen=True, eq=False)
class KeypointArrays:
    """`KeypointLayer` as float64 numpy arrays (`keypoint_arrays`)."""

    side: str
    joints_template: np.ndarray  # (16, 3) rest joints at beta = 0
    joints_shapedirs: np.ndarray  # (16, 3, 10)
    tips_template: np.ndarray  # (5, 3) rest fingertip vertices, thumb first
    tips_shapedirs: np.ndarray  # (5, 3, 10)
    tips_posedirs: np.ndarray  # (5, 3, 135)
    tips_weights: np.ndarray  # (5, 16) skinning weights of the fingertip vertices

    def rest_joints(self, betas: np.ndarray) -> np.ndarray:
        """(B, 16, 3) rest joints for betas (B, 10)."""
        flat = self.joints_shapedirs.reshape(-1, NUM_BETAS)  # (48, 10)
        return self.joints_template + (betas @ flat.T).reshape(-1, NUM_JOINTS, 3)

    def rest_tips(self, betas: np.ndarray) -> np.ndarray:
        """(B, 5, 3) rest fingertip vertices (thumb first) for betas (B, 10)."""
        flat = self.tips_shapedirs.reshape(-1, NUM_BETAS)  # (15, 10)
        return self.tips_template + (betas @ flat.T).reshape(-1, 5, 3)

    @cached_property
    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """The parts of the layer linear in (betas (10), pose feature (135)), one map for all:
        template (108,) and directions (145, 108) of the rest joints (48), the rest tips with
        their pose correctives (15) and the 15 bones J_j - J_parent(j), level order (45)."""
        parent = LEVEL_ORDER[_LEVEL_PARENT]  # MANO joints: the parents of LEVEL_ORDER[1:]
        joints = (self.joints_template, self.joints_shapedirs)
        bones = tuple(part[LEVEL_ORDER[1:]] - part[parent] for part in joints)
        template = np.concatenate([p.ravel() for p in (joints[0], self.tips_template, bones[0])])
        directions = np.zeros((NUM_BETAS + 135, len(template)))
        directions[:NUM_BETAS] = np.concatenate(
            [p.reshape(-1, NUM_BETAS) for p in (joints[1], self.tips_shapedirs, bones[1])]
        ).T
        directions[NUM_BETAS:, 48:63] = self.tips_posedirs.reshape(15, -1).T
        return _read_only(template, directions)

    @cached_property
    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """`SHAPE_EDGES`' rest vectors at beta = 0 (E, 3) and their shape directions (E, 3, 10)."""
        template = np.concatenate([self.joints_template, self.tips_template])[KEYPOINT_ORDER]
        dirs = np.concatenate([self.joints_shapedirs, self.tips_shapedirs])[KEYPOINT_ORDER]
        return _read_only(template[_EDGE_A] - template[_EDGE_B], dirs[_EDGE_A] - dirs[_EDGE_B])


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays, made read-only: the cached ones are shared by every call."""
    for array in arrays:
        array.setflags(write=False)
    return arrays


_ARRAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keypoint_arrays(hand_model: HandModel) -> KeypointArrays:
    """The `KeypointArrays` of a hand model (built in float64 once per model)."""
    if hand_model not in _ARRAYS:
        layer = keypoint_layer(hand_model, torch.float64)
        _ARRAYS[hand_model] = KeypointArrays(
            side=layer.side,
            **{
                name: _read_only(getattr(layer, name).cpu().numpy().copy())[0]
                for name in (
                    "joints_template", "joints_shapedirs", "tips_template", "tips_shapedirs",
                    "tips_posedirs", "tips_weights",
                )
            },
        )  # fmt: skip
    return _ARRAYS[hand_model]


def to_numpy(values: Tensor | np.ndarray | float) -> np.ndarray:
    """float64 numpy copy of a tensor (any device, no grad), array or number."""
    if isinstance(values, Tensor):
        return values.detach().cpu().to(torch.float64).numpy()
    return np.array(values, dtype=np.float64)


def to_model_tensors(hand_model: HandModel, *values: np.ndarray) -> tuple[Tensor, ...]:
    """Arrays as tensors in the hand model's dtype and device."""
    layer = keypoint_layer(hand_model)
    out = dict(dtype=layer.joints_template.dtype, device=layer.joints_template.device)
    return tuple(torch.from_numpy(np.ascontiguousarray(v)).to(**out) for v in values)


# [v]x = v @ _SKEW_BASIS, reshaped (3, 3): the cross-product matrix as one matrix product
_SKEW_BASIS = np.zeros((3, 9))
_SKEW_BASIS[[2, 1, 0], [3, 2, 7]] = 1.0  # +v_z at (1, 0), +v_y at (0, 2), +v_x at (2, 1)
_SKEW_BASIS[[2, 1, 0], [1, 6, 5]] = -1.0  # -v_z at (0, 1), -v_y at (2, 0), -v_x at (1, 2)
_DIAGONAL = ([0, 1, 2], [0, 1, 2])  # the diagonal of a (..., 3, 3) stack, for `+=`
_EYE3 = np.eye(3)


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices [v]x."""
    return (v @ _SKEW_BASIS).reshape(*v.shape, 3)


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b over the last axis (broadcast); cheaper than np.cross on small arrays."""
    return a[..., [1, 2, 0]] * b[..., [2, 0, 1]] - a[..., [2, 0, 1]] * b[..., [1, 2, 0]]


def unit(v: np.ndarray) -> np.ndarray:
    """v / |v| over the last axis (torch's F.normalize: |v| floored at 1e-12)."""
    return v / np.maximum(np.sqrt((v * v).sum(-1, keepdims=True)), 1e-12)


def so3_exp(theta: np.ndarray, right_jacobian: bool = False):
    """(..., 3) axis-angle -> (..., 3, 3) rotations (Rodrigues), R = I + a [t]x + b [t]x^2, and
    with right_jacobian also Jr (..., 3, 3), exp(theta + d) = exp(theta) exp(Jr d) to first
    order: Jr = I - b [t]x + c [t]x^2; a = sin t / t, b = (1 - cos t) / t^2 = (sin(t/2) / t)^2 / 2
    (no cancellation), c = (t - sin t) / t^3, and [t]x^2 = t t^T - t^2 I. Exact to ~1e-16 down to
    t = 0 (c's cancellation is multiplied by |[t]x^2| = t^2), without a series."""
    t2 = (theta * theta).sum(-1)[..., None, None]
    t = np.sqrt(np.maximum(t2, 1e-30))
    a = np.sin(t) / t
    half = np.sin(0.5 * t) / t
    b = 2.0 * half * half
    k = skew(theta)
    outer = theta[..., :, None] * theta[..., None, :]
    rot = a * k + b * outer
    rot[(..., *_DIAGONAL)] += (1.0 - b * t2)[..., 0]
    if not right_jacobian:
        return rot
    c = (1.0 - a) / (t * t)
    jr = c * outer - b * k
    jr[(..., *_DIAGONAL)] += (1.0 - c * t2)[..., 0]
    return rot, jr


# Forward kinematics runs in level order (the root, then `LEVELS`' joints level by level):
# LEVEL_ORDER[i] is the MANO joint at position i, FROM_LEVEL[j] the position of MANO joint j,
# and _LEVEL_PARENT[i - 1] the position of the parent of the joint at position i >= 1.
LEVEL_ORDER = np.array((0, *sum(LEVELS, ())))
FROM_LEVEL = np.argsort(LEVEL_ORDER)
_LEVEL_PARENT = np.array((0,) * 5 + tuple(range(1, 11)))
_LEVEL_JOINTS = tuple(np.array(level) for level in LEVELS)
KEYPOINT_ORDER = np.array(KEYPOINTS_FROM_JOINTS_AND_TIPS)  # `KEYPOINT_INDEX` for numpy
# the keypoints of each level's children: the next level's joints, then the digits' tips
_CHILD_KEYPOINTS = (
    np.array([JOINT_KEYPOINT[j] for j in LEVELS[1]]),
    np.array([JOINT_KEYPOINT[j] for j in LEVELS[2]]),
    np.array([TIP_KEYPOINT[t] for t in LEVEL_TIPS]),
)
_PALM_KEYPOINT_INDEX = np.array(_PALM_KEYPOINTS)
_EDGE_A, _EDGE_B = (np.array(ends) for ends in zip(*SHAPE_EDGES, strict=True))
_IDENTITY_QUATERNION = np.array([1.0, 0.0, 0.0, 0.0])


class PosedHand(NamedTuple):
    """The keypoint layer posed (`posed_hand`): what the keypoints and their Jacobian need."""

    rest: np.ndarray  # (B, 16, 3) rest joints
    glob: np.ndarray  # (B, 16, 3, 3) global rotations
    joints: np.ndarray  # (B, 16, 3) posed joints (no translation)
    tips_rest: np.ndarray  # (B, 5, 3) rest tips with their pose correctives
    keypoints: np.ndarray  # (B, 21, 3) keypoint order, no translation


def posed_hand(arrays: KeypointArrays, rotmats: np.ndarray, betas: np.ndarray) -> PosedHand:
    """The keypoint layer at local rotations (B, 16, 3, 3) and betas (B, 10): forward kinematics
    one tree level at a time, then linear blend skinning of the 5 tips,
    sum_k w_tk (G_k (v_t - J_k) + P_k); the numbers of `layer_keypoints`."""
    count = len(rotmats)
    pose_feature = (rotmats[:, 1:] - _EYE3).reshape(count, -1)  # (B, 135) smplx's order
    template, directions = arrays.linear
    linear = template + np.concatenate([betas, pose_feature], axis=1) @ directions
    rest = linear[:, :48].reshape(count, NUM_JOINTS, 3)
    tips_rest = linear[:, 48:63].reshape(count, 5, 3)
    bones = linear[:, 63:].reshape(count, 15, 3, 1)  # level order
    local = rotmats[:, LEVEL_ORDER]  # (B, 16, 3, 3) level order
    first = local[:, :1] @ local[:, 1:6]
    second = first @ local[:, 6:11]
    glob = np.concatenate([local[:, :1], first, second, second @ local[:, 11:]], axis=1)
    moved = (glob[:, _LEVEL_PARENT] @ bones).reshape(count, 3, 5, 3)  # each level's bones
    joints = np.empty((count, NUM_JOINTS, 3))
    joints[:, 0] = rest[:, 0]
    joints[:, 1:] = np.cumsum(moved, axis=1).reshape(count, 15, 3) + rest[:, :1]
    glob, joints = glob[:, FROM_LEVEL], joints[:, FROM_LEVEL]  # MANO order
    weights = arrays.tips_weights
    blend = (weights @ glob.reshape(count, NUM_JOINTS, 9)).reshape(count, 5, 3, 3)
    offset = joints - (glob @ rest[..., None])[..., 0]  # (B, 16, 3) P_k - G_k J_k
    tips = (blend @ tips_rest[..., None])[..., 0] + weights @ offset  # (B, 5, 3)
    keypoints = np.concatenate([joints, tips], axis=1)[:, KEYPOINT_ORDER]
    return PosedHand(rest, glob, joints, tips_rest, keypoints)


@dataclass
class ClosedFormResult:
    """MANO parameters recovered from 3D keypoints (the hand model's side and frame)."""

    pose: Tensor  # (B, 16, 3) axis-angle, root first, flat-hand rest
    betas: Tensor  # (B, 10)
    transl: Tensor  # (B, 3)
    rotmats: Tensor  # (B, 16, 3, 3) the same pose as local rotation matrices


def digit_frames(rest_joints: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Flexion and spread axes (B, 5, 3) of the digits in `LEVELS` order, rest frame, for rest
    joints (B, 16, 3): the batched `backend.hand_model.poses.digit_axes`."""
    along = rest_joints[:, 4] - rest_joints[:, 0]  # wrist -> middle knuckle
    across = rest_joints[:, 1] - rest_joints[:, 7]  # pinky knuckle -> index knuckle
    normal = unit(cross(across, along) if side == "right" else cross(along, across))[:, None]
    d = unit(rest_joints[:, _LEVEL_JOINTS[1]] - rest_joints[:, _LEVEL_JOINTS[0]])  # (B, 5, 3)
    flex = unit(cross(d, normal))
    # spread: +-n, signed so a positive turn moves the digit away from the middle finger (the
    # thumb away from the index), as in `digit_axes`
    away = d - d[:, 1:2]
    away[:, 4] = d[:, 4] - d[:, 0]  # (the middle finger's own stays 0: its sign is +)
    sign = np.where((cross(normal, d) * away).sum(-1) >= 0, 1.0, -1.0)
    return flex, normal * sign[..., None]


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3, 3) rotations,
    R = (w^2 - v.v) I + 2 v v^T + 2 w [v]x."""
    w, v = q[..., :1, None], q[..., 1:]
    rot = 2.0 * (v[..., :, None] * v[..., None, :] + w * skew(v))
    rot[(..., *_DIAGONAL)] += (w * w)[..., 0] - (v * v).sum(-1, keepdims=True)
    return rot


def quaternion_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions -> (..., 3) axis-angle, angle 2 atan2(|v|, |w|) in [0, pi]
    (accurate at every angle; no series: atan2(n, w) / n is exact down to n = 0)."""
    w, v = q[..., :1], q[..., 1:]
    v = np.where(w < 0, -v, v)  # q and -q: the same rotation
    n = np.sqrt((v * v).sum(-1, keepdims=True))
    return v * (2.0 * np.arctan2(n, np.abs(w)) / np.maximum(n, 1e-300))


def flex_spread_quaternion(
    rest_dir: np.ndarray, target_dir: np.ndarray, flex: np.ndarray, spread: np.ndarray
) -> np.ndarray:
    """(..., 4) the unit quaternion of R = R(flex, a) R(spread, b) with R rest_dir parallel to
    target_dir.

    Paden-Kahan subproblem 2 for perpendicular unit axes (..., 3), worked in the frame (flex,
    spread, third = flex x spread): the intermediate direction z = R(spread, b) rest_dir keeps
    rest_dir's spread component and must have target_dir's flexion component (a turn about flex
    keeps it), so z = (alpha, beta, +-gamma) with gamma^2 = 1 - alpha^2 - beta^2. Of the two roots
    the one on rest_dir's side is taken (the one giving the identity at rest; spread turns stay
    below 90 degrees). A target out of reach (gamma^2 < 0, only for a sideways turn of nearly 90
    degrees) gets the nearest z. b turns rest_dir to z about spread, a turns z to target_dir
    about flex; the product of their quaternions is (c_a c_b, s_a c_b flex + c_a s_b spread +
    s_a s_b third), c and s the cosines and sines of the half angles."""
    frame = np.stack([flex, spread, cross(flex, spread)], axis=-2)  # (..., 3, 3) rows
    p = (frame @ unit(rest_dir)[..., None])[..., 0]  # (..., 3) frame coordinates
    q = (frame @ unit(target_dir)[..., None])[..., 0]
    pf, ps, pt = p[..., 0], p[..., 1], p[..., 2]
    qs, qt = q[..., 1], q[..., 2]
    zf, zs = q[..., 0], ps
    zt = np.sqrt(np.maximum(1.0 - zf * zf - zs * zs, 0.0)) * np.where(pt >= 0, 1.0, -1.0)
    b = np.arctan2(pt * zf - pf * zt, pf * zf + pt * zt)  # about spread, p -> z
    a = np.arctan2(zs * qt - zt * qs, zs * qs + zt * qt)  # about flex, z -> q
    ca, sa, cb, sb = np.cos(0.5 * a), np.sin(0.5 * a), np.cos(0.5 * b), np.sin(0.5 * b)
    vector = (np.stack([sa * cb, ca * sb, sa * sb], axis=-1)[..., None, :] @ frame)[..., 0, :]
    return np.concatenate([(ca * cb)[..., None], vector], axis=-1)


# Horn's 4x4 matrix N (flattened) as a linear map of S = sum_i w_i s_i t_i^T (flattened): the
# unit quaternion of the rotation taking the s_i to the t_i is N's top eigenvector.
_HORN = np.zeros((9, 16))
for _row, _terms in enumerate(
    (
        "+xx+yy+zz", "+yz-zy", "+zx-xz", "+xy-yx",
        "+yz-zy", "+xx-yy-zz", "+xy+yx", "+zx+xz",
        "+zx-xz", "+xy+yx", "-xx+yy-zz", "+yz+zy",
        "+xy-yx", "+zx+xz", "+yz+zy", "-xx-yy+zz",
    )
):  # fmt: skip
    for _sign, _i, _j in zip(_terms[::3], _terms[1::3], _terms[2::3], strict=True):
        _HORN["xyz".index(_i) * 3 + "xyz".index(_j), _row] = 1.0 if _sign == "+" else -1.0


def weighted_quaternion(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(B, 4) unit quaternion (w >= 0) of the rotation R minimising sum_i w_i |R s_i - t_i|^2 for
    centred points (B, N, 3) and weights (B, N) (Horn 1987, always a proper rotation); the
    identity where fewer than 3 points count."""
    cov = (source * weight[..., None]).transpose(0, 2, 1) @ target  # (B, 3, 3) sum w s t^T
    _, vectors = np.linalg.eigh((cov.reshape(-1, 9) @ _HORN).reshape(-1, 4, 4))
    quat = vectors[..., -1]  # the largest eigenvalue's
    quat = np.where(quat[:, :1] < 0, -quat, quat)
    enough = (weight > 0).sum(-1) >= 3
    return np.where(enough[:, None], quat, _IDENTITY_QUATERNION)


def weighted_rotation(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(B, 3, 3) the rotation of `weighted_quaternion`."""
    return quaternion_to_matrix(weighted_quaternion(source, target, weight))


def weighted_centre(points: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Points (B, N, 3) less their weighted centroid (weights (B, N))."""
    w = weight / np.maximum(weight.sum(-1, keepdims=True), 1e-12)
    return points - (w[..., None] * points).sum(-2, keepdims=True)


def betas_from_lengths(
    arrays: KeypointArrays,
    keypoints3d: np.ndarray,
    valid: np.ndarray,
    ridge: float = DEFAULT_BETA_RIDGE,
    iterations: int = 3,
) -> np.ndarray:
    """(B, 10) shape whose rest skeleton has the bone and palm lengths (`SHAPE_EDGES`) of
    keypoints (B, 21, 3) where both ends are valid (B, 21): Gauss-Newton on
    sum_e (|K_a(beta) - K_b(beta)| - l_e)^2 + ridge |beta|^2, from beta = 0."""
    diff = keypoints3d[:, _EDGE_A] - keypoints3d[:, _EDGE_B]
    observed = np.sqrt((diff * diff).sum(-1))  # (B, E)
    weight = (valid[:, _EDGE_A] & valid[:, _EDGE_B]).astype(np.float64)  # (B, E)
    edge0, edge_dirs = arrays.edges  # (E, 3), (E, 3, 10)
    flat_dirs = edge_dirs.reshape(-1, NUM_BETAS)  # (3E, 10)
    betas = np.zeros((len(keypoints3d), NUM_BETAS))
    for _ in range(iterations):
        edge = edge0 + (betas @ flat_dirs.T).reshape(len(betas), -1, 3)  # (B, E, 3)
        length = np.maximum(np.sqrt((edge * edge).sum(-1)), 1e-9)
        grad = ((edge / length[..., None])[..., None] * edge_dirs).sum(-2)  # (B, E, 10)
        wg = grad * weight[..., None]
        lhs = wg.transpose(0, 2, 1) @ grad + ridge * np.eye(NUM_BETAS)
        rhs = (wg * (observed - length)[..., None]).sum(1) - ridge * betas
        betas = betas + np.linalg.solve(lhs, rhs[..., None])[..., 0]
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
    once with the fingertips' actual skinned offsets (one extra keypoint evaluation). Computed in
    float64 numpy; the results are tensors in the model's dtype and device."""
    side = check_side(side or hand_model.side)
    if side != hand_model.side:
        raise ValueError(f"a {side} hand needs HandModel({side!r}), got a {hand_model.side} model")
    if keypoints3d.ndim != 3 or keypoints3d.shape[1:] != (21, 3):
        raise ValueError(f"keypoints3d must be (B, 21, 3), got {tuple(keypoints3d.shape)}")
    keypoints3d = to_numpy(keypoints3d)
    valid = np.isfinite(keypoints3d).all(-1)  # (B, 21)
    if mask is not None:
        valid &= np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask, dtype=bool)
    fixed = None if betas is None else to_numpy(betas)
    arrays = keypoint_arrays(hand_model)
    return ClosedFormResult(
        *to_model_tensors(
            hand_model,
            *closed_form_arrays(arrays, keypoints3d, valid, fixed, beta_ridge, tip_correction),
        )
    )


def closed_form_arrays(
    arrays: KeypointArrays,
    keypoints3d: np.ndarray,
    valid: np.ndarray,
    betas: np.ndarray | None = None,
    beta_ridge: float = DEFAULT_BETA_RIDGE,
    tip_correction: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`keypoints_to_mano` on float64 arrays, for the model side of `arrays`: keypoints3d
    (B, 21, 3), valid (B, 21) bool (False where a keypoint is to be ignored; it must be False
    where keypoints3d is not finite), betas (B, 10) or (10,) to fix the shape, or None. Returns
    the axis-angle pose (B, 16, 3), betas (B, 10), translation (B, 3) and rotation matrices
    (B, 16, 3, 3) as float64 arrays."""
    side = arrays.side
    observed = np.where(valid[..., None], keypoints3d, 0.0)
    count = len(keypoints3d)
    if count == 0:  # (the batched reshapes below need a hand)
        shapes = ((0, NUM_JOINTS, 3), (0, NUM_BETAS), (0, 3), (0, NUM_JOINTS, 3, 3))
        return tuple(map(np.zeros, shapes))

    if betas is None:
        betas = betas_from_lengths(arrays, observed, valid, beta_ridge)
    else:
        betas = np.nan_to_num(betas + np.zeros((count, NUM_BETAS)))
    rest = arrays.rest_joints(betas)  # (B, 16, 3)
    rest_tips = arrays.rest_tips(betas)  # (B, 5, 3)
    flex, spread = digit_frames(rest, side)  # (B, 5, 3) each
    quats = np.zeros((count, NUM_JOINTS, 4))  # local rotations, MANO order
    quats[..., 0] = 1.0

    # root: the palm's rigid points; model joints are J_0 + R0 (J_j - J_0) + transl
    palm_valid = valid[:, _PALM_KEYPOINT_INDEX].astype(np.float64)
    rest_palm = rest[:, list(PALM_JOINTS)]
    quats[:, 0] = weighted_quaternion(
        weighted_centre(rest_palm, palm_valid),
        weighted_centre(observed[:, _PALM_KEYPOINT_INDEX], palm_valid),
        palm_valid,
    )
    root = quaternion_to_matrix(quats[:, 0])  # (B, 3, 3)
    wsum = np.maximum(palm_valid.sum(-1, keepdims=True), 1e-12)
    posed_palm = (root[:, None] @ (rest_palm - rest[:, :1])[..., None])[..., 0] + rest[:, :1]
    palm_offset = (observed[:, _PALM_KEYPOINT_INDEX] - posed_palm) * palm_valid[..., None]
    transl = palm_offset.sum(1) / wsum

    def aim(level: int, parent_rot, joint_pos, child_rest) -> np.ndarray:
        """Local rotations (B, 5, 3, 3) of one level's joints pointing their child bones at the
        observed children (their quaternions into `quats`); identity where a child is missing."""
        child_kp = _CHILD_KEYPOINTS[level]
        world = observed[:, child_kp] - transl[:, None] - joint_pos  # (B, 5, 3)
        target = (parent_rot.transpose(0, 1, 3, 2) @ world[..., None])[..., 0]
        ok = valid[:, child_kp] & ((target * target).sum(-1) > 1e-18)
        quat = flex_spread_quaternion(child_rest, target, flex, spread)
        quat = np.where(ok[..., None], quat, _IDENTITY_QUATERNION)
        quats[:, _LEVEL_JOINTS[level]] = quat
        return quaternion_to_matrix(quat)

    parent_rot = root[:, None]  # (B, 1 or 5, 3, 3)
    parent_pos = parent_rest = rest[:, :1]
    level_state = []
    for level, joints in enumerate(_LEVEL_JOINTS):
        here = rest[:, joints]  # (B, 5, 3)
        joint_pos = parent_pos + (parent_rot @ (here - parent_rest)[..., None])[..., 0]
        child = rest[:, joints + 1] if level < 2 else rest_tips[:, list(LEVEL_TIPS)]
        local = aim(level, parent_rot, joint_pos, child - here)
        level_state.append((parent_rot, joint_pos))
        parent_rot, parent_pos, parent_rest = parent_rot @ local, joint_pos, here

    if tip_correction:
        # the fingertip's skinned offset from the distal joint, in that joint's frame: the rest
        # direction that the distal rotation really moves
        keypoints = posed_hand(arrays, quaternion_to_matrix(quats), betas).keypoints
        distal_rot = parent_rot  # (B, 5, 3, 3) global rotations of the distal joints
        parent_rot, joint_pos = level_state[2]
        tips = keypoints[:, _CHILD_KEYPOINTS[2]]
        offset = (distal_rot.transpose(0, 1, 3, 2) @ (tips - joint_pos)[..., None])[..., 0]
        aim(2, parent_rot, joint_pos, offset)

    rotmats = quaternion_to_matrix(quats)
    keypoints = posed_hand(arrays, rotmats, betas).keypoints
    vw = valid[..., None].astype(np.float64)
    transl = ((observed - keypoints) * vw).sum(1) / np.maximum(vw.sum(1), 1e-12)
    return quaternion_to_axis_angle(quats), betas, transl, rotmats


__all__ = [
    "FROM_LEVEL",
    "KEYPOINT_ORDER",
    "LEVELS",
    "LEVEL_ORDER",
    "ClosedFormResult",
    "KeypointArrays",
    "KeypointLayer",
    "PosedHand",
    "betas_from_lengths",
    "closed_form_arrays",
    "digit_frames",
    "flex_spread_quaternion",
    "forward_kinematics",
    "keypoint_arrays",
    "keypoint_layer",
    "keypoints_to_mano",
    "layer_keypoints",
    "posed_hand",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "so3_exp",
    "weighted_quaternion",
    "weighted_rotation",
]
