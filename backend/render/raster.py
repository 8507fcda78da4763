"""Hard z-buffer rasterisation of triangle meshes, batched, in pure PyTorch (CPU and CUDA).

The renderer's core: projection with a pinhole `K`, per-pixel visible face and perspective-correct
barycentrics, vertex normals and attribute interpolation. Shading (`shading.py`), the soft
silhouette (`soft.py`) and the overlays (`overlay.py`) build on it. Imports torch only (no bpy,
no compiled extensions), so it runs wherever the backend runs.

Conventions (DESIGN.md): camera frame OpenCV (x right, y down, z forward), metres; pixel (row i,
col j) has its centre at (u, v) = (j + 0.5, i + 0.5), origin at the top-left image corner.

Winding: faces are counter-clockwise seen from outside in a right-handed frame, so the face normal
n = (v1 - v0) x (v2 - v0) points outward. For a camera at the origin, the pixel-space signed area
(u1 - u0)(v2 - v0) - (v1 - v0)(u2 - u0) has the sign of n . v0 (for fx, fy > 0), so a front-facing
triangle has a negative pixel-space signed area: it looks counter-clockwise in the displayed image
(v pointing down), exactly as the camera sees it.

Coverage rule: a pixel is covered iff its centre lies inside the projected triangle. A centre on an
edge belongs to the triangle for which that edge is a top or left edge (the Direct3D top-left rule),
so a centre on an edge shared by two triangles is drawn exactly once. The edge functions are
evaluated in a form that is exactly antisymmetric in floating point for the two triangles sharing an
edge, so shared edges have neither cracks nor double coverage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Candidate (face, pixel) pairs processed at once; bounds the rasteriser's peak memory
# (~100 bytes per candidate).
DEFAULT_MAX_CANDIDATES = 1 << 22


@dataclass(frozen=True)
class Fragments:
    """What each pixel sees after hard rasterisation.

    face_idx: (B, H, W) long, index into `faces` of the visible face, -1 on the background.
    bary: (B, H, W, 3) perspective-correct barycentric weights of that face's vertices (zeros on
        the background).
    depth: (B, H, W) camera depth z of the visible surface (inf on the background).
    mask: (B, H, W) bool, True where a face covers the pixel centre.
    """

    face_idx: Tensor
    bary: Tensor
    depth: Tensor
    mask: Tensor


def bbox_pixel_chunks(
    u_min: Tensor,
    u_max: Tensor,
    v_min: Tensor,
    v_max: Tensor,
    height: int,
    width: int,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Enumerate the pixels whose centres lie in each of N boxes, in chunks of whole boxes.

    u_min, u_max, v_min, v_max: (N,) box bounds in pixel coordinates; non-finite bounds give an
    empty box. Yields (owner (n,), row (n,), col (n,)) long tensors, one entry per (box, pixel)
    pair, with at most `max_candidates` pairs per chunk unless a single box holds more.
    A building block of `rasterize` and `soft_silhouette`, not part of the public API.
    """
    # Pixel j is a candidate iff u_min <= j + 0.5 <= u_max, clipped to the image.
    col0 = torch.ceil(u_min - 0.5).clamp(0, width)
    col1 = torch.floor(u_max - 0.5).clamp(-1, width - 1)
    row0 = torch.ceil(v_min - 0.5).clamp(0, height)
    row1 = torch.floor(v_max - 0.5).clamp(-1, height - 1)
    n_cols = torch.nan_to_num((col1 - col0 + 1).clamp(min=0), nan=0.0).long()
    n_rows = torch.nan_to_num((row1 - row0 + 1).clamp(min=0), nan=0.0).long()
    counts = n_cols * n_rows
    owners = counts.nonzero().squeeze(1)
    if owners.numel() == 0:
        return
    device = owners.device
    col0 = torch.nan_to_num(col0[owners]).long()
    row0 = torch.nan_to_num(row0[owners]).long()
    n_cols, n_rows, counts = n_cols[owners], n_rows[owners], counts[owners]
    ends = counts.cumsum(0).cpu()  # one host sync for the chunk boundaries
    start = 0
    while start < owners.numel():
        base = int(ends[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(ends, base + max_candidates, right=True))
        stop = max(stop, start + 1)
        total = int(ends[stop - 1]) - base
        # Expand boxes to row segments, then segments to pixels (no integer division needed).
        boxes = slice(start, stop)
        seg_box = torch.repeat_interleave(n_rows[boxes])  # (S,) box of each row segment
        seg_first = torch.cumsum(n_rows[boxes], 0) - n_rows[boxes]
        seg_row = row0[boxes] - seg_first
        seg_row = seg_row.index_select(0, seg_box) + torch.arange(seg_box.numel(), device=device)
        seg_cols = n_cols[boxes].index_select(0, seg_box)
        # Column of a pixel = its index in the chunk minus its segment's first index, plus col0.
        seg_shift = col0[boxes].index_select(0, seg_box) - (torch.cumsum(seg_cols, 0) - seg_cols)
        seg = torch.repeat_interleave(
            torch.arange(seg_box.numel(), device=device), seg_cols, output_size=total
        )
        col = seg_shift.index_select(0, seg) + torch.arange(total, device=device)
        row = seg_row.index_select(0, seg)
        yield owners[boxes].index_select(0, seg_box).index_select(0, seg), row, col
        start = stop


def rasterize(
    verts_pix: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    *,
    near: float = 1e-4,
    cull_backfaces: bool = False,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Fragments:
    """Hard-rasterise a batch of meshes with a z-buffer.

    verts_pix: (B, V, 3), [..., :2] pixel coordinates (u, v), [..., 2] camera depth z (> 0).
    faces: (F, 3) long, shared by the batch. Faces with any vertex at z <= near, degenerate faces
    and, with `cull_backfaces`, faces whose pixel-space signed area is >= 0 (back faces, see the
    module docstring) are skipped. The nearest face wins; exact depth ties go to the lower face
    index. The result is not differentiable with respect to the vertices (use `soft_silhouette`);
    `interpolate` is differentiable with respect to the attributes.

    Barycentrics: the pixel-space weights l_i = E_i / sum_j E_j (E_i the edge functions) are
    affine in screen space, but attributes are affine on the 3D triangle; since 1/z is affine in
    screen space, the perspective-correct weights are b_i = (l_i / z_i) / sum_j (l_j / z_j) and the
    depth is z = 1 / sum_j (l_j / z_j).
    """
    verts_pix = verts_pix.detach()
    batch, dtype, device = verts_pix.shape[0], verts_pix.dtype, verts_pix.device
    n_faces = faces.shape[0]
    tri = verts_pix[:, faces].reshape(batch * n_faces, 3, 3)  # (B*F, 3 vertices, uvz)
    u, v, z = tri.unbind(-1)  # each (B*F, 3)

    # Edge function of the edge from vertex i+1 to vertex i+2 (opposite vertex i):
    # E_i(p) = a_i p_u + b_i p_v + c_i = cross(v_{i+2} - v_{i+1}, p - v_{i+1}). The coefficients
    # change sign exactly when the edge is reversed, which makes shared edges watertight.
    u1, v1 = u.roll(-1, 1), v.roll(-1, 1)
    u2, v2 = u.roll(-2, 1), v.roll(-2, 1)
    edge_a, edge_b, edge_c = v1 - v2, u2 - u1, u1 * v2 - u2 * v1  # each (B*F, 3)
    area2 = edge_c.sum(1)  # (B*F,) twice the signed pixel area (the sum of the E_i)
    valid = (z > near).all(1) & (area2 != 0) & torch.isfinite(tri).all(2).all(1)
    if cull_backfaces:
        valid &= area2 < 0
    # Orient every triangle to a positive area, so inside means all E_i >= 0.
    orient = torch.where(area2 < 0, -1.0, 1.0).to(dtype)
    # Rows (a_0..2, b_0..2, c_0..2) by face instance: (9, B*F), rows contiguous for fast gathers.
    edge_coef = torch.cat([edge_a.T, edge_b.T, edge_c.T]) * orient
    # Top-left rule (positive area, v down): edges going up (dv < 0) or right (dv = 0, du > 0).
    top_left = (edge_coef[0:3] > 0) | ((edge_coef[0:3] == 0) & (edge_coef[3:6] > 0))  # (3, B*F)
    inv_z = (1.0 / z).T.contiguous()  # (3, B*F)
    nan = torch.full_like(area2, math.nan)

    n_pix = batch * height * width
    depth = torch.full((n_pix,), math.inf, dtype=dtype, device=device)
    face_idx = torch.full((n_pix,), -1, dtype=torch.long, device=device)
    bary = torch.zeros(n_pix, 3, dtype=dtype, device=device)
    chunks = bbox_pixel_chunks(
        torch.where(valid, u.amin(1), nan),
        torch.where(valid, u.amax(1), nan),
        torch.where(valid, v.amin(1), nan),
        torch.where(valid, v.amax(1), nan),
        height,
        width,
        max_candidates,
    )
    for owner, row, col in chunks:
        # index_select on contiguous rows: much faster than advanced indexing on CPU.
        coef = edge_coef.index_select(1, owner)  # (9, n)
        p_u = col.to(dtype) + 0.5
        p_v = row.to(dtype) + 0.5
        edge = coef[0:3] * p_u + coef[3:6] * p_v + coef[6:9]  # (3, n) E_i at the pixel centres
        keep = (edge >= 0).all(0).nonzero().squeeze(1)
        owner, edge = owner.index_select(0, keep), edge.index_select(1, keep)
        pix = (owner // n_faces) * (height * width) + (row * width + col).index_select(0, keep)
        on_edge = edge == 0
        if bool(on_edge.any()):  # rare: centres exactly on an edge keep only top-left edges
            keep = (~on_edge | top_left.index_select(1, owner)).all(0).nonzero().squeeze(1)
            owner, edge, pix = owner[keep], edge.index_select(1, keep), pix[keep]
        weight = edge * inv_z.index_select(1, owner)  # (3, n) l_i / z_i up to 1 / sum_j E_j
        weight_sum = weight.sum(0)
        cand_depth = edge.sum(0) / weight_sum  # z = 1 / sum_j (l_j / z_j)

        # Z-buffer inside the chunk: minimum depth per pixel, then the lowest face at that depth.
        chunk_depth = torch.full_like(depth, math.inf)
        chunk_depth.scatter_reduce_(0, pix, cand_depth, "amin")
        at_min = (cand_depth == chunk_depth.index_select(0, pix)).nonzero().squeeze(1)
        chunk_face = torch.full_like(face_idx, batch * n_faces)
        chunk_face.scatter_reduce_(0, pix[at_min], owner[at_min], "amin")
        win = (owner == chunk_face.index_select(0, pix)).nonzero().squeeze(1)
        # Merge with earlier chunks (lower face indices, so they keep exact ties).
        win_pix, win_depth = pix.index_select(0, win), cand_depth.index_select(0, win)
        closer = (win_depth < depth.index_select(0, win_pix)).nonzero().squeeze(1)
        win, win_pix, win_depth = win[closer], win_pix[closer], win_depth[closer]
        depth.index_copy_(0, win_pix, win_depth)
        face_idx.index_copy_(0, win_pix, owner.index_select(0, win) % n_faces)
        bary.index_copy_(0, win_pix, (weight.index_select(1, win) / weight_sum[win]).T)

    return Fragments(
        face_idx=face_idx.view(batch, height, width),
        bary=bary.view(batch, height, width, 3),
        depth=depth.view(batch, height, width),
        mask=(face_idx >= 0).view(batch, height, width),
    )


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals, outward for counter-clockwise-outside faces.

    verts: (B, V, 3); faces: (F, 3) long. Returns (B, V, 3); vertices in no face get zeros.
    """
    tri = verts[:, faces]  # (B, F, 3, 3)
    # |(v1 - v0) x (v2 - v0)| is twice the face area, so the sum weights each face by its area.
    face_normals = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    summed = torch.zeros_like(verts).index_add(
        1, faces.reshape(-1), face_normals.repeat_interleave(3, dim=1)
    )  # (B, V, 3)
    return torch.nn.functional.normalize(summed, dim=-1)


def interpolate_at(fragments: Fragments, attr: Tensor, faces: Tensor, pixels: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at a list of covered pixels.

    attr: (B, V, C); faces: (F, 3) long; pixels: (n,) long flat indices into (B, H, W) of covered
    pixels (e.g. `fragments.mask.reshape(-1).nonzero().squeeze(1)`). Returns (n, C):
    sum_k bary_k * attr[vertex k of the pixel's face]. Differentiable with respect to `attr`.
    """
    batch, height, width = fragments.face_idx.shape
    n_verts, channels = attr.shape[1], attr.shape[2]
    face = fragments.face_idx.reshape(-1).index_select(0, pixels)  # (n,)
    # Flat vertex ids into (B * V) of the face's three corners.
    corner = faces.index_select(0, face) + (pixels // (height * width) * n_verts)[:, None]
    flat_attr = attr.reshape(batch * n_verts, channels)
    bary = fragments.bary.reshape(-1, 3).index_select(0, pixels).to(attr.dtype)  # (n, 3)
    return (
        bary[:, 0:1] * flat_attr.index_select(0, corner[:, 0])
        + bary[:, 1:2] * flat_attr.index_select(0, corner[:, 1])
        + bary[:, 2:3] * flat_attr.index_select(0, corner[:, 2])
    )


def interpolate(fragments: Fragments, attr: Tensor, faces: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at every pixel with the fragments' barycentrics.

    attr: (B, V, C); faces: (F, 3) long. Returns (B, H, W, C), zeros on the background.
    Differentiable with respect to `attr`.
    """
    batch, height, width = fragments.face_idx.shape
    pixels = fragments.mask.reshape(-1).nonzero().squeeze(1)
    values = interpolate_at(fragments, attr, faces, pixels)  # (n, C)
    out = attr.new_zeros(batch * height * width, attr.shape[-1]).index_copy(0, pixels, values)
    return out.view(batch, height, width, -1)
