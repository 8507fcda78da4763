"""Forward time of HandModel against raw smplx.MANO on the same arrays, same run. Prints JSON.

    python -m benchmarks.hand_model [--repeats 15] [--batches 1,64,1024]

For each device (CPU, and CUDA when present) and batch size: median wall time of a forward pass
(no grad) of the project's layer (vertices + joints + 21 keypoints) and of raw `smplx.MANO`
(vertices + joints), and their ratio. Target: ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
from functools import partial

import smplx
import torch

from backend.hand_model.model import OPEN_HAND_DIR, HandModel
from benchmarks.timing import median_ms


def run(repeats: int, batches: list[int]) -> dict:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        ours = HandModel("right").to(device)
        with contextlib.redirect_stdout(io.StringIO()):
            raw = smplx.MANO(
                str(OPEN_HAND_DIR / "MANO_RIGHT.npz"), ext="npz", use_pca=False, flat_hand_mean=True
            ).to(device)
        for batch in batches:
            g = torch.Generator().manual_seed(0)
            pose = (torch.randn(batch, 16, 3, generator=g) * 0.3).to(device)
            betas = torch.randn(batch, 10, generator=g).to(device)
            hand_pose = pose[:, 1:].reshape(batch, 45)
            with torch.no_grad():
                # interleave the two so that machine noise hits both alike
                t_raw, t_ours = [], []
                run_raw = partial(raw, betas=betas, global_orient=pose[:, 0], hand_pose=hand_pose)
                run_ours = partial(ours, pose, betas)
                for _ in range(3):
                    t_raw.append(median_ms(run_raw, repeats, device))
                    t_ours.append(median_ms(run_ours, repeats, device))
            r, o = statistics.median(t_raw), statistics.median(t_ours)
            results.append(
                {
                    "device": device.type,
                    "batch": batch,
                    "smplx_ms": round(r, 3),
                    "hamr_ms": round(o, 3),
                    "ratio": round(o / r, 3),
                }
            )
    return {
        "benchmark": "hand_model_forward",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "vertices": ours.num_vertices,
        "repeats": repeats,
        "target_ratio": 1.2,
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batches", default="1,64,1024")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.repeats, [int(b) for b in args.batches.split(",")]), indent=1))


if __name__ == "__main__":
    main()
