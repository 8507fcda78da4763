"""Refine a predicted hand on 2D landmarks (MediaPipe's), with the network's 3D pose as the prior.

The network gives a plausible 3D hand whose 2D keypoints can be far off on real photos; MediaPipe
Hands gives accurate 2D landmarks but no usable 3D hand. `fit_to_landmarks` starts from the
network's pose, shape and translation and minimises, with Adam over `FitSettings.iterations` steps:

    E = data * mean_j rho(|pi(K (J_j + t)) - u_j| / s)        2D landmarks, s = the hand box side
      + pose * mean_j |theta_j - theta_j^net|^2                 the 15 finger joints (radians^2)
      + betas * mean(beta^2)                                   the shape prior
      + geometric * anatomy(J)                                 `backend.hand_model.anatomy`
      + depth * log(t_z / t_z^net)^2                           the hand's distance

where rho(r) = r^2 / (r^2 + sigma^2) (Geman-McClure, so a few wrong landmarks cannot drag the hand;
sigma shrinks from `sigma_start` over the iterations, so landmarks far from a poor start still pull)
and anatomy is the geometric-constraint term of training (finger planarity, no backward bending).
The global orientation is free. Without the depth term the fit can pull the hand towards the
camera, where a larger projection fits the landmarks as well; a first rigid stage on the palm's
landmarks alone was tried and dropped (the palm's near-planar points let it settle on the mirrored
orientation). The joint order of the landmarks is the project's (MediaPipe's is the same). The
weights were chosen on the synthetic test split and the annotated sample photos (README: "Refining
on MediaPipe's landmarks"); `python -m tools.eval_refine` measures them.

Imports torch and the backend's hand model only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.hand_model.anatomy import geometric_loss
from backend.render import project_points


@dataclass(frozen=True)
class FitSettings:
    data: float = 10.0  # weight of the robust 2D term (each landmark's error in box sides)
    sigma: float = 0.1  # Geman-McClure scale at the end, in box sides
    sigma_start: float = 1.0  # ... and at the start
    pose: float = 20.0  # pull of the finger joints towards the network's pose
    betas: float = 0.1  # shape prior
    geometric: float = 1.0  # anatomical constraints
    depth: float = 10.0  # pull of the hand's distance towards the network's, on log(z / z0)
    iterations: int = 150
    lr: float = 0.03  # Adam step for pose and shape (radians, shape units); translation x 0.05


def fit_to_landmarks(
    hand_model,
    side: str,
    pose,
    betas,
    transl,
    K,
    landmarks,
    box_side: float,
    settings: FitSettings = FitSettings(),
) -> dict:
    """The fitted hand: {"pose" (16, 3), "betas" (10,), "transl" (3,), "joints" (21, 3),
    "keypoints2d" (21, 2), "rms_px_before", "rms_px_after"} (tensors on the model's device; the
    RMS values are the landmark errors in pixels before and after the fit)."""
    if not box_side > 0:
        raise ValueError(f"box_side must be positive, got {box_side}")
    device = next(iter(hand_model.buffers())).device
    as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)  # noqa: E731
    pose0, betas0, t0, K, target = as_t(pose), as_t(betas), as_t(transl), as_t(K), as_t(landmarks)
    if target.shape != (21, 2) or not torch.isfinite(target).all():
        raise ValueError(f"landmarks must be 21 finite (x, y) pixels, got {tuple(target.shape)}")
    delta = torch.zeros_like(pose0, requires_grad=True)
    d_betas = torch.zeros_like(betas0, requires_grad=True)
    t = t0.clone().requires_grad_(True)

    def joints_of(p, b, tr):
        return hand_model(p[None], b[None], tr[None]).keypoints[0]

    with torch.enable_grad():
        optim = torch.optim.Adam(
            [
                {"params": [delta, d_betas], "lr": settings.lr},
                {"params": [t], "lr": settings.lr * 0.05},
            ]
        )
        for i in range(settings.iterations):
            # graduated non-convexity: the robust scale shrinks from sigma_start to sigma, so far
            # landmarks pull (as least squares) at first and outliers are let go at the end
            progress = i / max(1, settings.iterations - 1)
            sigma2 = (settings.sigma_start ** (1 - progress) * settings.sigma**progress) ** 2
            joints = joints_of(pose0 + delta, betas0 + d_betas, t)
            r2 = ((project_points(joints, K) - target).norm(dim=-1) / box_side).square()
            data = (sigma2 * r2 / (r2 + sigma2)).mean() / settings.sigma**2
            loss = (
                settings.data * data
                + settings.pose * delta[1:].square().sum(-1).mean()
                + settings.betas * (betas0 + d_betas).square().mean()
                + settings.geometric * geometric_loss(joints[None], side)
                + settings.depth * torch.log(t[2].clamp(min=1e-3) / t0[2]).square()
            )
            optim.zero_grad()
            loss.backward()
            optim.step()
    with torch.no_grad():
        before = project_points(joints_of(pose0, betas0, t0), K)
        pose1, betas1, t1 = pose0 + delta, betas0 + d_betas, t.detach()
        joints = joints_of(pose1, betas1, t1)
        after = project_points(joints, K)
    rms = lambda uv: float((uv - target).square().sum(-1).mean().sqrt())  # noqa: E731
    return {
        "pose": pose1.detach(),
        "betas": betas1.detach(),
        "transl": t1,
        "joints": joints,
        "keypoints2d": after,
        "rms_px_before": rms(before),
        "rms_px_after": rms(after),
    }
