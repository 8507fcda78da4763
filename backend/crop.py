"""Crop geometry shared by inference and the synthetic data engine, so both crop hands alike.

A hand box (x0, y0, x1, y1) in image pixels becomes a square crop centred on the box, with side
`CROP_SCALE` times the box's longer side, resampled to `CROP_SIZE` pixels. The crop is an affine
map of pixel coordinates, so a pinhole K of the image becomes the crop's K by the same map.
Pixel convention (DESIGN.md): pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
Training may also turn the crop in-plane by `angle` radians about its centre (`rotate_in_crop`:
u' = c + R(angle) (u - c) in crop pixels, R = [[cos, -sin], [sin, cos]], which with y down turns
the content clockwise on screen for a positive angle); angle 0 is the plain crop, bit for bit.
Imports torch and numpy only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

CROP_SIZE = 256  # network input, pixels
CROP_SCALE = 1.3  # crop side / longer side of the tight hand box


def square_crop(box_xyxy: Tensor, scale: float | Tensor = CROP_SCALE) -> Tensor:
    """(..., 4) hand boxes -> (..., 3) square crops (centre x, centre y, side), image pixels."""
    centre = (box_xyxy[..., :2] + box_xyxy[..., 2:]) / 2
    side = (box_xyxy[..., 2:] - box_xyxy[..., :2]).amax(dim=-1) * scale
    return torch.cat([centre, side[..., None]], dim=-1)


def box_side(box_xyxy) -> float:
    """The longer side of one (x0, y0, x1, y1) box, pixels."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    return max(x1 - x0, y1 - y0)


def crop_to_box(crop: Tensor) -> Tensor:
    """(..., 3) square crops (cx, cy, side) -> (..., 4) boxes (x0, y0, x1, y1)."""
    half = crop[..., 2:] / 2
    return torch.cat([crop[..., :2] - half, crop[..., :2] + half], dim=-1)


def image_to_crop_matrix(crop: Tensor, size: int = CROP_SIZE) -> Tensor:
    """(..., 3) crops -> (..., 3, 3) affine map from image pixels to crop pixels.

    u_crop = (u - (cx - side / 2)) * size / side, likewise v: pixel centres map to pixel centres
    because both frames put the origin at the top-left corner of the top-left pixel."""
    scale = size / crop[..., 2]
    m = torch.zeros(*crop.shape[:-1], 3, 3, dtype=crop.dtype, device=crop.device)
    m[..., 0, 0] = scale
    m[..., 1, 1] = scale
    m[..., 0, 2] = -(crop[..., 0] - crop[..., 2] / 2) * scale
    m[..., 1, 2] = -(crop[..., 1] - crop[..., 2] / 2) * scale
    m[..., 2, 2] = 1.0
    return m


def rotation_z(angle: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """(3, 3) rotation by `angle` radians about the camera's z axis: [[c, -s, 0], [s, c, 0], [0,
    0, 1]]; it turns camera-frame points (OpenCV axes) the way `rotate_in_crop` turns pixels."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def rotate_in_crop(uv: Tensor, angle: float, size: int = CROP_SIZE) -> Tensor:
    """Crop pixels (..., N, 2) -> the same pixels turned by `angle` about the crop centre."""
    r = rotation_z(angle, uv.dtype)[:2, :2].to(uv.device)
    centre = size / 2
    return (uv - centre) @ r.T + centre


def crop_intrinsics(K: Tensor, crop: Tensor, size: int = CROP_SIZE, angle: float = 0.0) -> Tensor:
    """Pinhole matrix (..., 3, 3) of the crop, from the image's K (..., 3, 3) and the crop.

    With `angle`, the matrix projects camera points turned by `rotation_z(angle)` to the turned
    crop's pixels (the crop's affine map turned about its centre, times K, times Rz^T); for
    fx = fy it is again a pinhole matrix, its principal point turned about the crop centre."""
    m = image_to_crop_matrix(crop, size) @ K
    if not angle:
        return m
    rz = rotation_z(angle, m.dtype).to(m.device)
    turn = rz.clone()
    turn[:2, 2] = size / 2 - rz[:2, :2] @ torch.full((2,), size / 2, dtype=m.dtype)
    return turn @ m @ rz.T


def points_to_crop(uv: Tensor, crop: Tensor, size: int = CROP_SIZE, angle: float = 0.0) -> Tensor:
    """Image pixel coordinates (..., N, 2) -> crop pixel coordinates (..., N, 2) (turned by
    `angle` about the crop centre, see `rotate_in_crop`)."""
    c = crop[..., None, :]
    uv = (uv - (c[..., :2] - c[..., 2:] / 2)) * (size / c[..., 2:])
    return rotate_in_crop(uv, angle, size) if angle else uv


def points_from_crop(uv: Tensor, crop: Tensor, size: int = CROP_SIZE) -> Tensor:
    """Crop pixel coordinates (..., N, 2) -> image pixel coordinates (..., N, 2)."""
    c = crop[..., None, :]
    return uv * (c[..., 2:] / size) + (c[..., :2] - c[..., 2:] / 2)


def crop_image(
    image: np.ndarray,
    crop: tuple[float, float, float],
    size: int = CROP_SIZE,
    flip: bool = False,
    angle: float = 0.0,
) -> np.ndarray:
    """Resample a square crop (cx, cy, side) of an (H, W, 3) uint8 image to (size, size, 3).

    Bilinear sampling at the crop's pixel centres (area-averaged first when shrinking by more
    than 2x, to avoid aliasing); outside the image is black. `flip` mirrors the crop left-right
    (left hands go in as right hands). `angle` turns the crop's content about its centre as
    `rotate_in_crop` turns crop pixels (then `flip`, if both)."""
    cx, cy, side = (float(x) for x in crop)
    h, w = image.shape[:2]
    shrink = int(side / size)
    # half the extent of the sampled area: a turned square reaches further
    half = side / 2 * (abs(math.cos(angle)) + abs(math.sin(angle))) if angle else side / 2
    # work on the part of the image the crop touches (plus a margin for the filters), its origin
    # on the box filter's grid, so a crop costs its own area, not the whole photo's
    cell = max(shrink, 1)
    x0 = max(0, math.floor(cx - half) - 2 * cell)
    y0 = max(0, math.floor(cy - half) - 2 * cell)
    x0, y0 = x0 - x0 % cell, y0 - y0 % cell
    x1 = min(w, math.ceil(cx + half) + 2 * cell)
    y1 = min(h, math.ceil(cy + half) + 2 * cell)
    if x1 <= x0 or y1 <= y0:  # entirely outside the image
        return np.zeros((size, size, 3), dtype=np.uint8)
    region = np.array(image[y0:y1, x0:x1], dtype=np.float32)
    img = torch.from_numpy(region).permute(2, 0, 1)[None]
    cx, cy, h, w = cx - x0, cy - y0, y1 - y0, x1 - x0
    if shrink >= 2:  # box-filter first so that bilinear sampling does not alias
        img = torch.nn.functional.avg_pool2d(img, shrink, ceil_mode=True)
        cx, cy, side, h, w = cx / shrink, cy / shrink, side / shrink, img.shape[2], img.shape[3]
    t = (torch.arange(size, dtype=torch.float64) + 0.5) * (side / size)
    if angle:  # crop pixel p shows image point centre + R(-angle) (p - crop centre) * scale
        d = t - side / 2
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        c, s = math.cos(angle), math.sin(angle)
        us, vs = cx + c * dx + s * dy, cy - s * dx + c * dy
        grid = torch.stack([us / w * 2 - 1, vs / h * 2 - 1], dim=-1).float()[None]
        if flip:
            grid = grid.flip(2)
    else:
        us = cx - side / 2 + t  # image x of each crop column centre
        vs = cy - side / 2 + t
        if flip:
            us = us.flip(0)
        # grid_sample's normalised coords with align_corners=False: -1/+1 are the outer edges
        gx = (us / w * 2 - 1).float()
        gy = (vs / h * 2 - 1).float()
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = torch.nn.functional.grid_sample(
        img, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
