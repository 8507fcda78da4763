"""The demo job: render the embedded open hand model in several poses, shapes and both sides.

    python -m backend.demo --out docs/images          (what `make demo` runs)

Writes ``open_hand.png`` (a 4 x 4 grid: right and left hands, named poses, shape coefficients) with
the project's own rasteriser. Imports torch, numpy and PIL; never bpy.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from backend.camera import project_points
from backend.hand_model.model import HandModel, load_hand_arrays
from backend.hand_model.poses import named_pose
from backend.render import composite, rasterize, save_png, shade

SKIN = (0.86, 0.64, 0.52)
NAIL = (0.93, 0.78, 0.74)


def _rotation(
    yaw_deg: float, pitch_deg: float, palm_to_camera: bool, side: str = "right"
) -> torch.Tensor:
    """(3, 3) model-to-camera rotation: fingers up in the image, then yaw and pitch. The left
    model points its fingers along -x (it mirrors the right), so it is rolled by 180 degrees."""
    # model axes: x distal, y dorsal, z ulnar. Camera (OpenCV): x right, y down, z forward.
    dorsal = 1.0 if palm_to_camera else -1.0
    base = torch.tensor([[0.0, 0.0, -dorsal], [-1.0, 0.0, 0.0], [0.0, dorsal, 0.0]]).double()
    base[:, 2] = torch.linalg.cross(base[:, 0], base[:, 1])
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    yaw = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    pitch = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    roll = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    return (
        pitch.double() @ yaw.double() @ (roll if side == "left" else torch.eye(3)).double() @ base
    )


def render_tile(
    verts: torch.Tensor,
    faces: torch.Tensor,
    albedo: torch.Tensor,
    rot: torch.Tensor,
    size: int = 256,
    supersample: int = 2,
    extent: float | None = None,
) -> np.ndarray:
    """Render one hand (V, 3 model frame) centred in a size x size tile; returns uint8 (H, W, 3).
    `extent` (m): half the visible width; None fits the hand to the tile."""
    cam = verts @ rot.T
    cam = cam - (cam.amax(0) + cam.amin(0)) / 2
    extent = extent or float(cam[:, :2].abs().amax())
    s = size * supersample
    depth = 0.6
    focal = 0.42 * s * depth / extent
    cam = cam + torch.tensor([0.0, 0.0, depth], dtype=cam.dtype)
    k = torch.tensor([[focal, 0, s / 2], [0, focal, s / 2], [0, 0, 1]], dtype=cam.dtype)
    pix = project_points(cam[None], k[None])
    frags = rasterize(torch.cat([pix, cam[None, :, 2:]], dim=-1), faces, s, s)
    rgb = shade(frags, cam[None], faces, albedo[None])
    yy = torch.linspace(0.0, 1.0, s, dtype=rgb.dtype)[:, None, None]
    background = (0.20 + 0.12 * yy) * torch.tensor([0.85, 0.9, 1.0], dtype=rgb.dtype)
    img = composite(rgb, frags.mask, background.expand(1, s, s, 3))[0]
    img = img.reshape(size, supersample, size, supersample, 3).mean(dim=(1, 3))
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def demo_grid(size: int = 256) -> np.ndarray:
    """4 x 4 grid: rows right poses, right shapes, left poses, left shapes."""
    rows = []
    for side in ("right", "left"):
        model = HandModel(side, dtype=torch.float64)
        arrays = load_hand_arrays("open", side)
        faces = torch.as_tensor(arrays["f"])
        albedo = torch.tensor(SKIN, dtype=torch.float64).repeat(model.num_vertices, 1)
        albedo[torch.as_tensor(arrays["nail_mask"])] = torch.tensor(NAIL, dtype=torch.float64)
        rest = model.rest_joints()[0]
        yaw = 25 if side == "right" else -25
        tiles = []
        for i, name in enumerate(("relaxed", "fist", "point", "spread")):
            pose = named_pose(name, rest, side)[None]
            verts = model(pose).vertices[0]
            tiles.append(
                render_tile(verts, faces, albedo, _rotation(yaw, 15, i % 2 == 0, side), size)
            )
        rows.append(np.concatenate(tiles, axis=1))
        tiles = []
        for k, value in ((0, -2.0), (0, 2.0), (1, 2.5), (2, 2.5)):
            betas = torch.zeros(1, 10, dtype=torch.float64)
            betas[0, k] = value
            pose = named_pose("pinch", rest, side)[None]
            verts = model(pose, betas).vertices[0]
            # one fixed scale for the row, so that the size change shows
            rot = _rotation(-yaw, -10, False, side)
            tiles.append(render_tile(verts, faces, albedo, rot, size, extent=0.125))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--size", type=int, default=256, help="tile size in pixels")
    args = ap.parse_args(argv)
    path = save_png(args.out / "open_hand.png", demo_grid(args.size))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
