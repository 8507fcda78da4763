"""Regenerate the README's detection figure: `python -m tools.readme_figures`.

Runs `hamr predict` (no box: the default detector, `auto`, i.e. MediaPipe Hands when installed and
it finds a hand, else the network; side auto) with the shipped checkpoint on every photo in
../shared/samples/wild_*, draws the predicted meshes and skeletons over them, and writes a grid to
docs/images/wild_detections.png. Prints one JSON line per photo (the detector used, hands found,
their sides, scores and boxes, seconds taken). Then evaluates the checkpoint on every annotated
hand of the other sample sets (ground-truth crops, as `training.evaluate --dataset samples`) and
tiles the overlay crops into docs/images/samples_eval.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backend.media.image import load_image
from backend.pipeline.photo import Predictor, overlay

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"
TILE = 400


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    rows = (len(tiles) + cols - 1) // cols
    tiles = tiles + [np.zeros_like(tiles[0])] * (rows * cols - len(tiles))
    return np.concatenate(
        [np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0
    )


def samples_figure(predictor: Predictor) -> None:
    """Overlay crops of every annotated sample hand -> docs/images/samples_eval.png."""
    import tempfile

    from training.evaluate import SAMPLE_SETS, evaluate_dataset

    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SAMPLE_SETS:
            metrics = evaluate_dataset(predictor.model, name, overlay_dir=Path(tmp) / name)
            print(json.dumps({"dataset": name, **{k: round(v, 4) for k, v in metrics.items()}}))
            for png in sorted((Path(tmp) / name).glob("*.png")):
                tiles.append(np.asarray(Image.open(png).convert("RGB").resize((192, 192))))
    out = REPO / "docs" / "images" / "samples_eval.png"
    Image.fromarray(_grid(tiles, 8)).save(out)
    print(json.dumps({"wrote": str(out.relative_to(REPO))}))


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    photos = sorted(p for d in SAMPLES.glob("wild_*") for p in d.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SAMPLES}/wild_*")
    predictor = Predictor()
    tiles = []
    for path in photos:
        image, f35 = load_image(path)
        t0 = time.perf_counter()
        prediction = predictor.predict(image, exif_f35_mm=f35)
        seconds = time.perf_counter() - t0
        hands = prediction["hands"]
        print(
            json.dumps(
                {
                    "photo": f"{path.parent.name}/{path.name}",
                    "detector": prediction["detector"],
                    "hands": len(hands),
                    "found": [
                        {
                            "side": h["side"],
                            "score": h["score"],
                            "box": [round(v) for v in h["box_xyxy"]],
                        }
                        for h in hands
                    ],
                    "seconds": round(seconds, 1),
                }
            )
        )
        pic = Image.fromarray(overlay(predictor, image, prediction))
        pic.thumbnail((TILE, TILE))
        tile = Image.new("RGB", (TILE, TILE), (30, 30, 30))
        tile.paste(pic, ((TILE - pic.width) // 2, (TILE - pic.height) // 2))
        tiles.append(np.asarray(tile))
    out = REPO / "docs" / "images" / "wild_detections.png"
    Image.fromarray(_grid(tiles, 3)).save(out)
    print(json.dumps({"wrote": str(out.relative_to(REPO))}))
    samples_figure(predictor)


if __name__ == "__main__":
    main()
