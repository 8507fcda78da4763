"""Differentiable soft silhouette (SoftRas, Liu et al., ICCV 2019) for the segmentation loss.

Pure PyTorch on top of `raster.bbox_pixel_chunks`; imports torch only (no bpy, no compiled
extensions). Pixel conventions as in `raster.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .raster import bbox_pixel_chunks

# Soft rasterisation keeps autograd buffers per candidate, so chunks are smaller than the hard
# rasteriser's.
DEFAULT_MAX_CANDIDATES = 1 << 20


def soft_silhouette(
    verts_pix: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    sigma: float = 1e-4,
    *,
    near: float = 1e-4,
    cutoff: float = 1e-5,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Tensor:
    """Soft silhouette of a batch of meshes, differentiable with respect to `verts_pix`.

    verts_pix: (B, V, 2) pixel coordinates (u, v), or (B, V, 3) with the camera depth z last (then
    faces with a vertex at z <= near are skipped). faces: (F, 3) long, shared by the batch.
    Returns (B, H, W) in [0, 1].

    Per face j and pixel centre p, D_j(p) = sigmoid(delta * d^2 / sigma) (SoftRas Eq. 1), where d
    is the distance from p to the triangle's boundary and delta = +1 inside, -1 outside. The
    silhouette is 1 - prod_j (1 - D_j) (SoftRas Eq. 4), accumulated as sum_j log(1 - D_j) with
    log(1 - D) = logsigmoid(-delta d^2 / sigma), which is finite and smooth for any d.

    Units: d is measured in normalised image units, pixels divided by max(H, W) / 2 (the image
    spans [-1, 1] along its longer side, as in SoftRas), so `sigma` = 1e-4 means a transition of
    about 0.01 * max(H, W) / 2 pixels whatever the resolution. As sigma -> 0 the result tends to the
    hard mask of `rasterize` (pixel centres inside the projection).

    Face/pixel pairs with D_j < `cutoff` (outside, d^2 > sigma * log(1 / cutoff - 1)) are never
    formed: each face only visits the pixels of its bounding box grown by that distance.
    """
    batch = verts_pix.shape[0]
    n_faces = faces.shape[0]
    half_size = max(height, width) / 2.0  # pixels per normalised unit
    inv_sigma_px = 1.0 / (sigma * half_size**2)  # 1 / sigma in pixels^2
    margin = math.sqrt(sigma * math.log(1.0 / cutoff - 1.0)) * half_size  # pixels

    tri = verts_pix[:, faces, :2].reshape(batch * n_faces, 3, 2)  # (B*F, 3, 2), differentiable
    corners = tri.detach()
    edge = tri.roll(-1, 1) - tri  # (B*F, 3, 2) edge i runs from vertex i to vertex i+1
    fixed_edge = edge.detach()
    area2 = (
        fixed_edge[:, 0, 0] * fixed_edge[:, 1, 1] - fixed_edge[:, 0, 1] * fixed_edge[:, 1, 0]
    )  # (B*F,) twice the signed area, cross(e0, e1)
    valid = (area2 != 0) & torch.isfinite(corners).all(2).all(1)
    if verts_pix.shape[-1] == 3:
        depth = verts_pix[:, faces, 2].detach().reshape(batch * n_faces, 3)
        valid &= (depth > near).all(1)
    # Per-face rows for fast per-candidate gathers, (15, B*F): start x, y, edge x, y, 1/|edge|^2.
    inv_len2 = 1.0 / edge.square().sum(-1).clamp(min=1e-12)  # (B*F, 3)
    face_rows = torch.cat(
        [tri[..., 0].T, tri[..., 1].T, edge[..., 0].T, edge[..., 1].T, inv_len2.T]
    )
    nan = torch.full_like(area2, math.nan)
    lo = corners.amin(1) - margin  # (B*F, 2)
    hi = corners.amax(1) + margin

    log_empty = verts_pix.new_zeros(batch * height * width)  # sum_j log(1 - D_j) per pixel
    chunks = bbox_pixel_chunks(
        torch.where(valid, lo[:, 0], nan),
        torch.where(valid, hi[:, 0], nan),
        torch.where(valid, lo[:, 1], nan),
        torch.where(valid, hi[:, 1], nan),
        height,
        width,
        max_candidates,
    )
    for owner, row, col in chunks:
        rows = face_rows.index_select(1, owner)  # (15, n)
        start_u, start_v, edge_u, edge_v, inv_len2 = rows.split(3)  # each (3, n)
        rel_u = (col.to(tri.dtype) + 0.5) - start_u  # pixel centre minus edge start
        rel_v = (row.to(tri.dtype) + 0.5) - start_v
        # Squared distance to each edge segment: clamp the projection onto the segment to [0, 1].
        t = ((rel_u * edge_u + rel_v * edge_v) * inv_len2).clamp(0.0, 1.0)
        dist2 = ((rel_u - t * edge_u).square() + (rel_v - t * edge_v).square()).amin(0)  # (n,)
        # Inside iff the centre is on the same side of all three edges.
        side = edge_u * rel_v - edge_v * rel_u  # (3, n)
        inside = (side > 0).all(0) | (side < 0).all(0)
        signed = torch.where(inside, dist2, -dist2) * inv_sigma_px  # delta * d^2 / sigma
        pix = (owner // n_faces) * (height * width) + row * width + col
        log_empty = log_empty.index_add(0, pix, F.logsigmoid(-signed))
    return 1.0 - torch.exp(log_empty).view(batch, height, width)
