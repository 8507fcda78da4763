"""Write a synthetic hand dataset to disk (format: training/data/synthetic_folder.py).

    python -m training.synthesize --count N --out DIR [--seed S] [--preview GRID.png]
                                  [--backgrounds IMAGE_DIR] [--device cpu|cuda] [--png]

Deterministic per seed: batch b is drawn from a generator seeded with (seed, b), with a fixed batch
size recorded in meta.json, so the same seed gives the same data on the same device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend.hand_model.model import hand_model_id
from backend.render import render_overlay, save_png

from .data.synthetic_folder import SyntheticFolderWriter
from .synth.engine import SynthConfig, SyntheticHands

BATCH = 16


def batch_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of batch `index` of a dataset with this seed."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


def preview_grid(batch: dict[str, torch.Tensor], columns: int = 8) -> np.ndarray:
    """(rows*256, columns*256, 3) uint8: samples with their 21-keypoint skeletons drawn."""
    n = batch["image"].shape[0]
    tiles = []
    for i in range(n):
        img = (batch["image"][i].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).clip(0, 255)
        tiles.append(
            render_overlay(
                img.astype(np.uint8),
                [],
                [],
                batch["K"][i].cpu().numpy(),
                batch["keypoints2d"][i].cpu().numpy(),
            )
        )
    rows = (n + columns - 1) // columns
    tiles += [np.zeros_like(tiles[0])] * (rows * columns - n)
    return np.concatenate(
        [np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(rows)],
        axis=0,
    )


def synthesize(
    count: int,
    out: Path,
    seed: int = 0,
    cfg: SynthConfig | None = None,
    device: str = "cpu",
    image_format: str = "jpg",
    preview: Path | None = None,
    log=print,
) -> Path:
    """Write `count` samples to `out`; returns the folder."""
    if count < 1:
        raise ValueError("--count must be at least 1")
    cfg = cfg or SynthConfig()
    dev = torch.device(device)
    engine = SyntheticHands(cfg, dev)
    meta = {
        "seed": seed,
        "batch_size": BATCH,
        "engine": dataclasses.asdict(cfg),
        "hand_model": hand_model_id(cfg.hand_model),
        "device": dev.type,
    }
    writer = SyntheticFolderWriter(out, meta, image_format)
    t0 = time.perf_counter()
    first = None
    for b in range((count + BATCH - 1) // BATCH):
        batch = engine.sample(BATCH, batch_generator(seed, b, dev))
        writer.add(batch, batch["transl"], count - writer.count)
        first = first if first is not None else batch
        log(f"\r{writer.count}/{count} samples", end="", flush=True)
    log(f"\n{count / (time.perf_counter() - t0):.1f} samples/s")
    path = writer.close()
    if preview is not None:
        save_png(preview, preview_grid({k: v[: min(16, count)] for k, v in first.items()}))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preview", type=Path, default=None, help="PNG grid of the first samples")
    ap.add_argument("--backgrounds", default=None, help="folder of your own background images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--png", action="store_true", help="lossless PNG images instead of JPEG")
    args = ap.parse_args(argv)
    try:
        cfg = SynthConfig(background_dir=args.backgrounds)
        path = synthesize(
            args.count,
            args.out,
            args.seed,
            cfg,
            args.device,
            "png" if args.png else "jpg",
            args.preview,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(path), "count": args.count, "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
