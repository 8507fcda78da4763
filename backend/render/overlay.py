"""Overlay pictures for the CLI: shaded hand meshes and 21-keypoint skeletons over the photo.

Imports torch, numpy and PIL only (no bpy). Pixel conventions as in `raster.py`: (u, v) = (0, 0)
is the top-left corner of the image, pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

from ..camera import project_points
from ..hand_model.constants import KEYPOINT_FINGER, KEYPOINT_PARENTS
from .raster import rasterize
from .shading import shade

# Skeleton colour per finger, indexed by KEYPOINT_FINGER: wrist, thumb, index, middle, ring, pinky.
FINGER_COLORS: tuple[tuple[int, int, int], ...] = (
    (235, 235, 235),
    (230, 60, 60),
    (245, 175, 40),
    (70, 195, 90),
    (60, 140, 240),
    (185, 85, 225),
)
DEFAULT_MESH_COLOR = (170, 190, 240)
_DOT_OUTLINE = (30, 30, 30)

MeshInput = ArrayLike | torch.Tensor


def _to_numpy(value: MeshInput) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _as_hands(value: MeshInput | Sequence[MeshInput]) -> list[np.ndarray]:
    """One array per hand: a list/tuple means several hands, an array or tensor means one."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [_to_numpy(item) for item in items]


def render_overlay(
    image: np.ndarray,
    verts_cam: MeshInput | Sequence[MeshInput],
    faces: MeshInput | Sequence[MeshInput],
    K: MeshInput,
    keypoints2d: MeshInput | Sequence[MeshInput] | None = None,
    *,
    alpha: float = 0.6,
    color: tuple[int, int, int] = DEFAULT_MESH_COLOR,
    supersample: int = 2,
) -> np.ndarray:
    """Draw shaded meshes blended over a photo, then keypoint skeletons on top.

    image: (H, W, 3) uint8. verts_cam: (V, 3) camera-frame vertices (metres, OpenCV axes), or a
    list with one array per hand (an empty list draws no mesh). faces: (F, 3) shared by all hands,
    or a list with one per hand. K: (3, 3) pinhole matrix of `image`. keypoints2d: (21, 2) pixel
    coordinates (FreiHAND order), a list of them, or None.

    The meshes are rasterised together (so hands occlude each other correctly) at `supersample`
    times the resolution over their bounding box, shaded with the default lights in `color`
    (RGB 0-255) and box-filtered down; a pixel is blended as image * (1 - alpha * c) +
    shaded * alpha * c with c its coverage, and pixels the meshes do not touch stay unchanged.
    The skeleton (a colour per finger, bones then dots) is drawn with PIL at `supersample` times
    the resolution and box-filtered down, which leaves pixels away from it unchanged.
    Returns a new (H, W, 3) uint8 array.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    out = image.copy()
    hand_verts = _as_hands(verts_cam)
    if hand_verts:
        hand_faces = _as_hands(faces)
        if len(hand_faces) == 1:
            hand_faces = hand_faces * len(hand_verts)
        _blend_meshes(out, hand_verts, hand_faces, _to_numpy(K), alpha, color, supersample)
    if keypoints2d is not None:
        out = _draw_skeletons(out, _as_hands(keypoints2d), supersample)
    return out


def _blend_meshes(
    image: np.ndarray,
    hand_verts: list[np.ndarray],
    hand_faces: list[np.ndarray],
    K: np.ndarray,
    alpha: float,
    color: tuple[int, int, int],
    supersample: int,
) -> None:
    """Alpha-blend the shaded meshes over `image` (H, W, 3) uint8, in place."""
    height, width = image.shape[:2]
    offsets = np.cumsum([0] + [len(v) for v in hand_verts[:-1]])
    verts = torch.as_tensor(np.concatenate(hand_verts), dtype=torch.float32)  # (V, 3)
    faces = torch.as_tensor(
        np.concatenate([f + o for f, o in zip(hand_faces, offsets, strict=True)]), dtype=torch.long
    )  # (F, 3)
    K_img = torch.as_tensor(K, dtype=torch.float32)

    # Only rasterise the pixels around the meshes: crop to the projected bounding box.
    in_front = verts[:, 2] > 0
    if not bool(in_front.any()):
        return
    uv = project_points(verts[None, in_front], K_img[None])[0]  # (V', 2)
    x0, y0 = np.floor(uv.amin(0).numpy()).clip(0, [width, height]).astype(int)
    x1, y1 = np.ceil(uv.amax(0).numpy()).clip(0, [width, height]).astype(int)
    if x1 <= x0 or y1 <= y0:
        return
    # Shift the principal point to the crop, then scale pixels by the supersampling factor.
    K_crop = K_img.clone()
    K_crop[0, 2] -= float(x0)
    K_crop[1, 2] -= float(y0)
    K_crop = torch.diag(torch.tensor([supersample, supersample, 1.0])) @ K_crop
    crop_h, crop_w = int(y1 - y0), int(x1 - x0)
    verts_pix = torch.cat([project_points(verts[None], K_crop[None]), verts[None, :, 2:]], -1)
    fragments = rasterize(verts_pix, faces, crop_h * supersample, crop_w * supersample)
    albedo = torch.tensor([color], dtype=torch.float32) / 255.0  # (1, 3)
    rgb = shade(fragments, verts[None], faces, albedo)[0]  # (sH, sW, 3), zero off the mesh

    # Box filter: premultiplied colour and coverage per image pixel.
    s = supersample
    coverage = fragments.mask[0].float().view(crop_h, s, crop_w, s).mean((1, 3)).numpy()
    premult = rgb.view(crop_h, s, crop_w, s, 3).mean((1, 3)).numpy()
    shaded = 255.0 * premult / np.maximum(coverage, 1e-6)[..., None]
    weight = alpha * coverage[..., None]
    region = image[y0:y1, x0:x1].astype(np.float32)
    blended = np.clip(np.rint(region * (1.0 - weight) + shaded * weight), 0, 255)
    image[y0:y1, x0:x1] = np.where(coverage[..., None] > 0, blended, region).astype(np.uint8)


def _draw_skeletons(image: np.ndarray, keypoints: list[np.ndarray], supersample: int) -> np.ndarray:
    """Draw 21-keypoint skeletons (bones, then dots) on `image` (H, W, 3) uint8; returns a copy."""
    height, width = image.shape[:2]
    s = supersample
    canvas = Image.fromarray(image).resize((width * s, height * s), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    line_width = max(1.0, min(height, width) / 200.0)  # output pixels
    radius = 1.5 * line_width * s
    for hand in keypoints:
        # PIL puts integer coordinates at pixel centres: our u maps to s * u - 0.5.
        points = np.asarray(hand, dtype=np.float64).reshape(-1, 2) * s - 0.5
        finite = np.isfinite(points).all(1)
        for k, parent in enumerate(KEYPOINT_PARENTS):
            if parent >= 0 and finite[k] and finite[parent]:
                draw.line(
                    [tuple(points[parent]), tuple(points[k])],
                    fill=FINGER_COLORS[KEYPOINT_FINGER[k]],
                    width=round(line_width * s),
                )
        for k, (x, y) in enumerate(points):
            if finite[k]:
                draw.ellipse(
                    [x - radius, y - radius, x + radius, y + radius],
                    fill=FINGER_COLORS[KEYPOINT_FINGER[k]],
                    outline=_DOT_OUTLINE,
                    width=max(1, s // 2),
                )
    big = np.asarray(canvas, dtype=np.float32)
    # Box filter down; blocks untouched by the drawing are s x s copies of one pixel, so exact.
    return np.rint(big.reshape(height, s, width, s, 3).mean((1, 3))).astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 image as PNG, making parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="PNG")
    return path
