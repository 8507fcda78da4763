"""The project's small pure-PyTorch renderer (CPU and CUDA).

One rasteriser serves three jobs: the soft silhouette for the segmentation loss (`soft`), shaded
synthetic training images (`raster` + `shading`) and the CLI's overlay pictures (`overlay`).
Imports torch, numpy and PIL only; never bpy or compiled rendering extensions.
"""

from .overlay import FINGER_COLORS, render_overlay, save_png
from .primitives import icosphere
from .raster import (
    Fragments,
    interpolate,
    interpolate_at,
    rasterize,
    vertex_normals,
)
from .shading import DEFAULT_LIGHTS, Light, composite, shade
from .soft import soft_silhouette

__all__ = [
    "DEFAULT_LIGHTS",
    "FINGER_COLORS",
    "Fragments",
    "Light",
    "composite",
    "icosphere",
    "interpolate",
    "interpolate_at",
    "rasterize",
    "render_overlay",
    "save_png",
    "shade",
    "soft_silhouette",
    "vertex_normals",
]
