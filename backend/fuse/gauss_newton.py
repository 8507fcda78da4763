"""A few batched Levenberg-Marquardt steps that refine MANO hands on every signal at once.

The closed-form start (`backend.fuse.closed_form`) matches 3D keypoints; this refinement then
weighs all the signals of a hand together. Per hand, over x = (pose (16 x 3 axis-angle), betas
(10), transl (3)), 61 parameters, it minimises

    E(x) = sum_j wu_j rho(|pi(K X_j(x)) - u_j| / uv_sigma)             (a) 2D landmarks, robust
         + sum_j wx_j |s R (X_j(x) - X_bar) - (Y_j - Y_bar)|^2 / xyz_sigma^2,
               minimised over the scale s and (for align="similarity") the rotation R
                                                                      (b) 3D keypoints, aligned
         + sum_k wp_k |theta_k - theta_k^prior|^2                     (c) pose prior (radians)
         + betas_weight |beta|^2                                      (d) shape prior

with X_j(x) the model's 21 keypoints in the camera frame (OpenCV axes: x right, y down, z
forward; `transl` included), K the pinhole intrinsics (3, 3) in pixels, u_j the 2D landmarks,
Y_j target 3D keypoints compared after removing the weighted centroids (the least-squares
version of root-relative: a wrong wrist alone cannot shift them) and scaling the model's to the
target's size (so MediaPipe's world landmarks, whose scale is unreliable, still pass on their
shape; the model's scale itself comes from the 2D term, the shape prior and the start), and
theta the axis-angle of every joint. rho is Geman-McClure, rho(x) = x^2 / (1 + x^2 / c^2) (or
Huber, or plain squares), so a few wrong landmarks cost at most c^2 each.

Each step linearises the residuals (an analytic Jacobian of the 21 keypoints,
`keypoints_and_jacobian`: forward kinematics, the fingertips' skinning and pose correctives, no
mesh; the tests check it against `torch.func.jacfwd` of the torch keypoint layer,
`closed_form.layer_keypoints`), replaces rho by its iteratively reweighted least-squares weight
rho'(x) / 2x (Geman-McClure and Huber are concave in x^2, so the weighted squares majorise them),
aligns the 3D target at the current estimate (by the envelope theorem the gradient of the
minimised term is the one at fixed alignment) and solves the damped normal equations
(J^T J + lambda diag(J^T J)) dx = -J^T r per hand. A step is kept only where it lowers E;
otherwise lambda grows and the step is retried (up to `retries` times), so E never increases.
lambda shrinks after every accepted step.

Everything inside runs in float64 numpy on the hand model's `KeypointArrays` (cached per model):
on these (B, 21, 3)-sized arrays a torch op costs ~5-10 us of dispatch and a numpy op ~1 us, so
the torch version (~12 ms for one hand, 5 steps) was dispatch-bound. Tensors in, tensors out (the
model's dtype and device). Cost on one CPU thread (2-core shared machine): 5 steps with 2D, 3D and
prior terms take ~3 ms for one hand and ~0.7 ms per hand for a 64-frame batch.

Imports numpy, torch and the backend's hand model and camera (through `backend.fuse.closed_form`
for the keypoint layer); never FastAPI, bpy, OpenCV or the training package.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from backend.camera import project_points
from backend.hand_model.constants import MANO_PARENTS, NUM_BETAS, NUM_JOINTS
from backend.hand_model.model import HandModel

from .closed_form import (
    FROM_LEVEL,
    KEYPOINT_ORDER,
    LEVEL_ORDER,
    KeypointArrays,
    keypoint_arrays,
    posed_hand,
    skew,
    so3_exp,
    to_model_tensors,
    to_numpy,
    weighted_centre,
    weighted_rotation,
)

NUM_PARAMS = NUM_JOINTS * 3 + NUM_BETAS + 3  # 61: pose, betas, transl
ROBUST_KERNELS = ("geman_mcclure", "huber", "none")
XYZ_ALIGNMENTS = ("scale", "similarity")
_MIN_DEPTH = 1e-3  # m: points behind or at the camera project as if at 1 mm (never inf/NaN)
_EYE3 = np.eye(3)
_POSE = slice(0, NUM_JOINTS * 3)
_BETAS = slice(NUM_JOINTS * 3, NUM_JOINTS * 3 + NUM_BETAS)


@dataclass
class RefineResult:
    """Refined hands and the objective E before and after, per hand."""

    pose: Tensor  # (B, 16, 3) axis-angle
    betas: Tensor  # (B, 10)
    transl: Tensor  # (B, 3)
    objective_before: Tensor  # (B,)
    objective_after: Tensor  # (B,) <= objective_before
    accepted_steps: Tensor  # (B,) int64, how many steps lowered E


@dataclass(frozen=True)
class _Problem:
    """The observations and weights of one batch (float64 arrays), each term present or None."""

    arrays: KeypointArrays
    K: np.ndarray | None  # (B, 3, 3)
    uv: np.ndarray | None  # (B, 21, 2)
    uv_weight: np.ndarray | None  # (B, 21), 0 where missing
    xyz: np.ndarray | None  # (B, 21, 3) less its weighted centroid
    xyz_weight: np.ndarray | None  # (B, 21)
    xyz_mean_weight: np.ndarray | None  # (B, 21) xyz_weight / its sum: the centroid's weights
    prior: np.ndarray | None  # (B, 48)
    prior_weight: np.ndarray | None  # (B, 48)
    betas_weight: float
    uv_sigma: float
    xyz_sigma: float
    robust: str
    robust_scale: float
    align: str


def _robust(x2: np.ndarray, kind: str, c: float) -> tuple[np.ndarray, np.ndarray]:
    """rho and its IRLS weight rho'(x) / 2x, both as functions of squared normalised errors x2."""
    if kind == "geman_mcclure":
        d = 1.0 + x2 / c**2
        return x2 / d, 1.0 / (d * d)
    if kind == "huber":
        x = np.sqrt(np.maximum(x2, 1e-24))
        inside = x <= c
        return np.where(inside, x2, 2 * c * x - c**2), np.where(inside, 1.0, c / x)
    return x2, np.ones_like(x2)


def _keypoints(arrays: KeypointArrays, x: np.ndarray) -> np.ndarray:
    """(B, 21, 3) camera-frame keypoints for parameters x (B, 61)."""
    rotmats = so3_exp(x[:, _POSE].reshape(-1, NUM_JOINTS, 3))
    return posed_hand(arrays, rotmats, x[:, _BETAS]).keypoints + x[:, None, -3:]


def _alignment(
    model: np.ndarray, target: np.ndarray, weight: np.ndarray, align: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (B,) and rotation (B, 3, 3) minimising sum_j w_j |s R m_j - t_j|^2 for centred model
    and target points (B, 21, 3): R the weighted least-squares rotation ("similarity",
    `weighted_rotation`) or I (a (3, 3) identity for every hand), then s optimal."""
    if align == "similarity":
        rot = weighted_rotation(model, target, weight)
        model = model @ rot.transpose(0, 2, 1)
    else:
        rot = _EYE3  # broadcast
    num = (weight * (model * target).sum(-1)).sum(-1)
    den = (weight * (model * model).sum(-1)).sum(-1)
    return num / np.maximum(den, 1e-12), rot


def _objective(problem: _Problem, x: np.ndarray) -> np.ndarray:
    """(B,) the objective E at parameters x (B, 61), alignment and robust kernel exact."""
    keypoints = _keypoints(problem.arrays, x)
    energy = np.zeros(len(x))
    if problem.uv is not None:
        # each point held at least _MIN_DEPTH in front of the camera (a step that throws the
        # hand behind the camera must give a large, finite residual, not a sign flip)
        held = keypoints.copy()
        held[..., 2] = np.maximum(held[..., 2], _MIN_DEPTH)
        err = (project_points(held, problem.K) - problem.uv) / problem.uv_sigma
        rho, _ = _robust((err * err).sum(-1), problem.robust, problem.robust_scale)
        energy += (problem.uv_weight * rho).sum(-1)
    if problem.xyz is not None:
        model = weighted_centre(keypoints, problem.xyz_weight)
        scale, rot = _alignment(model, problem.xyz, problem.xyz_weight, problem.align)
        # |s R m - t| = |s m - R^T t|
        aligned = scale[:, None, None] * model - problem.xyz @ rot
        sq = (aligned * aligned).sum(-1) / problem.xyz_sigma**2
        energy += (problem.xyz_weight * sq).sum(-1)
    if problem.prior is not None:
        diff = x[:, _POSE] - problem.prior
        energy += (problem.prior_weight * diff * diff).sum(-1)
    betas = x[:, _BETAS]
    return energy + problem.betas_weight * (betas * betas).sum(-1)


def _ancestry() -> np.ndarray:
    """(16, 16) A[j, m] = 1 where joint m is joint j or one of its ancestors (m moves j)."""
    ancestry = np.zeros((NUM_JOINTS, NUM_JOINTS))
    for j in range(NUM_JOINTS):
        m = j
        while m >= 0:
            ancestry[j, m] = 1.0
            m = MANO_PARENTS[m]
    return ancestry


_ANCESTRY = _ancestry()
_PARENT_OF_LEVEL = np.array([MANO_PARENTS[j] for j in LEVEL_ORDER[1:]])  # (15,) MANO joints
_SKEW_GENERATORS = skew(np.eye(3)).reshape(9, 3)  # rows (j, a): [e_j]x
_ROWS = np.argsort(KEYPOINT_ORDER)  # keypoint index of each of (16 joints, 5 tips thumb first)
_JOINT_ROWS, _TIP_ROWS = _ROWS[:NUM_JOINTS], _ROWS[NUM_JOINTS:]


@dataclass(frozen=True, eq=False)
class _JacobianConstants:
    """Per-model constants of `keypoints_and_jacobian`, built once (`_constants`)."""

    tip_ancestry: np.ndarray  # (5 t, 16 m, 16 k) w_tk A[k, m]: how joint m moves tip t's copies
    tip_lever: np.ndarray  # (5, 16, 1) sum_k w_tk A[k, m]
    posedirs: np.ndarray  # (15 n, 15 (t, c), 9 q) the tips' correctives per joint and entry
    level_shapedirs: np.ndarray  # (15, 3, 10) J_j - J_parent(j) shapedirs, level order
    tips_shape_local: np.ndarray  # (5, 48 (k, j), 10) w_tk (S_t - S_k)_j, the tips' lever in beta


_CONSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _constants(arrays: KeypointArrays) -> _JacobianConstants:
    if arrays not in _CONSTANTS:
        weights = arrays.tips_weights  # (5, 16)
        shape_j = arrays.joints_shapedirs  # (16, 3, 10)
        local = arrays.tips_shapedirs[:, None] - shape_j[None]  # (5, 16, 3, 10)
        _CONSTANTS[arrays] = _JacobianConstants(
            tip_ancestry=(weights[:, :, None] * _ANCESTRY[None]).transpose(0, 2, 1).copy(),
            tip_lever=(weights @ _ANCESTRY)[..., None],
            posedirs=arrays.tips_posedirs.reshape(15, NUM_JOINTS - 1, 9).transpose(1, 0, 2).copy(),
            level_shapedirs=shape_j[LEVEL_ORDER[1:]] - shape_j[_PARENT_OF_LEVEL],
            tips_shape_local=(weights[:, :, None, None] * local).reshape(5, -1, NUM_BETAS),
        )
    return _CONSTANTS[arrays]


def keypoints_and_jacobian(arrays: KeypointArrays, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (B, 21, 3) at parameters x (B, 61) and their exact Jacobian (B, 21, 3, 61).

    A joint m's local rotation R_m = exp(theta_m) turns its subtree about the joint: with the
    right Jacobian Jr, d(point) / d(theta_m) = -[point - P_m]x G_m Jr(theta_m) for every point
    rigidly carried by a descendant (G_m the global rotation, P_m the position of joint m). A
    fingertip is the skinning-weighted sum of such carried copies, plus its pose correctives,
    which move with d(R_n) = R_n [Jr e_i]x. Positions are linear in betas for fixed rotations
    (forward kinematics of the shape directions) and shift with the translation."""
    count = len(x)
    const = _constants(arrays)
    rotmats, jr = so3_exp(x[:, _POSE].reshape(count, NUM_JOINTS, 3), right_jacobian=True)
    hand = posed_hand(arrays, rotmats, x[:, _BETAS])
    glob, joints = hand.glob, hand.joints
    jac = np.empty((count, 21, 3, NUM_PARAMS))  # keypoint order

    # lever arms (B, 16 m, 21, 3) of every keypoint about every joint m: A[j, m] (P_j - P_m) for
    # the joints; sum_k w_tk A[k, m] (X_tk - P_m) for the tips, X_tk tip t carried by joint k
    lever = np.empty((count, NUM_JOINTS, 21, 3))
    lever[:, :, _JOINT_ROWS] = (joints[:, None] - joints[:, :, None]) * _ANCESTRY.T[..., None]
    offset = joints - (glob @ hand.rest[..., None])[..., 0]  # (B, 16, 3) P_k - G_k J_k
    by_column = glob.transpose(0, 3, 1, 2).reshape(count, 3, -1)  # (B, 3 j, 48 (k, i))
    carried = (hand.tips_rest @ by_column).reshape(count, 5, NUM_JOINTS, 3) + offset[:, None]
    tips = const.tip_ancestry @ carried - const.tip_lever * joints[:, None]  # (B, 5, 16 m, 3)
    lever[:, :, _TIP_ROWS] = tips.transpose(0, 2, 1, 3)
    # -[l]x G_m Jr_m = -sum_j l_j [e_j]x G_m Jr_m: (B, 16 m, 21, 9 (coordinate, component))
    turned = (_SKEW_GENERATORS @ -(glob @ jr)).reshape(count, NUM_JOINTS, 3, 9)
    d_pose = jac[..., _POSE].reshape(count, 21, 3, NUM_JOINTS, 3)  # a view
    d_pose[:] = (lever @ turned).reshape(count, NUM_JOINTS, 21, 3, 3).transpose(0, 2, 3, 1, 4)
    # the tips' pose correctives: d v_tc / d theta_n,i = posedirs_tc,n : (R_n [Jr_n e_i]x)
    d_rot = rotmats[:, 1:, None] @ skew(jr[:, 1:].transpose(0, 1, 3, 2))  # (B, 15 n, 3 i, 3, 3)
    d_v = const.posedirs @ d_rot.reshape(count, 15, 3, 9).transpose(0, 1, 3, 2)  # (B, n, tc, i)
    d_v = d_v.transpose(0, 2, 1, 3).reshape(count, 5, 3, -1)  # (B, 5 t, 3 c, 45 (n, i))
    blend = (arrays.tips_weights @ glob.reshape(count, NUM_JOINTS, 9)).reshape(count, 5, 3, 3)
    d_pose[:, _TIP_ROWS, :, 1:] += (blend @ d_v).reshape(count, 5, 3, 15, 3)

    # betas: forward kinematics of the joints' shape directions (level by level, a cumulative
    # sum along each digit), then skinning for the tips
    moved = (glob[:, _PARENT_OF_LEVEL] @ const.level_shapedirs).reshape(count, 3, 5, 3, NUM_BETAS)
    d_joints = (
        np.concatenate(
            [np.zeros((count, 1, 3, NUM_BETAS)), np.cumsum(moved, 1).reshape(count, 15, 3, -1)], 1
        )[:, FROM_LEVEL]
        + arrays.joints_shapedirs[0]
    )  # (B, 16, 3, 10)
    jac[:, _JOINT_ROWS, :, _BETAS] = d_joints
    by_joint = glob.transpose(0, 2, 1, 3).reshape(count, 1, 3, -1)  # (B, 1, 3 i, 48 (k, j))
    jac[:, _TIP_ROWS, :, _BETAS] = (by_joint @ const.tips_shape_local) + (
        arrays.tips_weights @ d_joints.reshape(count, NUM_JOINTS, -1)
    ).reshape(count, 5, 3, NUM_BETAS)
    jac[..., -3:] = _EYE3
    return hand.keypoints + x[:, None, -3:], jac


def _normal_equations(problem: _Problem, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Gauss-Newton model at x (B, 61): J^T J (B, 61, 61) and J^T r (B, 61) of the whitened
    residuals, with the IRLS weights and the 3D alignment frozen at x. The aligned 3D residual
    s R m_j - t_j is taken as s m_j - R^T t_j (the same length; R^T R = I leaves J^T J and J^T r
    unchanged), and the priors' residuals are the parameters themselves, so they add to the
    diagonal directly."""
    keypoints, d_kp = keypoints_and_jacobian(problem.arrays, x)  # (B, 21, 3), (B, 21, 3, 61)
    count = len(x)
    res: list[np.ndarray] = []
    jac: list[np.ndarray] = []
    if problem.uv is not None:
        K = problem.K
        p = keypoints @ K.transpose(0, 2, 1)  # (B, 21, 3)
        depth = np.maximum(p[..., 2:], _MIN_DEPTH)
        u = p[..., :2] / depth
        err = (u - problem.uv) / problem.uv_sigma
        _, irls = _robust((err * err).sum(-1), problem.robust, problem.robust_scale)
        sw = (np.sqrt(problem.uv_weight * irls) / problem.uv_sigma)[..., None]  # (B, 21, 1)
        # d u / d X = (K[:2] - u K[2]) / depth
        d_proj = (K[:, None, :2] - u[..., None] * K[:, None, 2:]) / depth[..., None]
        res.append((sw * (u - problem.uv)).reshape(count, -1))
        jac.append((sw[..., None] * (d_proj @ d_kp)).reshape(count, -1, NUM_PARAMS))
    if problem.xyz is not None:
        w = problem.xyz_weight
        model = weighted_centre(keypoints, w)
        scale, rot = _alignment(model, problem.xyz, w, problem.align)
        sw = (np.sqrt(w) / problem.xyz_sigma)[..., None]  # (B, 21, 1)
        res.append((sw * (scale[:, None, None] * model - problem.xyz @ rot)).reshape(count, -1))
        mean = (problem.xyz_mean_weight[..., None, None] * d_kp).sum(1, keepdims=True)
        sws = (sw * scale[:, None, None])[..., None]
        jac.append((sws * (d_kp - mean)).reshape(count, -1, NUM_PARAMS))
    hess = np.zeros((count, NUM_PARAMS, NUM_PARAMS))
    grad = np.zeros((count, NUM_PARAMS))
    if jac:
        j = np.concatenate(jac, axis=1)  # (B, R, 61)
        jt = j.transpose(0, 2, 1)
        hess += jt @ j
        grad += (jt @ np.concatenate(res, axis=1)[..., None])[..., 0]
    diagonal = np.arange(NUM_PARAMS)
    if problem.prior is not None:
        hess[:, diagonal[_POSE], diagonal[_POSE]] += problem.prior_weight
        grad[:, _POSE] += problem.prior_weight * (x[:, _POSE] - problem.prior)
    hess[:, diagonal[_BETAS], diagonal[_BETAS]] += problem.betas_weight
    grad[:, _BETAS] += problem.betas_weight * x[:, _BETAS]
    return hess, grad


def refine_arrays(
    hand_model: HandModel,
    pose0: Tensor,
    betas0: Tensor,
    transl0: Tensor,
    *,
    K: Tensor | None = None,
    uv: Tensor | None = None,
    uv_weight: Tensor | None = None,
    uv_sigma: float = 4.0,
    robust: str = "geman_mcclure",
    robust_scale: float = 3.0,
    xyz: Tensor | None = None,
    xyz_weight: Tensor | None = None,
    xyz_sigma: float = 0.005,
    align: str = "scale",
    prior_pose: Tensor | None = None,
    prior_weight: Tensor | float | None = None,
    betas_weight: float = 0.01,
    fit_betas: bool = True,
    steps: int = 5,
    damping: float = 1e-3,
    retries: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Refine hands (pose0 (B, 16, 3), betas0 (B, 10), transl0 (B, 3), camera frame) on the terms
    given; see the module docstring for E. Never increases E.

    K: (3, 3) or (B, 3, 3) pixel intrinsics, with uv (B, 21, 2) 2D landmarks in pixels and
    uv_weight (B, 21) (default 1; NaN landmarks get 0). uv_sigma: pixels per unit of the
    normalised error; robust: "geman_mcclure", "huber" or "none", robust_scale c in units of
    uv_sigma. xyz: (B, 21, 3) target 3D keypoints in metres (any frame for align="similarity",
    camera-aligned axes for "scale"), xyz_weight (B, 21) (default 1; NaN points get 0), xyz_sigma
    metres. prior_pose: (B, 16, 3) with prior_weight (B,) or (B, 16) per radian^2 (0: no pull;
    default 1). betas_weight: the shape ridge; fit_betas=False keeps betas0. steps: Jacobian
    evaluations; damping: the initial lambda; retries: extra solves with more damping when a step
    would raise E. Tensors (or arrays) in, computed in float64 numpy. Returns float64 arrays: the
    parameters x (B, 61) (pose (16 x 3), betas, transl), E before and after (B,) and the
    accepted steps (B,) int64 (`refine` packs them as tensors)."""
    if robust not in ROBUST_KERNELS:
        raise ValueError(f"robust must be one of {ROBUST_KERNELS}, got {robust!r}")
    if align not in XYZ_ALIGNMENTS:
        raise ValueError(f"align must be one of {XYZ_ALIGNMENTS}, got {align!r}")
    arrays = keypoint_arrays(hand_model)
    count = len(pose0)
    sizes = (NUM_JOINTS * 3, NUM_BETAS, 3)
    x = np.concatenate(
        [
            to_numpy(v).reshape(count, n)
            for v, n in zip((pose0, betas0, transl0), sizes, strict=True)
        ],
        axis=1,
    )
    x = np.nan_to_num(x)
    if count == 0:
        return x, np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)

    def weights(values: np.ndarray, given, points: int) -> np.ndarray:
        """(B, points) weights, 0 where a value is missing (NaN) or its weight is."""
        ok = np.isfinite(values).all(-1)  # (B, points)
        w = 1.0 if given is None else np.maximum(np.nan_to_num(to_numpy(given)), 0.0)
        return np.where(ok, np.broadcast_to(w, (count, points)), 0.0)

    Kb = uvb = uvw = xyzb = xyzw = xyzm = prior = priorw = None
    if uv is not None:
        if K is None:
            raise ValueError("2D landmarks need the intrinsics K")
        Kb = np.broadcast_to(to_numpy(K), (count, 3, 3))
        uvb = to_numpy(uv)
        uvw = weights(uvb, uv_weight, 21)
        uvb = np.nan_to_num(uvb)
    if xyz is not None:
        xyzb = to_numpy(xyz)
        xyzw = weights(xyzb, xyz_weight, 21)
        xyzb = weighted_centre(np.nan_to_num(xyzb), xyzw)
        xyzm = xyzw / np.maximum(xyzw.sum(-1, keepdims=True), 1e-12)
    if prior_pose is not None:
        prior = to_numpy(prior_pose).reshape(count, NUM_JOINTS, 3)
        pw = to_numpy(1.0 if prior_weight is None else prior_weight)
        if pw.ndim < 2:  # one weight per hand (or one for all)
            pw = pw.reshape(-1, 1)
        priorw = np.repeat(weights(prior, pw, NUM_JOINTS), 3, axis=1)  # (B, 48)
        prior = np.nan_to_num(prior).reshape(count, NUM_JOINTS * 3)
    problem = _Problem(
        arrays, Kb, uvb, uvw, xyzb, xyzw, xyzm, prior, priorw, float(betas_weight), float(uv_sigma),
        float(xyz_sigma), robust, float(robust_scale), align,
    )  # fmt: skip

    energy = _objective(problem, x)
    before = energy.copy()
    lam = np.full(count, float(damping))
    accepted = np.zeros(count, dtype=np.int64)
    diagonal = np.arange(NUM_PARAMS)
    for _ in range(steps):
        hess, grad = _normal_equations(problem, x)
        if not fit_betas:
            hess[:, _BETAS] = 0.0
            hess[:, :, _BETAS] = 0.0
            grad[:, _BETAS] = 0.0
        diag = np.maximum(hess[:, diagonal, diagonal], 1e-9)
        if not fit_betas:
            diag[:, _BETAS] = 1.0  # zero gradient there, so a zero step
        pending = np.isfinite(energy)
        for _ in range(retries + 1):
            damped = hess.copy()
            damped[:, diagonal, diagonal] += lam[:, None] * diag + 1e-12
            step = -np.linalg.solve(damped, grad[..., None])[..., 0]
            trial = x + step
            trial_energy = _objective(problem, trial)
            better = pending & np.isfinite(trial_energy) & (trial_energy < energy)
            x = np.where(better[:, None], trial, x)
            energy = np.where(better, trial_energy, energy)
            accepted += better
            lam = np.where(better, np.maximum(lam / 3, 1e-7), lam)
            worse = pending & ~better
            lam = np.where(worse, np.minimum(lam * 8, 1e8), lam)
            pending = worse
            if not pending.any():
                break
    return x, before, energy, accepted


def refine(hand_model: HandModel, pose0, betas0, transl0, **terms) -> RefineResult:
    """`refine_arrays` (its terms and settings as keywords), the results as a `RefineResult` of
    tensors in the hand model's dtype and device."""
    return _result(hand_model, *refine_arrays(hand_model, pose0, betas0, transl0, **terms))


def _result(hand_model: HandModel, x, before, after, accepted) -> RefineResult:
    """The `RefineResult` of parameters x (B, 61) (tensors in the model's dtype and device)."""
    pose, betas, transl, before, after = to_model_tensors(
        hand_model, x[:, _POSE].reshape(len(x), NUM_JOINTS, 3), x[:, _BETAS], x[:, -3:], before,
        after,
    )  # fmt: skip
    steps = torch.from_numpy(accepted).to(pose.device)
    return RefineResult(pose, betas, transl, before, after, steps)


def objective(
    hand_model: HandModel, pose: Tensor, betas: Tensor, transl: Tensor, **terms
) -> Tensor:
    """(B,) the objective E of `refine` (same keyword terms) at the given hands, no step taken."""
    return refine(hand_model, pose, betas, transl, steps=0, **terms).objective_before


__all__ = [
    "NUM_PARAMS",
    "RefineResult",
    "keypoints_and_jacobian",
    "objective",
    "refine",
    "refine_arrays",
]
