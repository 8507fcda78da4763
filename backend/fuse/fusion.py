"""Every signal of a hand fused into one MANO hand: MediaPipe's image landmarks (2D), its world
landmarks (3D, metres), the network's prediction, the hand model's shape prior.

Per hand with landmarks (`fuse_hands`, batched over the hands of one side):

1. start, in closed form (`closed_form.keypoints_to_mano`): pose and shape from MediaPipe's world
   landmarks (metres, roughly the camera's axes: x right, y down, z away; on the synthetic test
   split their scale is the truth's within 5 % at the median and their rotation to the camera
   frame 29 degrees, tests/test_fusion.py), then the perspective translation that puts those
   keypoints on the 2D landmarks under K (`camera.translation_from_points`); a hand without world
   landmarks starts from the network's pose and shape;
2. a few Levenberg-Marquardt steps (`gauss_newton.refine`) on the robust 2D reprojection error
   (Huber; sigma: `uv_sigma` of the hand box's side), the world landmarks' shape (scale-aligned,
   relative to their centroid, sigma `xyz_sigma`), the network's pose as a prior and a ridge on
   the shape. The settings were chosen on the synthetic test split and the annotated sample
   photos (benchmarks.accuracy; README "The fused hand against its peers").

The network's pull is its trust (`network_weight`): its heat-map confidence times how well its
own 2D keypoints agree with the landmarks, exp(-(d / `agreement`)^2) with d their mean distance in
box sides. A network that sees the hand as MediaPipe does (the synthetic domain it was trained
on) keeps its say on the 3D pose, where MediaPipe's world landmarks are weaker; one that
disagrees (real photos, where it is poor) has no say, so it cannot drag the hand off good
landmarks. A hand without landmarks is not passed here: the network's hand is used as it is.

Imports torch and numpy, and the backend's camera, hand model, rotations and fusion steps;
never a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.camera import project_points, translation_from_points
from backend.hand_model.constants import NUM_BETAS, NUM_JOINTS
from backend.hand_model.model import HandModel

from .blas import on_one_blas_thread
from .closed_form import closed_form_arrays, keypoint_arrays, keypoints_to_mano, posed_hand, so3_exp
from .gauss_newton import refine_arrays

MIN_SAY = 0.01  # a network trusted less than this is not counted among a hand's signals


@dataclass(frozen=True)
class FusionSettings:
    uv_sigma: float = 0.02  # box sides: a landmark this far off costs as much as ...
    xyz_sigma: float = 0.02  # ... a world-landmark keypoint this far off (metres, aligned)
    prior: float = 10.0  # the network's pose prior per radian^2, at full trust
    agreement: float = 0.15  # box sides: the network's keypoints this far off -> trust e^-1
    steps: int = 5  # Levenberg-Marquardt steps
    robust: str = "huber"  # the 2D term's robust kernel (`gauss_newton.refine`)
    robust_scale: float = 3.0  # ... and its scale, in uv_sigma
    betas_weight: float = 0.1  # the ridge on the shape, per unit^2


@dataclass
class FusedHands:
    """The fused hands of one side, (B, ...) numpy arrays."""

    pose: np.ndarray  # (B, 16, 3) axis-angle, flat-hand rest
    betas: np.ndarray  # (B, 10)
    transl: np.ndarray  # (B, 3) camera frame, metres
    joints: np.ndarray  # (B, 21, 3) camera frame, metres
    keypoints2d: np.ndarray  # (B, 21, 2) joints projected with K
    network_weight: np.ndarray  # (B,) the network's trust in [0, 1]
    rms_px_before: np.ndarray  # (B,) the network's hand's landmark error (RMS, pixels)
    rms_px_after: np.ndarray  # (B,) the fused hand's
    used_world: np.ndarray  # (B,) bool: the hand started from its world landmarks

    def fit_record(self, i: int) -> dict:
        """The "fit" of hand i in the JSON: the signals that made it (MediaPipe's 2D landmarks,
        its world landmarks where it had them, the network where it had a say), the network's
        trust, and the landmark RMS error in pixels of the network's hand and of this one."""
        signals = ["mediapipe_2d"]
        if self.used_world[i]:
            signals.append("mediapipe_3d")
        if self.network_weight[i] >= MIN_SAY:
            signals.append("network")
        return {
            "landmarks": "mediapipe",
            "signals": signals,
            "network_weight": round(float(self.network_weight[i]), 3),
            "rms_px_before": round(float(self.rms_px_before[i]), 2),
            "rms_px_after": round(float(self.rms_px_after[i]), 2),
        }


def network_trust(
    network_uv: np.ndarray, landmarks: np.ndarray, box_side: np.ndarray, confidence: np.ndarray,
    agreement: float,
) -> np.ndarray:  # fmt: skip
    """(B,) trust in the network's pose: its confidence (B,) times exp(-(d / agreement)^2), d the
    mean distance (box sides) between its 2D keypoints (B, 21, 2) and the landmarks (B, 21, 2)."""
    dist = np.linalg.norm(np.asarray(network_uv) - landmarks, axis=-1)  # (B, 21), NaN if missing
    ok = np.isfinite(dist)
    mean = np.where(ok, dist, 0).sum(-1) / np.maximum(ok.sum(-1), 1)
    d = np.where(ok.any(-1), mean, np.inf) / box_side  # no landmark to compare: no trust
    return np.clip(confidence, 0, 1) * np.exp(-np.square(d / agreement))


def _place(kp: np.ndarray, uv: np.ndarray, K: np.ndarray, init: np.ndarray) -> np.ndarray:
    """`camera.translation_from_points` on the landmarks that are there (init without 3 of them
    or without a solution)."""
    ok = np.isfinite(uv).all(-1)
    if int(ok.sum()) < 3:
        return init
    t = translation_from_points(kp[ok], uv[ok], K)
    return init if t is None else t


def _rms(uv: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(B,) RMS pixel distance over the finite target points."""
    ok = np.isfinite(target).all(-1)
    d2 = ((uv - np.nan_to_num(target)) ** 2).sum(-1)
    return np.sqrt((d2 * ok).sum(-1) / np.maximum(ok.sum(-1), 1))


@on_one_blas_thread
def fuse_hands(
    hand_model: HandModel,
    side: str,
    K: np.ndarray,
    landmarks: np.ndarray,
    world: np.ndarray,
    network_pose: np.ndarray,
    network_betas: np.ndarray,
    network_transl: np.ndarray,
    network_uv: np.ndarray,
    confidence: np.ndarray,
    box_side: np.ndarray,
    settings: FusionSettings = FusionSettings(),
    betas: np.ndarray | None = None,
) -> FusedHands:
    """B hands of one side (module doc). K (3, 3) pixels; landmarks (B, 21, 2) pixels and world
    (B, 21, 3) metres, MediaPipe's (NaN where missing; a hand without world landmarks starts
    from the network's pose and shape instead of the closed form); network_pose (B, 16, 3),
    network_betas (B, 10), network_transl (B, 3) and network_uv (B, 21, 2) the network's hands;
    confidence (B,) its heat-map confidence; box_side (B,) pixels; betas: (10,) one shape for
    every hand, kept fixed (a video track's), or None to fit each hand's. Computed in float64
    numpy on the hand model's keypoint arrays (torch's per-op dispatch would cost more than
    these small arrays' arithmetic); the results are float32."""
    arrays = keypoint_arrays(hand_model)
    if arrays.side != side:
        raise ValueError(f"a {side} hand needs HandModel({side!r}), got a {arrays.side} model")
    f64 = np.float64
    K = np.asarray(K, dtype=f64)
    uv = np.asarray(landmarks, dtype=f64)
    xyz = np.asarray(world, dtype=f64)
    net_pose = np.asarray(network_pose, dtype=f64).reshape(-1, NUM_JOINTS, 3)
    trust = network_trust(network_uv, landmarks, box_side, confidence, settings.agreement)
    # 1. the closed-form start; its translation from the 2D landmarks, per hand
    count = len(xyz)
    fixed = None if betas is None else np.broadcast_to(np.asarray(betas, f64), (count, NUM_BETAS))
    finite = np.isfinite(xyz).all(-1)  # (B, 21) the world landmarks that are there
    start_pose, start_betas, _, _ = closed_form_arrays(arrays, xyz, finite, fixed)
    has_world = finite.sum(-1) >= 12  # enough points to fix a pose
    pose0 = np.where(has_world[:, None, None], start_pose, net_pose)
    if fixed is not None:
        betas0 = fixed
    else:
        betas0 = np.where(has_world[:, None], start_betas, np.asarray(network_betas, dtype=f64))
    kp = posed_hand(arrays, so3_exp(pose0), betas0).keypoints  # (B, 21, 3) no translation
    init = np.asarray(network_transl, dtype=f64)
    transl = np.stack([_place(kp[i], uv[i], K, init[i]) for i in range(count)])
    # 2. the refinement on every signal, each hand's pixels in units of its own sigma (K and the
    # landmarks scaled alike: the projection with diag(1/s, 1/s, 1) K is the pixels / s)
    sigma_px = np.asarray(box_side, dtype=f64) * settings.uv_sigma  # (B,)
    scale = np.ones((count, 3))
    scale[:, :2] = 1 / sigma_px[:, None]
    x, _, _, _ = refine_arrays(
        hand_model,
        pose0,
        betas0,
        transl,
        K=scale[:, :, None] * K,  # (B, 3, 3)
        uv=uv * scale[:, None, :2],
        uv_sigma=1.0,
        xyz=xyz,
        xyz_sigma=settings.xyz_sigma,
        prior_pose=net_pose,
        prior_weight=settings.prior * trust,
        steps=settings.steps,
        fit_betas=fixed is None,
        betas_weight=settings.betas_weight,
        robust=settings.robust,
        robust_scale=settings.robust_scale,
    )
    pose = x[:, : NUM_JOINTS * 3].reshape(count, NUM_JOINTS, 3)
    fused_betas, fused_transl = x[:, NUM_JOINTS * 3 : -3], x[:, -3:]
    joints = posed_hand(arrays, so3_exp(pose), fused_betas).keypoints + fused_transl[:, None]
    uv_after = project_points(joints, K)
    f32 = np.float32
    return FusedHands(
        pose=pose.astype(f32),
        betas=fused_betas.astype(f32),
        transl=fused_transl.astype(f32),
        joints=joints.astype(f32),
        keypoints2d=uv_after.astype(f32),
        network_weight=trust,
        rms_px_before=_rms(np.asarray(network_uv, dtype=f64), uv).astype(f32),
        rms_px_after=_rms(uv_after, uv).astype(f32),
        used_world=has_world,
    )


@torch.no_grad()
@on_one_blas_thread
def shape_from_world(hand_model: HandModel, world: np.ndarray, side: str) -> np.ndarray | None:
    """One shape (10,) for many views of one hand: the median over the views (N, 21, 3) that
    have every world landmark of the closed form's shape (`keypoints_to_mano`); None without
    such a view."""
    world = np.asarray(world, dtype=np.float32)
    full = world[np.isfinite(world).all(axis=(1, 2))]
    if not len(full):
        return None
    dev = hand_model.tip_vertex_ids.device
    start = keypoints_to_mano(hand_model, torch.as_tensor(full, device=dev), side)
    return start.betas.median(dim=0).values.cpu().numpy()
