"""Synthetic-data throughput: samples per second at 256x256 on CPU (and CUDA when present).

    python -m benchmarks.synth [--batch 16] [--repeats 5]

Prints one JSON object. The baseline in the same run is rendering alone (rasterise + shade of the
same posed hands, no appearance or camera effects), so the ratio shows what appearance costs.
"""

from __future__ import annotations

import argparse
import json

import torch

from backend.camera import project_points
from backend.render import rasterize, shade
from benchmarks.timing import median_ms
from training.synth.engine import SynthConfig, SyntheticHands


def _bench_device(dev: torch.device, batch: int, repeats: int) -> dict:
    engine = SyntheticHands(SynthConfig(), dev)
    g = torch.Generator(device=dev).manual_seed(0)
    ref = engine.sample(batch, g)
    verts, k = ref["vertices"], ref["K"]
    albedo = torch.full((batch, 3), 0.7, device=dev)

    def render_only():
        pix = project_points(verts, k)
        frags = rasterize(torch.cat([pix, verts[..., 2:]], -1), engine.faces, 256, 256)
        shade(frags, verts, engine.faces, albedo)

    t_full = median_ms(lambda: engine.sample(batch, g), repeats, dev, warmup=1) / 1e3
    t_render = median_ms(render_only, repeats, dev, warmup=1) / 1e3
    return {
        "device": dev.type,
        "batch": batch,
        "samples_per_s": round(batch / t_full, 2),
        "render_only_samples_per_s": round(batch / t_render, 2),
        "full_over_render_time": round(t_full / t_render, 2),
    }


def run(batch: int, repeats: int) -> dict:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return {
        "benchmark": "synth",
        "size": 256,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "results": [_bench_device(dev, batch, repeats) for dev in devices],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.batch, args.repeats), indent=1))


if __name__ == "__main__":
    main()
