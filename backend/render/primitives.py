"""Simple closed meshes for tests, benchmarks and synthetic scenes (torch only, no bpy).

Faces follow the project's winding: counter-clockwise seen from outside (outward normals).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0
_ICOSAHEDRON_VERTS = (
    (-1, _GOLDEN, 0), (1, _GOLDEN, 0), (-1, -_GOLDEN, 0), (1, -_GOLDEN, 0),
    (0, -1, _GOLDEN), (0, 1, _GOLDEN), (0, -1, -_GOLDEN), (0, 1, -_GOLDEN),
    (_GOLDEN, 0, -1), (_GOLDEN, 0, 1), (-_GOLDEN, 0, -1), (-_GOLDEN, 0, 1),
)  # fmt: skip
_ICOSAHEDRON_FACES = (
    (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
    (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
    (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
    (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
)  # fmt: skip


def icosphere(
    subdivisions: int = 3, radius: float = 1.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Unit icosahedron subdivided `subdivisions` times, projected to a sphere of `radius`.

    Returns verts (V, 3) with V = 10 * 4**s + 2 and faces (F, 3) long with F = 20 * 4**s,
    centred on the origin, outward winding.
    """
    verts = torch.tensor(_ICOSAHEDRON_VERTS, dtype=torch.float64)
    verts = verts / verts.norm(dim=1, keepdim=True)
    faces = torch.tensor(_ICOSAHEDRON_FACES, dtype=torch.long)
    for _ in range(subdivisions):
        n_faces = faces.shape[0]
        # One new vertex per undirected edge, at the normalised midpoint.
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # (3F, 2)
        unique_edges, edge_id = torch.unique(edges.sort(1).values, dim=0, return_inverse=True)
        midpoints = torch.nn.functional.normalize(
            verts[unique_edges[:, 0]] + verts[unique_edges[:, 1]], dim=1
        )
        mid01, mid12, mid20 = (edge_id.view(3, n_faces) + verts.shape[0]).unbind(0)
        v0, v1, v2 = faces.unbind(1)
        # Four children per face, each keeping the parent's cyclic order (winding).
        faces = torch.cat(
            [
                torch.stack([v0, mid01, mid20], 1),
                torch.stack([v1, mid12, mid01], 1),
                torch.stack([v2, mid20, mid12], 1),
                torch.stack([mid01, mid12, mid20], 1),
            ]
        )
        verts = torch.cat([verts, midpoints])
    return (verts * radius).to(dtype), faces
