"""Smooth shading of rasterised meshes and alpha compositing, for synthetic images and overlays.

Phong-interpolated vertex normals with ambient + Lambert diffuse + Blinn-Phong specular under a
few directional lights. Imports torch only (no bpy). Camera frame OpenCV (x right, y down,
z forward), as in `raster.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .raster import Fragments, interpolate_at, vertex_normals


@dataclass(frozen=True)
class Light:
    """A directional light.

    direction: the direction the light travels, camera frame, (3,) or per batch element (B, 3);
        need not be unit length. (0, 0, 1) is a headlight shining from the camera into the scene.
    color: RGB intensity, (3,) or (B, 3); 1 is full strength.
    """

    direction: Sequence[float] | Tensor
    color: Sequence[float] | Tensor = (1.0, 1.0, 1.0)


# A key light from the upper left behind the camera and a dimmer, cooler fill from the lower right.
DEFAULT_LIGHTS: tuple[Light, ...] = (
    Light(direction=(0.4, 0.6, 1.0), color=(0.75, 0.75, 0.75)),
    Light(direction=(-0.6, -0.2, 0.8), color=(0.25, 0.25, 0.3)),
)


def _per_pixel(value: Sequence[float] | Tensor, batch_of: Tensor, like: Tensor) -> Tensor:
    """(3,) or (B, 3) values gathered for pixels of batch elements `batch_of` (n,): (n, 3)."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 3)
    return value if value.shape[0] == 1 else value.index_select(0, batch_of)


def shade(
    fragments: Fragments,
    verts_cam: Tensor,
    faces: Tensor,
    albedo: Tensor,
    lights: Sequence[Light] = DEFAULT_LIGHTS,
    *,
    ambient: float = 0.3,
    specular: float = 0.15,
    shininess: float = 24.0,
) -> Tensor:
    """Shade the visible surface: albedo * (ambient + sum_l c_l max(n.l, 0)) + specular term.

    fragments: from `rasterize` of these vertices; verts_cam: (B, V, 3) camera frame; faces: (F, 3)
    long. albedo: RGB in [0, 1], one per mesh (B or 1, 3), per vertex (B, V, 3, interpolated) or
    per pixel (B, H, W, 3, e.g. a sampled texture). The specular term is
    `specular` * sum_l c_l max(n.h, 0)^shininess with h = normalise(l + view) (Blinn-Phong), only
    where the light reaches the surface (n.l > 0). Lighting is two-sided: a normal facing away from
    the viewer is flipped, so inward-wound meshes (e.g. a mirrored hand) shade the same.
    Returns (B, H, W, 3) in [0, 1], zeros on the background.
    """
    batch, height, width = fragments.face_idx.shape
    # Shade only the covered pixels, as flat (n, 3) lists.
    pixels = fragments.mask.reshape(-1).nonzero().squeeze(1)  # (n,)
    batch_of = pixels // (height * width)
    normals = vertex_normals(verts_cam, faces)  # (B, V, 3)
    normal = F.normalize(interpolate_at(fragments, normals, faces, pixels), dim=-1)  # Phong
    point = interpolate_at(fragments, verts_cam, faces, pixels)  # (n, 3) camera frame
    view = F.normalize(-point, dim=-1)  # towards the camera centre
    normal = torch.where((normal * view).sum(-1, keepdim=True) < 0, -normal, normal)

    if albedo.dim() == 2:
        albedo_px = _per_pixel(albedo, batch_of, point)
    elif albedo.dim() == 3:
        albedo_px = interpolate_at(fragments, albedo, faces, pixels)
    else:
        albedo_px = albedo.reshape(-1, 3).index_select(0, pixels)

    diffuse = torch.zeros_like(normal)
    highlight = torch.zeros_like(normal)
    for light in lights:
        to_light = -F.normalize(_per_pixel(light.direction, batch_of, point), dim=-1)
        color = _per_pixel(light.color, batch_of, point)
        n_dot_l = (normal * to_light).sum(-1, keepdim=True)  # Lambert cosine
        diffuse = diffuse + color * n_dot_l.clamp(min=0)
        half = F.normalize(to_light + view, dim=-1)  # Blinn-Phong half vector
        n_dot_h = (normal * half).sum(-1, keepdim=True).clamp(min=0)
        highlight = highlight + color * n_dot_h.pow(shininess) * (n_dot_l > 0)
    rgb = (albedo_px * (ambient + diffuse) + specular * highlight).clamp(0.0, 1.0)  # (n, 3)
    out = point.new_zeros(batch * height * width, 3).index_copy(0, pixels, rgb)
    return out.view(batch, height, width, 3)


def composite(rgb: Tensor, alpha: Tensor, background: Tensor | Sequence[float]) -> Tensor:
    """Alpha-blend a rendering over a background: rgb * a + background * (1 - a).

    rgb: (B, H, W, 3) straight (not premultiplied) colour; alpha: (B, H, W) bool mask or coverage
    in [0, 1]; background: (3,), (B, 3) or (B, H, W, 3), same value range as rgb.
    Returns (B, H, W, 3).
    """
    a = alpha.to(rgb.dtype)[..., None]
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    if bg.dim() <= 2:
        bg = bg.reshape(-1, 1, 1, 3)
    return rgb * a + bg * (1.0 - a)
