"""The full-image pinhole camera: focal defaults, intrinsics, the translation solve, projection.

Pure functions, the one place each is written (DESIGN.md conventions: OpenCV axes, metres;
pixel (row i, col j) has its centre at (j + 0.5, i + 0.5); K is the 3x3 pinhole matrix in those
pixels). The network's own weak-perspective crop camera lives in `backend.network.camera`.
Imports numpy and torch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_HFOV_DEG = 60.0  # horizontal field of view assumed for the longer side without --focal


def default_focal(width: int, height: int, exif_f35_mm: float | None = None) -> float:
    """Focal length in pixels: from the EXIF 35 mm equivalent (36 mm spans the longer side), else
    a DEFAULT_HFOV_DEG field of view across the longer side."""
    longer = max(width, height)
    if exif_f35_mm and exif_f35_mm > 0:
        return exif_f35_mm / 36.0 * longer
    return longer / (2 * math.tan(math.radians(DEFAULT_HFOV_DEG) / 2))


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    """(3, 3) K with the principal point at the image centre (pixel-centre convention)."""
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)


def project_points(points_cam, K):
    """Pinhole projection of camera-frame points to pixel coordinates, for torch tensors and
    numpy arrays alike.

    points_cam: (..., N, 3) camera frame (OpenCV axes); K: (..., 3, 3), broadcast against it.
    Returns (..., N, 2) pixels (u, v) = (K p)[:2] / (K p)[2]. Points with z <= 0 give
    meaningless values; the rasteriser skips faces with z <= near."""
    homogeneous = points_cam @ K.swapaxes(-1, -2)  # (..., N, 3)
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def translation_from_points(points, uv, K) -> np.ndarray | None:
    """Camera translation T (3,) minimising the perspective reprojection error of points (N, 3)
    (model frame, rotated) to pixels uv (N, 2) under K (3, 3), in the linearised (DLT) sense:
    f (x + Tx) - (u - c)(z + Tz) = 0 per point and axis; None when the system is ill-posed or
    puts the hand behind the camera. Arrays in (any float dtype), float64 out.

    The least-squares solution in closed form: for a given Tz, each axis' rows give
    T_axis = mean(b_axis + d_axis Tz) / f_axis, and substituting that leaves
    Tz = -sum(d' * b') / sum(d'^2) over both axes, with d = u - c, b = d z - f x, and ' the
    deviation from the mean over the points. Computed in float64 from sums of products alone,
    so the result is bitwise the same every call: a LAPACK least-squares solve (MKL's) can
    differ in the last bits between calls on identical inputs, depending on where the arrays
    sit in memory, and the landmark fit started from the result magnifies that: the same clip
    gave hands 1e-4 m apart from one job to the next."""
    p = np.asarray(points, dtype=np.float64)
    q = np.asarray(uv, dtype=np.float64)
    k = np.asarray(K, dtype=np.float64)
    f = np.array([k[0, 0], k[1, 1]])
    d = q - k[:2, 2]  # (N, 2)
    b = d * p[:, 2:3] - f * p[:, :2]  # (N, 2)
    d_mean, b_mean = d.mean(0), b.mean(0)
    dc, bc = d - d_mean, b - b_mean
    spread = (dc * dc).sum()  # pixels^2: zero when every point projects to one pixel
    if not np.isfinite(spread) or spread <= 1e-9 * max(1, len(p)):
        return None
    tz = -(dc * bc).sum() / spread
    t = np.append((b_mean + d_mean * tz) / f, tz)
    if not np.isfinite(t).all() or t[2] + p[:, 2].min() <= 1e-3:
        return None
    return t


def solve_translation(
    points: torch.Tensor, uv: torch.Tensor, K: torch.Tensor, init: torch.Tensor
) -> torch.Tensor:
    """`translation_from_points` for tensors: T (3,) in the points' dtype and device, or `init`
    where that has no solution."""
    t = translation_from_points(
        *(v.detach().cpu().to(torch.float64).numpy() for v in (points, uv, K))
    )
    if t is None:
        return init
    return torch.from_numpy(t).to(dtype=points.dtype, device=points.device)
