"""Speed of the pure-PyTorch renderer on a hand-sized closed mesh. Prints JSON.

    python -m benchmarks.render [--repeats 15] [--sizes 64,256] [--threads 1]

Mesh: an icosphere subdivided to 5,120 faces / 2,562 vertices (a MANO-like hand has ~1,500 faces,
the brief's reference hand ~4,000), placed so that its silhouette covers ~40% of a square frame.
For each device (CPU with `--threads` threads, and CUDA when present) and image size: median wall
time of hard rasterisation, rasterisation + shading, the soft silhouette (sigma = 1e-4) forward,
and the soft silhouette forward + backward. Target: 256 x 256 rasterisation well under 50 ms on
one CPU core.
"""

from __future__ import annotations

import argparse
import json
import math
import platform

import torch

from backend.camera import project_points
from backend.render import icosphere, rasterize, shade, soft_silhouette
from benchmarks.timing import median_ms

COVERAGE = 0.4  # fraction of the frame covered by the sphere's silhouette
SPHERE_DEPTH = 4.0  # camera-to-centre distance, in sphere radii


def _scene(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """verts_cam (1, V, 3), faces (F, 3), verts_pix (1, V, 3) of the sphere in a size^2 frame."""
    verts, faces = icosphere(4)
    verts_cam = (verts + torch.tensor([0.0, 0.0, SPHERE_DEPTH]))[None]
    # A unit sphere at distance d projects to a disc of radius f / sqrt(d^2 - 1) pixels.
    disc_radius = math.sqrt(COVERAGE / math.pi) * size
    focal = disc_radius * math.sqrt(SPHERE_DEPTH**2 - 1.0)
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    verts_pix = torch.cat([project_points(verts_cam, K[None]), verts_cam[..., 2:]], -1)
    return verts_cam.to(device), faces.to(device), verts_pix.to(device)


def run(repeats: int, sizes: list[int], threads: int) -> dict:
    torch.set_num_threads(threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for size in sizes:
            verts_cam, faces, verts_pix = _scene(size, device)
            albedo = torch.tensor([[0.8, 0.6, 0.5]], device=device)
            verts_grad = verts_pix.clone().requires_grad_(True)

            def raster(vp=verts_pix, f=faces, s=size):
                return rasterize(vp, f, s, s)

            def raster_shade(vp=verts_pix, vc=verts_cam, f=faces, s=size, a=albedo):
                return shade(rasterize(vp, f, s, s), vc, f, a)

            def soft(vp=verts_pix, f=faces, s=size):
                return soft_silhouette(vp, f, s, s)

            def soft_backward(vp=verts_grad, f=faces, s=size):
                soft_silhouette(vp, f, s, s).sum().backward()

            cases = {
                "rasterize": raster,
                "rasterize_shade": raster_shade,
                "soft_silhouette": soft,
                "soft_silhouette_backward": soft_backward,
            }
            timings = {name: round(median_ms(fn, repeats, device), 2) for name, fn in cases.items()}
            coverage = float(raster().mask.float().mean())
            results.append(
                {
                    "device": device.type,
                    "size": size,
                    "coverage": round(coverage, 3),
                    "median_ms": timings,
                }
            )
    return {
        "benchmark": "render",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "mesh": {"vertices": int(verts_cam.shape[1]), "faces": int(faces.shape[0])},
        "repeats": repeats,
        "target": "rasterize at 256 well under 50 ms on one CPU thread",
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(json.dumps(run(args.repeats, sizes, args.threads), indent=1))


if __name__ == "__main__":
    main()
