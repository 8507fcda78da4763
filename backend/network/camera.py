"""The weak-perspective camera of a crop (HMR convention) and the pieces that invert it.

Definition (DESIGN.md, "cam_weak"): the network predicts cam = (s, tx, ty) for the points X it
outputs (the hand model rotated by the predicted global orientation, no translation, metres, OpenCV
axes: x right, y down, z forward). A point's normalised crop coordinate is

    (u_n, v_n) = s * (x + tx, y + ty),

with (u_n, v_n) = (-1, -1) at the crop's top-left corner and (1, 1) at its bottom-right corner, so
pixel u = (u_n + 1) / 2 * size (pixel centres at j + 0.5, as everywhere in the project). s is in
normalised units per metre (a 0.2 m hand filling 80 % of the crop has s = 1.6 / 0.2 = 8); (tx, ty)
are metres in the model frame.

Pure functions on tensors; imports torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weak_project(points: Tensor, cam: Tensor) -> Tensor:
    """points (B, N, 3), cam (B, 3) = (s, tx, ty) -> (B, N, 2) normalised crop coordinates
    s * (x + tx, y + ty); z is ignored."""
    s, t = cam[:, None, :1], cam[:, None, 1:]  # (B, 1, 1), (B, 1, 2)
    return s * (points[..., :2] + t)


def normalized_to_pixels(uv_n: Tensor, size: float) -> Tensor:
    """(..., 2) normalised crop coordinates in [-1, 1] -> (..., 2) pixels of a square crop of side
    `size`: u = (u_n + 1) / 2 * size (0 at the crop's left edge, `size` at its right edge)."""
    return (uv_n + 1.0) * (0.5 * size)


def pixels_to_normalized(uv_pix: Tensor, size: float) -> Tensor:
    """(..., 2) pixels of a square crop of side `size` -> (..., 2) normalised crop coordinates,
    the inverse of `normalized_to_pixels`: u_n = 2 u / size - 1."""
    return uv_pix * (2.0 / size) - 1.0


def fit_weak_perspective(
    points3d: Tensor, points2d_n: Tensor, weights: Tensor | None = None, eps: float = 1e-9
) -> Tensor:
    """Closed-form least-squares weak camera: the (s, tx, ty) minimising
    sum_i w_i || s (X_i,xy + t) - x_i ||^2.

    points3d: (B, N, 3) model-frame points (only x, y are used); points2d_n: (B, N, 2) their
    normalised crop coordinates; weights: (B, N) non-negative (e.g. keypoint visibility) or None
    for all ones. Returns cam (B, 3).

    With u = s t the objective is linear least squares in (s, u). Writing weighted means
    X_bar = sum w X / sum w and x_bar likewise, the optimum is

        s = sum_i w_i (X_i - X_bar) . (x_i - x_bar) / sum_i w_i |X_i - X_bar|^2,
        u = x_bar - s X_bar,   t = u / s = x_bar / s - X_bar.

    Exact for noise-free weak-perspective data, invariant to a common scale of the weights, and
    differentiable (autograd goes through the sums). Degenerate inputs (fewer than two points with
    weight, all at one place) give s ~ 0 and an unbounded t: mask those samples out (`eps` only
    keeps the arithmetic finite).
    """
    xy = points3d[..., :2]  # (B, N, 2)
    if weights is None:
        weights = xy.new_ones(xy.shape[:2])
    w = weights.to(xy.dtype)[..., None]  # (B, N, 1)
    w_sum = w.sum(1, keepdim=True).clamp(min=eps)  # (B, 1, 1)
    xy_mean = (w * xy).sum(1, keepdim=True) / w_sum  # (B, 1, 2) X_bar
    uv_mean = (w * points2d_n).sum(1, keepdim=True) / w_sum  # (B, 1, 2) x_bar
    xy_c, uv_c = xy - xy_mean, points2d_n - uv_mean  # (B, N, 2) centred
    s = (w * xy_c * uv_c).sum((1, 2)) / (w * xy_c.square()).sum((1, 2)).clamp(min=eps)  # (B,)
    s_safe = torch.where(s.abs() < eps, torch.full_like(s, eps), s)
    t = uv_mean[:, 0] / s_safe[:, None] - xy_mean[:, 0]  # (B, 2)
    return torch.cat([s[:, None], t], dim=1)  # (B, 3)


def weak_to_full_translation(
    cam: Tensor,
    box_center: Tensor,
    box_size: Tensor | float,
    focal: Tensor | float,
    principal: Tensor,
) -> Tensor:
    """Camera-frame translation (B, 3) that makes a full-image pinhole camera see the hand as the
    crop's weak camera does.

    cam: (B, 3) weak camera of the crop; box_center: (B, 2) or (2,) the crop's centre in image
    pixels; box_size: (B,) or a number, the crop's side in image pixels; focal: (B,) or a number,
    focal length in image pixels; principal: (B, 2) or (2,) principal point in image pixels. (For
    a crop rendered on its own, box_center = principal = (size / 2, size / 2).)

    The crop maps to the image by u = c_box + (size / 2) u_n. A pinhole sees a point X + T at
    u = c + f (x + Tx) / (z + Tz); for z << Tz this is affine in x with slope f / Tz, and
    matching it to the weak camera's slope (size / 2) s and offset gives

        Tz = 2 f / (s size),   (Tx, Ty) = (tx, ty) + (c_box - c) Tz / f.
    """
    s = cam[:, 0]
    tz = 2.0 * focal / (s * box_size)  # (B,)
    txy = cam[:, 1:] + (box_center - principal) * (tz / focal)[..., None]  # (B, 2)
    return torch.cat([txy, tz[:, None]], dim=1)  # (B, 3)
