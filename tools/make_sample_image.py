"""Regenerate the bundled demo photo backend/assets/samples/synthetic_hand.jpg (licence-clean: made
by the project's own synthetic engine, seed 3). `python -m tools.make_sample_image`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.synth.engine import SynthConfig, SyntheticHands

OUT = Path(__file__).resolve().parents[1] / "backend" / "assets" / "samples" / "synthetic_hand.jpg"


def main() -> None:
    cfg = SynthConfig(
        image_size=512,
        left_fraction=0.0,
        occluder_prob=0.0,
        view_mix=(0.0, 0.5, 0.5, 0.0, 0.0),
        crop_scale_jitter=(1.5, 1.6),
    )
    batch = SyntheticHands(cfg).sample(1, torch.Generator().manual_seed(3))
    img = (batch["image"][0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(OUT, quality=92)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
