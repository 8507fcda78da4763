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
mesh; the tests check it against `torch.func.jacfwd`, which was 5-10x slower on CPU), replaces rho
by its iteratively reweighted least-squares weight rho'(x) / 2x (Geman-McClure and Huber are
concave in x^2, so the weighted squares majorise them), aligns the 3D target at the current
estimate (by the envelope theorem the gradient of the minimised term is the one at fixed
alignment) and solves the damped normal equations (J^T J + lambda diag(J^T J)) dx = -J^T r per
hand, in double precision. A step is kept only where it lowers E; otherwise lambda grows and the
step is retried (up to `retries` times), so E never increases. lambda shrinks after every
accepted step.

Cost on one CPU thread (2-core shared machine): 5 steps with 2D, 3D and prior terms take ~10 ms
for one hand (~2 ms a step, dispatch-bound) and ~1.2 ms per hand for 32 hands.

Imports torch and the backend's hand model only (through `backend.fuse.closed_form`), plus
`backend.network.rotation`; never FastAPI, bpy, OpenCV or the training package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from backend.camera import project_points
from backend.hand_model.constants import MANO_PARENTS, NUM_BETAS, NUM_JOINTS
from backend.hand_model.model import HandModel
from backend.network.rotation import axis_angle_to_matrix

from .closed_form import (
    KEYPOINT_INDEX,
    LEVELS,
    KeypointLayer,
    forward_kinematics,
    keypoint_layer,
    layer_keypoints,
)

NUM_PARAMS = NUM_JOINTS * 3 + NUM_BETAS + 3  # 61: pose, betas, transl
ROBUST_KERNELS = ("geman_mcclure", "huber", "none")
XYZ_ALIGNMENTS = ("scale", "similarity")
_MIN_DEPTH = 1e-3  # m: points behind or at the camera project as if at 1 mm (never inf/NaN)


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
    """The observations and weights of one batch, each term present or None."""

    layer: KeypointLayer
    K: Tensor | None  # (B, 3, 3)
    uv: Tensor | None  # (B, 21, 2)
    uv_weight: Tensor | None  # (B, 21), 0 where missing
    xyz: Tensor | None  # (B, 21, 3)
    xyz_weight: Tensor | None  # (B, 21)
    prior: Tensor | None  # (B, 48)
    prior_weight: Tensor | None  # (B, 48)
    betas_weight: float
    uv_sigma: float
    xyz_sigma: float
    robust: str
    robust_scale: float
    align: str


def _robust(x2: Tensor, kind: str, c: float) -> tuple[Tensor, Tensor]:
    """rho and its IRLS weight rho'(x) / 2x, both as functions of squared normalised errors x2."""
    if kind == "geman_mcclure":
        d = 1.0 + x2 / c**2
        return x2 / d, 1.0 / d.square()
    if kind == "huber":
        x = x2.clamp(min=1e-24).sqrt()
        inside = x <= c
        return torch.where(inside, x2, 2 * c * x - c**2), torch.where(inside, 1.0, c / x)
    return x2, torch.ones_like(x2)


def _keypoints(layer: KeypointLayer, x: Tensor) -> Tensor:
    """(B, 21, 3) camera-frame keypoints for parameters x (B, 61)."""
    pose = x[:, : NUM_JOINTS * 3].reshape(-1, NUM_JOINTS, 3)
    betas = x[:, NUM_JOINTS * 3 : NUM_JOINTS * 3 + NUM_BETAS]
    return layer_keypoints(layer, axis_angle_to_matrix(pose), betas, x[:, -3:])


def _project(K: Tensor, points: Tensor) -> Tensor:
    """(B, N, 2) pixels of camera points (B, N, 3) under intrinsics (B, 3, 3), each point held
    at least _MIN_DEPTH in front of the camera (a step that throws the hand behind the camera
    must give a large, finite residual, not a sign flip)."""
    held = torch.cat([points[..., :2], points[..., 2:].clamp(min=_MIN_DEPTH)], dim=-1)
    return project_points(held, K)


def _centre(points: Tensor, weight: Tensor) -> Tensor:
    w = weight[..., None] / weight.sum(-1)[..., None, None].clamp(min=1e-12)
    return points - (w * points).sum(-2, keepdim=True)


def _alignment(model: Tensor, target: Tensor, weight: Tensor, align: str) -> tuple[Tensor, Tensor]:
    """Scale (B,) and rotation (B, 3, 3) minimising sum_j w_j |s R m_j - t_j|^2 for centred model
    and target points (B, 21, 3): R by weighted Kabsch ("similarity") or I, then s optimal."""
    eye = torch.eye(3, dtype=model.dtype, device=model.device).expand(model.shape[0], 3, 3)
    rot = eye
    if align == "similarity":
        cov = torch.einsum("bn,bni,bnj->bij", weight, target, model)
        u, _, vh = torch.linalg.svd(cov)
        fix = torch.ones_like(u[..., 0, :])
        fix[:, 2] = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0)
        rot = torch.where(((weight > 0).sum(-1) >= 3)[:, None, None], (u * fix[:, None]) @ vh, eye)
    rotated = model @ rot.transpose(-1, -2)
    num = (weight * (rotated * target).sum(-1)).sum(-1)
    den = (weight * rotated.square().sum(-1)).sum(-1)
    return num / den.clamp(min=1e-12), rot


def _objective(problem: _Problem, x: Tensor) -> Tensor:
    """(B,) the objective E at parameters x (B, 61), alignment and robust kernel exact."""
    keypoints = _keypoints(problem.layer, x)
    energy = x.new_zeros(x.shape[0])
    if problem.uv is not None:
        err = (_project(problem.K, keypoints) - problem.uv) / problem.uv_sigma
        rho, _ = _robust(err.square().sum(-1), problem.robust, problem.robust_scale)
        energy = energy + (problem.uv_weight * rho).sum(-1)
    if problem.xyz is not None:
        model = _centre(keypoints, problem.xyz_weight)
        target = _centre(problem.xyz, problem.xyz_weight)
        scale, rot = _alignment(model, target, problem.xyz_weight, problem.align)
        aligned = scale[:, None, None] * model @ rot.transpose(-1, -2)
        sq = (aligned - target).square().sum(-1) / problem.xyz_sigma**2
        energy = energy + (problem.xyz_weight * sq).sum(-1)
    if problem.prior is not None:
        diff = x[:, : NUM_JOINTS * 3] - problem.prior
        energy = energy + (problem.prior_weight * diff.square()).sum(-1)
    betas = x[:, NUM_JOINTS * 3 : NUM_JOINTS * 3 + NUM_BETAS]
    return energy + problem.betas_weight * betas.square().sum(-1)


def _skew(v: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def _right_jacobian(theta: Tensor) -> Tensor:
    """(..., 3, 3) right Jacobian of the exponential map, exp(theta + d) = exp(theta) exp(Jr d)
    to first order: Jr = I - (1 - cos t) / t^2 [theta]x + (t - sin t) / t^3 [theta]x^2."""
    t2 = theta.square().sum(-1)
    small = t2 < 1e-6
    t = torch.where(small, torch.ones_like(t2), t2).sqrt()
    a = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(t)) / t.square())
    b = torch.where(small, 1 / 6 - t2 / 120, (t - torch.sin(t)) / t.pow(3))
    k = _skew(theta)
    eye = torch.eye(3, dtype=theta.dtype, device=theta.device)
    return eye - a[..., None, None] * k + b[..., None, None] * (k @ k)


def _ancestry() -> Tensor:
    """(16, 16) A[j, m] = 1 where joint m is joint j or one of its ancestors (m moves j)."""
    ancestry = torch.zeros(NUM_JOINTS, NUM_JOINTS)
    for j in range(NUM_JOINTS):
        m = j
        while m >= 0:
            ancestry[j, m] = 1.0
            m = MANO_PARENTS[m]
    return ancestry


_ANCESTRY = _ancestry()


def keypoints_and_jacobian(layer: KeypointLayer, x: Tensor) -> tuple[Tensor, Tensor]:
    """Keypoints (B, 21, 3) at parameters x (B, 61) and their exact Jacobian (B, 21, 3, 61).

    A joint m's local rotation R_m = exp(theta_m) turns its subtree about the joint: with the
    right Jacobian Jr, d(point) / d(theta_m) = -[point - P_m]x G_m Jr(theta_m) for every point
    rigidly carried by a descendant (G_m the global rotation, P_m the position of joint m). A
    fingertip is the skinning-weighted sum of such carried copies, plus its pose correctives,
    which move with d(R_n) = R_n [Jr e_i]x. Positions are linear in betas for fixed rotations
    (forward kinematics of the shape directions) and shift with the translation."""
    count = x.shape[0]
    dtype = x.dtype
    pose = x[:, : NUM_JOINTS * 3].reshape(count, NUM_JOINTS, 3)
    betas = x[:, NUM_JOINTS * 3 : NUM_JOINTS * 3 + NUM_BETAS]
    rotmats = axis_angle_to_matrix(pose)  # (B, 16, 3, 3)
    rest = layer.rest_joints(betas)  # (B, 16, 3)
    glob, joints = forward_kinematics(rest, rotmats)
    eye = torch.eye(3, dtype=dtype, device=x.device)
    pose_feature = (rotmats[:, 1:] - eye).flatten(1)  # (B, 135)
    tips_rest = layer.rest_tips(betas) + torch.einsum(
        "bp,tcp->btc", pose_feature, layer.tips_posedirs
    )
    weights = layer.tips_weights  # (5, 16)
    local = tips_rest[:, :, None] - rest[:, None]  # (B, 5, 16, 3)
    carried = (glob[:, None] @ local[..., None])[..., 0] + joints[:, None]  # (B, 5, 16, 3)
    tips = (weights[..., None] * carried).sum(-2)  # (B, 5, 3)

    ancestry = _ANCESTRY.to(dtype=dtype, device=x.device)
    turn = glob @ _right_jacobian(pose)  # (B, 16, 3, 3) G_m Jr_m
    # joints: (B, 16 points, 16 joints m, 3, 3)
    offset = joints[:, :, None] - joints[:, None]  # P_j - P_m
    d_joints = -_skew(offset) @ turn[:, None] * ancestry[None, :, :, None, None]
    # tips: sum_k w_tk A[k, m] (X_tk - P_m), the weighted lever arm about joint m
    wa = weights @ ancestry  # (5, 16) sum_k w_tk A[k, m]
    lever = (
        torch.einsum("tk,km,btkc->btmc", weights, ancestry, carried)
        - wa[..., None] * joints[:, None]
    )
    d_tips = -_skew(lever) @ turn[:, None]  # (B, 5, 16, 3, 3)
    # pose correctives of the tips: d v / d theta_n,i = posedirs_n : (R_n [Jr_n e_i]x)
    jr = _right_jacobian(pose[:, 1:])  # (B, 15, 3, 3)
    d_rot = rotmats[:, 1:, None] @ _skew(jr.transpose(-1, -2))  # (B, 15, 3 (i), 3, 3)
    posedirs = layer.tips_posedirs.reshape(5, 3, NUM_JOINTS - 1, 9)
    d_v = torch.einsum("tcnq,bniq->btcni", posedirs, d_rot.flatten(-2))  # (B, 5, 3, 15, 3)
    blend = torch.einsum("tk,bkij->btij", weights, glob)  # (B, 5, 3, 3) sum_k w_tk G_k
    d_tips[:, :, 1:] += torch.einsum("btac,btcni->btnai", blend, d_v)
    d_pose = torch.cat([d_joints, d_tips], dim=1).index_select(1, KEYPOINT_INDEX.to(x.device))
    d_pose = d_pose.permute(0, 1, 3, 2, 4).reshape(count, 21, 3, NUM_JOINTS * 3)

    # betas: forward kinematics of the joints' shape directions, then skinning for the tips
    shape_j = layer.joints_shapedirs  # (16, 3, 10)
    d_beta = x.new_zeros(count, NUM_JOINTS, 3, NUM_BETAS)
    d_beta[:, 0] = shape_j[0]
    parents = [0] * 5
    for level in LEVELS:
        here = list(level)
        d_beta[:, here] = d_beta[:, parents] + glob[:, parents] @ (shape_j[here] - shape_j[parents])
        parents = here
    d_beta_joints = d_beta  # (B, 16, 3, 10)
    shape_local = layer.tips_shapedirs[:, None] - shape_j[None]  # (5, 16, 3, 10)
    d_beta_tips = torch.einsum("tk,bkij,tkjl->btil", weights, glob, shape_local) + torch.einsum(
        "tk,bkcl->btcl", weights, d_beta_joints
    )  # (B, 5, 3, 10)
    d_shape = torch.cat([d_beta_joints, d_beta_tips], dim=1).index_select(
        1, KEYPOINT_INDEX.to(x.device)
    )

    d_transl = eye.expand(count, 21, 3, 3)
    jac = torch.cat([d_pose, d_shape, d_transl], dim=-1)  # (B, 21, 3, 61)
    keypoints = torch.cat([joints, tips], dim=1).index_select(1, KEYPOINT_INDEX.to(x.device))
    return keypoints + x[:, None, -3:], jac


def _linearise(problem: _Problem, x: Tensor) -> tuple[Tensor, Tensor]:
    """Whitened residuals r (B, R) and their Jacobian (B, R, 61) at x (B, 61), with the IRLS
    weights and the 3D alignment frozen at x."""
    keypoints, d_kp = keypoints_and_jacobian(problem.layer, x)  # (B, 21, 3), (B, 21, 3, 61)
    count = x.shape[0]
    res: list[Tensor] = []
    jac: list[Tensor] = []
    if problem.uv is not None:
        p = keypoints @ problem.K.transpose(-1, -2)  # (B, 21, 3)
        depth = p[..., 2:].clamp(min=_MIN_DEPTH)
        u = p[..., :2] / depth
        err = (u - problem.uv) / problem.uv_sigma
        _, irls = _robust(err.square().sum(-1), problem.robust, problem.robust_scale)
        sw = ((problem.uv_weight * irls).sqrt() / problem.uv_sigma)[..., None]  # (B, 21, 1)
        # d u / d X = (K[:2] - u K[2]) / depth
        d_proj = (problem.K[:, None, :2] - u[..., None] * problem.K[:, None, 2:]) / depth[..., None]
        res.append((sw * (u - problem.uv)).reshape(count, -1))
        jac.append((sw[..., None] * (d_proj @ d_kp)).reshape(count, -1, NUM_PARAMS))
    if problem.xyz is not None:
        w = problem.xyz_weight
        model = _centre(keypoints, w)
        target = _centre(problem.xyz, w)
        scale, rot = _alignment(model, target, w, problem.align)
        sr = scale[:, None, None] * rot  # (B, 3, 3)
        sw = (w.sqrt() / problem.xyz_sigma)[..., None]  # (B, 21, 1)
        res.append((sw * (model @ sr.transpose(-1, -2) - target)).reshape(count, -1))
        wn = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
        d_centred = d_kp - (wn[..., None, None] * d_kp).sum(1, keepdim=True)
        jac.append((sw[..., None] * (sr[:, None] @ d_centred)).reshape(count, -1, NUM_PARAMS))
    if problem.prior is not None:
        sw = problem.prior_weight.sqrt()  # (B, 48)
        res.append(sw * (x[:, : NUM_JOINTS * 3] - problem.prior))
        block = x.new_zeros(count, NUM_JOINTS * 3, NUM_PARAMS)
        block[..., : NUM_JOINTS * 3] = torch.diag_embed(sw)
        jac.append(block)
    root = problem.betas_weight**0.5
    res.append(root * x[:, NUM_JOINTS * 3 : NUM_JOINTS * 3 + NUM_BETAS])
    block = x.new_zeros(count, NUM_BETAS, NUM_PARAMS)
    block[..., NUM_JOINTS * 3 : NUM_JOINTS * 3 + NUM_BETAS] = root * torch.eye(
        NUM_BETAS, dtype=x.dtype, device=x.device
    )
    jac.append(block)
    return torch.cat(res, dim=1), torch.cat(jac, dim=1)


@torch.no_grad()
def refine(
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
) -> RefineResult:
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
    would raise E."""
    if robust not in ROBUST_KERNELS:
        raise ValueError(f"robust must be one of {ROBUST_KERNELS}, got {robust!r}")
    if align not in XYZ_ALIGNMENTS:
        raise ValueError(f"align must be one of {XYZ_ALIGNMENTS}, got {align!r}")
    layer = keypoint_layer(hand_model)
    dtype, device = layer.joints_template.dtype, layer.joints_template.device

    def cast(t: Tensor | float) -> Tensor:
        return torch.as_tensor(t).to(dtype=dtype, device=device)

    count = pose0.shape[0]
    x = torch.cat(
        [cast(pose0).reshape(count, -1), cast(betas0).reshape(count, -1), cast(transl0)], dim=1
    )
    x = torch.nan_to_num(x)

    def weights(values: Tensor, given: Tensor | None, points: int) -> Tensor:
        """(B, points) weights, 0 where a value is missing (NaN) or its weight is."""
        ok = torch.isfinite(values).all(-1)  # (B, points)
        w = x.new_ones(count, points) if given is None else cast(given).expand(count, points)
        return torch.where(ok, torch.nan_to_num(w).clamp(min=0.0), torch.zeros_like(w))

    Kb = uvb = uvw = xyzb = xyzw = prior = priorw = None
    if uv is not None:
        if K is None:
            raise ValueError("2D landmarks need the intrinsics K")
        Kb = cast(K).expand(count, 3, 3)
        uvw = weights(cast(uv), uv_weight, 21)
        uvb = torch.nan_to_num(cast(uv))
    if xyz is not None:
        xyzw = weights(cast(xyz), xyz_weight, 21)
        xyzb = torch.nan_to_num(cast(xyz))
    if prior_pose is not None:
        prior_pose = cast(prior_pose).reshape(count, NUM_JOINTS, 3)
        pw = cast(1.0 if prior_weight is None else prior_weight)
        if pw.ndim < 2:  # one weight per hand (or one for all)
            pw = pw.reshape(-1, 1)
        priorw = weights(prior_pose, pw.expand(count, NUM_JOINTS), NUM_JOINTS)
        priorw = priorw.repeat_interleave(3, dim=1)  # (B, 48)
        prior = torch.nan_to_num(prior_pose).reshape(count, NUM_JOINTS * 3)
    problem = _Problem(
        layer, Kb, uvb, uvw, xyzb, xyzw, prior, priorw, float(betas_weight), float(uv_sigma),
        float(xyz_sigma), robust, float(robust_scale), align,
    )  # fmt: skip

    energy = _objective(problem, x)
    before = energy.clone()
    lam = x.new_full((count,), damping)
    accepted = torch.zeros(count, dtype=torch.int64, device=device)
    betas_slice = slice(NUM_JOINTS * 3, NUM_JOINTS * 3 + NUM_BETAS)
    eye = torch.eye(NUM_PARAMS, dtype=torch.float64, device=x.device)
    for _ in range(steps):
        res, jac = _linearise(problem, x)
        if not fit_betas:
            jac[..., betas_slice] = 0.0
        # normal equations in double precision: pixel, metre and radian scales differ widely
        jac64 = jac.double()
        hess = jac64.transpose(1, 2) @ jac64  # (B, 61, 61)
        grad = (jac64.transpose(1, 2) @ res.double()[..., None])[..., 0]  # (B, 61)
        diag = torch.diagonal(hess, dim1=1, dim2=2).clamp(min=1e-9)
        if not fit_betas:
            diag[:, betas_slice] = 1.0  # zero gradient there, so a zero step
        pending = torch.isfinite(energy)
        for _ in range(retries + 1):
            damped = hess + torch.diag_embed(lam.double()[:, None] * diag) + 1e-12 * eye
            step = -torch.linalg.solve(damped, grad).to(dtype)
            trial = x + step
            trial_energy = _objective(problem, trial)
            better = pending & torch.isfinite(trial_energy) & (trial_energy < energy)
            x = torch.where(better[:, None], trial, x)
            energy = torch.where(better, trial_energy, energy)
            accepted += better.long()
            lam = torch.where(better, (lam / 3).clamp(min=1e-7), lam)
            worse = pending & ~better
            lam = torch.where(worse, (lam * 8).clamp(max=1e8), lam)
            pending = worse
            if not bool(pending.any()):
                break
    return RefineResult(
        pose=x[:, : NUM_JOINTS * 3].reshape(count, NUM_JOINTS, 3),
        betas=x[:, betas_slice],
        transl=x[:, -3:],
        objective_before=before,
        objective_after=energy,
        accepted_steps=accepted,
    )


def objective(
    hand_model: HandModel, pose: Tensor, betas: Tensor, transl: Tensor, **terms
) -> Tensor:
    """(B,) the objective E of `refine` (same keyword terms) at the given hands, no step taken."""
    return refine(hand_model, pose, betas, transl, steps=0, **terms).objective_before


__all__ = ["NUM_PARAMS", "RefineResult", "objective", "refine"]
