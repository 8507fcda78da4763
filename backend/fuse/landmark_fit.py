"""Refine predicted hands on 2D landmarks (MediaPipe's), with the network's 3D pose as the prior.

The network gives a plausible 3D hand whose 2D keypoints can be far off on real photos; MediaPipe
Hands gives accurate 2D landmarks but no usable 3D hand. `fit_to_landmarks` (one photo) and
`fit_track` (the frames of one video track, fitted together) start from the network's pose, shape
and translation and minimise, with Adam over `FitSettings.iterations` steps:

    E = data * mean_f,j rho(|pi(K (J_fj + t_f)) - u_fj| / s_f)   2D landmarks, s_f the hand box side
      + pose * mean_f,j |theta_fj - theta_fj^net|^2               the 15 finger joints (radians^2)
      + betas * mean(beta^2)                                     the shape prior (one beta)
      + geometric * mean_f anatomy(J_f)                          `backend.hand_model.anatomy`
      + depth * mean_f log(t_fz / t_fz^net)^2                     the hand's distance
      + temporal * mean_f,j rho_c(|X_f-1,j - 2 X_fj + X_f+1,j|) / a^2   video: camera joints X

where f runs over the frames (one for a photo; the data term over the frames that have landmarks),
rho(r) = r^2 / (r^2 + sigma^2) (Geman-McClure, so a few wrong landmarks cannot drag the hand;
sigma shrinks from `sigma_start` over the iterations, so landmarks far from a poor start still pull)
and anatomy is the geometric-constraint term of training (finger planarity, no backward bending).
The temporal term penalises the joints' acceleration between consecutive frames (a = the
`temporal_scale` in metres per frame^2), so frame-to-frame jitter of the landmarks does not become
jitter of the hand, and frames without landmarks follow their neighbours. It is robust too
(rho_c(x) = c^2 x^2 / (x^2 + c^2), c = `temporal_robust`): where the network's own hands jump by
centimetres or metres between frames (a track that lost its hand), the jump costs a bounded
amount and cannot drag a frame off its landmarks (without it, one such track went from 93 to 545
px of landmark error). The global orientation
is free. Without the depth term the fit can pull the hand towards the camera, where a larger
projection fits the landmarks as well; a first rigid stage on the palm's landmarks alone was tried
and dropped (the palm's near-planar points let it settle on the mirrored orientation). The joint
order of the landmarks is the project's (MediaPipe's is the same). The weights were chosen on the
synthetic test split and the annotated sample photos (README: "Refining on MediaPipe's
landmarks"); `python -m tools.eval_refine` measures them.

A track longer than `FitSettings.chunk` frames is fitted in chunks of that many, one batch each
(memory stays bounded on long clips): first its one shape, fitted on `chunk` frames spread over
the whole track, then each chunk's pose and translation with that shape, the chunk's temporal term
also seeing the last two fitted frames of the one before.

Imports torch and the backend's hand model and camera only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from backend.camera import project_points
from backend.hand_model.anatomy import geometric_loss


@dataclass(frozen=True)
class FitSettings:
    data: float = 10.0  # weight of the robust 2D term (each landmark's error in box sides)
    sigma: float = 0.1  # Geman-McClure scale at the end, in box sides
    sigma_start: float = 1.0  # ... and at the start
    pose: float = 20.0  # pull of the finger joints towards the network's pose
    betas: float = 0.1  # shape prior
    geometric: float = 1.0  # anatomical constraints
    depth: float = 10.0  # pull of the hand's distance towards the network's, on log(z / z0)
    temporal: float = 1.0  # video: weight of the joints' acceleration between consecutive frames
    temporal_scale: float = 0.005  # ... an acceleration of this many metres per frame^2 costs 1
    temporal_robust: float = 0.02  # metres per frame^2: larger accelerations stop pulling
    iterations: int = 150
    lr: float = 0.03  # Adam step for pose and shape (radians, shape units); translation x 0.05
    chunk: int = 256  # video: frames fitted in one batch


def _tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


def _fit_batch(
    hand_model,
    side: str,
    pose0: torch.Tensor,  # (N, 16, 3)
    betas0: torch.Tensor,  # (10,) one shape for every frame
    t0: torch.Tensor,  # (N, 3)
    K: torch.Tensor,  # (3, 3)
    target: torch.Tensor,  # (N, 21, 2), anything where `valid` is False
    valid: torch.Tensor,  # (N,) bool: the frame has landmarks
    box_side: torch.Tensor,  # (N,)
    settings: FitSettings,
    linked: torch.Tensor | None = None,  # (N,) bool: frame f follows frame f-1 (f=0: the anchor)
    anchor: torch.Tensor | None = None,  # (2, 21, 3) camera-frame joints of two linked frames
    fit_shape: bool = True,  # False: betas0 stays as it is
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise E (module doc) over N frames at once -> pose (N, 16, 3), betas (10,),
    transl (N, 3), camera-frame joints (N, 21, 3). With `anchor`, frame 0 follows it."""
    n = pose0.shape[0]
    delta = torch.zeros_like(pose0, requires_grad=True)
    d_betas = torch.zeros_like(betas0, requires_grad=fit_shape)
    t = t0.clone().requires_grad_(True)
    weights = valid.to(pose0.dtype)
    n_valid = weights.sum().clamp(min=1.0)
    temporal = settings.temporal > 0 and linked is not None and n + (0 if anchor is None else 2) > 2
    if temporal:
        # triples (f-1, f, f+1) of consecutive frames, indices into [anchor, frames]
        pre = 0 if anchor is None else 2
        link = torch.cat([torch.ones(pre, dtype=torch.bool, device=valid.device), linked])
        link[0] = False  # the first of the sequence follows nothing
        ok = link[1:-1] & link[2:]  # (pre + n - 2,): the triple centred on index 1..
        triples = torch.nonzero(ok).flatten() + 1
        temporal = triples.numel() > 0

    def joints_of(p, b, tr):
        return hand_model(p, b.expand(p.shape[0], -1), tr).keypoints

    with torch.enable_grad():
        optim = torch.optim.Adam(
            [
                {"params": [delta, d_betas] if fit_shape else [delta], "lr": settings.lr},
                {"params": [t], "lr": settings.lr * 0.05},
            ]
        )
        for i in range(settings.iterations):
            # graduated non-convexity: the robust scale shrinks from sigma_start to sigma, so far
            # landmarks pull (as least squares) at first and outliers are let go at the end
            progress = i / max(1, settings.iterations - 1)
            sigma2 = (settings.sigma_start ** (1 - progress) * settings.sigma**progress) ** 2
            joints = joints_of(pose0 + delta, betas0 + d_betas, torch.zeros_like(t))
            cam = joints + t[:, None]
            r2 = ((project_points(cam, K) - target).norm(dim=-1) / box_side[:, None]).square()
            rho = (sigma2 * r2 / (r2 + sigma2)).mean(-1)  # (N,)
            data = (rho * weights).sum() / n_valid / settings.sigma**2
            loss = (
                settings.data * data
                + settings.pose * delta[:, 1:].square().sum(-1).mean()
                + settings.betas * (betas0 + d_betas).square().mean()
                + settings.geometric * geometric_loss(joints, side)
                + settings.depth * torch.log(t[:, 2].clamp(min=1e-3) / t0[:, 2]).square().mean()
            )
            if temporal:
                seq = cam if anchor is None else torch.cat([anchor, cam])
                accel2 = (seq[triples - 1] - 2 * seq[triples] + seq[triples + 1]).square().sum(-1)
                c2 = settings.temporal_robust**2
                loss = loss + settings.temporal * (
                    (c2 * accel2 / (accel2 + c2)).mean() / settings.temporal_scale**2
                )
            optim.zero_grad()
            loss.backward()
            optim.step()
    with torch.no_grad():
        pose1, betas1, t1 = pose0 + delta.detach(), betas0 + d_betas.detach(), t.detach()
        joints = joints_of(pose1, betas1, t1)
    return pose1, betas1, t1, joints


def _rms(uv: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., 21, 2) -> (...,) RMS landmark error in pixels."""
    return (uv - target).square().sum(-1).mean(-1).sqrt()


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
    """One photo's hand fitted to its landmarks (21, 2) -> {"pose" (16, 3), "betas" (10,),
    "transl" (3,), "joints" (21, 3), "keypoints2d" (21, 2), "rms_px_before", "rms_px_after"}
    (tensors on the model's device; the RMS values are the landmark errors in pixels before and
    after the fit)."""
    if not box_side > 0:
        raise ValueError(f"box_side must be positive, got {box_side}")
    device = next(iter(hand_model.buffers())).device
    pose0, betas0, t0 = _tensor(pose, device), _tensor(betas, device), _tensor(transl, device)
    K, target = _tensor(K, device), _tensor(landmarks, device)
    if target.shape != (21, 2) or not torch.isfinite(target).all():
        raise ValueError(f"landmarks must be 21 finite (x, y) pixels, got {tuple(target.shape)}")
    fitted = fit_track(
        hand_model, side, pose0.reshape(1, 16, 3), betas0, t0[None], K, [target], [box_side], [0],
        settings,
    )  # fmt: skip
    as_t = lambda x: torch.from_numpy(x).to(device)  # noqa: E731
    return {
        "pose": as_t(fitted["pose"][0]),
        "betas": as_t(fitted["betas"]),
        "transl": as_t(fitted["transl"][0]),
        "joints": as_t(fitted["joints"][0]),
        "keypoints2d": as_t(fitted["keypoints2d"][0]),
        "rms_px_before": float(fitted["rms_px_before"][0]),
        "rms_px_after": float(fitted["rms_px_after"][0]),
    }


def fit_track(
    hand_model,
    side: str,
    poses,
    betas,
    transl,
    K,
    landmarks: Sequence[np.ndarray | None],
    box_sides,
    frame_index,
    settings: FitSettings = FitSettings(),
    chunk_cb: Callable[[int], None] | None = None,
) -> dict:
    """The frames of one video track fitted together: poses (N, 16, 3), one shape betas (10,),
    translations (N, 3), K (3, 3), landmarks: per frame (21, 2) pixels or None (no landmarks;
    the frame keeps to its priors and its neighbours), box_sides (N,) pixels, frame_index (N,)
    increasing video frame numbers (frames f and f+1 are linked by the temporal term when their
    numbers are consecutive). Returns {"pose" (N, 16, 3), "betas" (10,), "transl" (N, 3),
    "joints" (N, 21, 3), "keypoints2d" (N, 21, 2), "rms_px_before" (N,), "rms_px_after" (N,)}
    as numpy arrays, RMS NaN where a frame has no landmarks. chunk_cb(frames), when given, is
    called after each fitted chunk with the number of frames fitted so far (an exception it
    raises, a cancellation say, stops the fit there)."""
    device = next(iter(hand_model.buffers())).device
    pose0 = _tensor(poses, device).reshape(-1, 16, 3)
    n = pose0.shape[0]
    betas0, t0, K = _tensor(betas, device), _tensor(transl, device), _tensor(K, device)
    sides = _tensor(box_sides, device)
    index = np.asarray(frame_index, dtype=np.int64)
    if len(landmarks) != n or t0.shape != (n, 3) or sides.shape != (n,) or index.shape != (n,):
        raise ValueError("poses, transl, landmarks, box_sides and frame_index differ in length")
    if n == 0:
        raise ValueError("a track needs at least one frame")
    if not (sides > 0).all():
        raise ValueError("box sides must be positive")
    if np.any(np.diff(index) <= 0):
        raise ValueError("frame_index must increase")
    target = torch.zeros(n, 21, 2, device=device)
    valid = torch.zeros(n, dtype=torch.bool, device=device)
    for f, lm in enumerate(landmarks):
        if lm is None:
            continue
        lm_t = _tensor(lm, device)
        if lm_t.shape != (21, 2) or not torch.isfinite(lm_t).all():
            raise ValueError(f"frame {index[f]}: landmarks must be 21 finite (x, y) pixels")
        target[f], valid[f] = lm_t, True
    linked = torch.zeros(n, dtype=torch.bool, device=device)
    linked[1:] = torch.from_numpy(np.diff(index) == 1).to(device)
    out_pose, out_t, out_joints = [], [], []
    betas1 = betas0
    size = max(1, settings.chunk)
    if n > size:
        # a long track: its one shape first, from `size` frames spread over the whole track
        # (no temporal term: they are not consecutive), then every chunk with that shape
        pick = torch.from_numpy(np.unique(np.linspace(0, n - 1, size).round().astype(np.int64)))
        pick = pick.to(device)
        _, betas1, _, _ = _fit_batch(
            hand_model, side, pose0[pick], betas0, t0[pick], K, target[pick], valid[pick],
            sides[pick], settings,
        )  # fmt: skip
    for start in range(0, n, size):
        sl = slice(start, min(n, start + size))
        # the previous chunk's last two frames, when they and this chunk's first are consecutive
        anchor = None
        if start >= 2 and bool(linked[start]) and bool(linked[start - 1]):
            anchor = out_joints[-1][-2:] if out_joints[-1].shape[0] >= 2 else None
        pose1, betas1, t1, joints = _fit_batch(
            hand_model,
            side,
            pose0[sl],
            betas1,
            t0[sl],
            K,
            target[sl],
            valid[sl],
            sides[sl],
            settings,
            linked[sl],
            anchor,
            fit_shape=n <= size,  # one batch: its shape is free
        )
        out_pose.append(pose1)
        out_t.append(t1)
        out_joints.append(joints)
        if chunk_cb is not None:
            chunk_cb(sl.stop)
    pose1, t1, joints = torch.cat(out_pose), torch.cat(out_t), torch.cat(out_joints)
    with torch.no_grad():
        before = project_points(hand_model(pose0, betas0.expand(n, -1), t0).keypoints, K)
        after = project_points(joints, K)
        nan = torch.full((n,), float("nan"), device=device)
        rms_before = torch.where(valid, _rms(before, target), nan)
        rms_after = torch.where(valid, _rms(after, target), nan)
    as_np = lambda x: x.detach().cpu().numpy()  # noqa: E731
    return {
        "pose": as_np(pose1),
        "betas": as_np(betas1),
        "transl": as_np(t1),
        "joints": as_np(joints),
        "keypoints2d": as_np(after),
        "rms_px_before": as_np(rms_before),
        "rms_px_after": as_np(rms_after),
    }
