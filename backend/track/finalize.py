"""The end of a clip's work, per track (`finalize_tracks`, steps 4-6 of the video pipeline's
docstring): one shape per track and each frame's translation refitted to it, every frame with
landmarks fused with them (`fuse.fusion.fuse_hands`, batched, the track's shape fixed), temporal
smoothing
(`smoothing.smooth_track`), and the camera identity (keypoints2d = joints3d_cam projected with K)
restored. Imports numpy, torch and the backend's camera, crop geometry, fusion, network runner
and schema; never a pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from backend.camera import project_points, solve_translation
from backend.crop import box_side
from backend.fuse.fusion import fuse_hands, shape_from_world
from backend.network.runner import HandNetwork
from backend.schema import Hand

from .smoothing import smooth_track

ProgressCallback = Callable[[int, int], None]  # (done, total): frames read, or frames fitted
CHUNK = 64  # frames fused in one batch (memory stays bounded on long clips)


@torch.no_grad()
def finalize_tracks(
    network: HandNetwork,
    frames: list[tuple[int, list[Hand]]],
    fps: float,
    smoothing: float,
    refine: bool = False,
    fit_progress_cb: ProgressCallback | None = None,
    lock: contextlib.AbstractContextManager | None = None,
) -> None:
    """Steps 4-6 of the module doc, in place on the hands of `frames` ((index, hands) pairs,
    each hand with its track); with `refine`, step 4b fits each track to the MediaPipe
    landmarks its hands carry (`Hand.landmarks`, dropped once used), reporting
    fit_progress_cb(frames fitted, frames to fit) as `backend.pipeline.video.process_video`
    documents. lock: held around each track's work (default: none)."""
    lock = lock or contextlib.nullcontext()
    by_track: dict[int, list[tuple[int, Hand]]] = {}
    for index, hands in frames:
        for hand in hands:
            by_track.setdefault(hand.track, []).append((index, hand))
    fits = {
        track: refine and any(h.landmarks is not None for _, h in items)
        for track, items in by_track.items()
    }
    to_fit = sum(len(items) for track, items in by_track.items() if fits[track])
    done = 0
    if to_fit and fit_progress_cb is not None:
        fit_progress_cb(0, to_fit)
    for track, items in by_track.items():
        chunk_cb = None
        if fits[track] and fit_progress_cb is not None:

            def chunk_cb(fitted: int, before: int = done) -> None:
                fit_progress_cb(before + fitted, to_fit)

        with lock:
            _finalize_track(network, items, fps, smoothing, refine, chunk_cb)
        done += len(items) if fits[track] else 0


@torch.no_grad()
def _finalize_track(
    network: HandNetwork,
    items: list[tuple[int, Hand]],
    fps: float,
    smoothing: float,
    refine: bool,
    chunk_cb: Callable[[int], None] | None,
) -> None:
    """`finalize_tracks` for one track's (frame index, hand) items; chunk_cb(frames fused) after
    each batch of `_fuse_track`."""
    hands = [h for _, h in items]
    times = np.array([i / fps for i, _ in items])
    model = network.hands[hands[0].side]
    device = network.device
    K = torch.tensor(hands[0].camera["K"], dtype=torch.float64)
    weights = np.array([max(h.score, 1e-3) for h in hands])
    betas = np.average([h.betas for h in hands], axis=0, weights=weights)  # (10,)
    betas_t = torch.tensor(betas, dtype=torch.float32, device=device)
    poses = np.array([h.pose_axis_angle for h in hands])  # (N, 16, 3)
    # step 4: the track's β, each frame's translation refitted to its 2D keypoints
    kp3d = _keypoints(model, poses, betas_t)  # (N, 21, 3) float64, model frame rotated
    transl = np.stack(
        [
            solve_translation(
                torch.from_numpy(kp3d[i]),
                torch.tensor(h.keypoints2d, dtype=torch.float64),
                K,
                torch.tensor(h.transl, dtype=torch.float64),
            ).numpy()
            for i, h in enumerate(hands)
        ]
    )
    # step 4b: every frame with landmarks fused with them, the track's one shape kept fixed
    landmarks = [h.landmarks for h in hands]
    if refine and any(lm is not None for lm in landmarks):
        poses, betas, transl = _fuse_track(model, hands, poses, betas, transl, K, chunk_cb)
        betas_t = torch.tensor(betas, dtype=torch.float32, device=device)
    for hand in hands:
        hand.landmarks = hand.world = None  # used: the fusion above was their last reader
    # step 5: smoothing in rotation and translation space
    poses, transl = smooth_track(times, poses, transl, smoothing)
    # step 6: the camera identity, recomputed
    joints = _keypoints(model, poses, betas_t) + transl[:, None]  # (N, 21, 3)
    uv = project_points(joints, K.numpy())
    for i, hand in enumerate(hands):
        hand.pose_axis_angle = poses[i].tolist()
        hand.betas = betas.tolist()
        hand.transl = transl[i].tolist()
        hand.joints3d_cam = joints[i].tolist()
        hand.keypoints2d = uv[i].tolist()


def _fuse_track(
    model: torch.nn.Module,
    hands: list[Hand],
    poses: np.ndarray,
    betas: np.ndarray,
    transl: np.ndarray,
    K: torch.Tensor,
    chunk_cb: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4b: (poses (N, 16, 3), the track's shape (10,), translations (N, 3)) with every frame
    that has landmarks fused with them (`fusion.fuse_hands`, CHUNK frames a batch), its "fit"
    set; the shape is the closed form's from the world landmarks (`shape_from_world`), else the
    network's (`betas`). Frames without landmarks keep the network's pose and translation."""
    side = hands[0].side
    missing = np.full((21, 3), np.nan)
    world = np.stack([missing if h.world is None else h.world for h in hands])
    with_lm = [i for i, h in enumerate(hands) if h.landmarks is not None]
    shape = shape_from_world(model, world[with_lm], side)
    betas = betas if shape is None else shape.astype(np.float64)
    poses, transl = poses.copy(), transl.copy()
    for start in range(0, len(with_lm), CHUNK):
        idx = with_lm[start : start + CHUNK]
        group = [hands[i] for i in idx]
        fused = fuse_hands(
            model,
            side,
            K.numpy(),
            np.stack([h.landmarks for h in group]),
            world[idx],
            poses[idx],
            np.array([h.betas for h in group]),
            transl[idx],
            np.array([h.keypoints2d for h in group]),
            np.array([h.score for h in group]),
            np.array([box_side(h.box_xyxy) for h in group]),
            betas=betas,
        )
        poses[idx], transl[idx] = fused.pose, fused.transl
        for j, hand in enumerate(group):
            hand.fit = fused.fit_record(j)
        if chunk_cb is not None:
            chunk_cb(start + len(idx))
    return poses, betas, transl


def _keypoints(model: torch.nn.Module, poses: np.ndarray, betas: torch.Tensor) -> np.ndarray:
    """(N, 16, 3) axis-angle poses with one β (10,) -> (N, 21, 3) float64 keypoints, no transl."""
    pose_t = torch.tensor(poses, dtype=torch.float32, device=betas.device)
    out = model(pose_t, betas.expand(len(poses), -1))
    return out.keypoints.double().cpu().numpy()
