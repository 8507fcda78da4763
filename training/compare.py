"""Compare checkpoints, network alone, on the same data in one run:
`python -m training.compare --checkpoints A.safetensors,B.safetensors [--count 256]
 [--teacher DIR] [--json OUT]`.

For each checkpoint: the synthetic test split (`training.evaluate`'s, --count crops), every
annotated hand of ../shared/samples (`training.evaluate --dataset samples`' four sets), and, with
--teacher, the held-out split of a teacher-labelled folder (2D error against MediaPipe's
landmarks, PA-MPJPE against the landmark fit's 3D joints). Then, for every checkpoint after the
first, the synthetic test split's PA-MPJPE paired crop by crop with the first one's: mean
difference (mm, negative = better than the first), its standard error and the share of crops
where it is better. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .data.transforms import flip_to_right
from .evaluate import SAMPLE_SETS, evaluate_dataset, evaluate_synthetic, synthetic_test_batches
from .metrics import pa_error


@torch.no_grad()
def synthetic_pa_per_crop(model, count: int, device="cpu") -> torch.Tensor:
    """(count,) PA-MPJPE (mm) of each synthetic test crop."""
    model.eval()
    errors = []
    for batch in synthetic_test_batches(count, torch.device(device)):
        batch = flip_to_right(batch)
        out = model(batch["image"])
        errors.append(pa_error(out.keypoints3d.float(), batch["keypoints3d"].float()) * 1000)
    return torch.cat(errors)


def compare(
    paths: list[str], count: int = 256, teacher: str | None = None, device: str = "cpu"
) -> dict:
    from backend.network.checkpoint import load_checkpoint

    result: dict = {"count": count, "checkpoints": {}}
    per_crop = {}
    for path in paths:
        model, _ = load_checkpoint(path, device)
        entry = {"synthetic-test": evaluate_synthetic(model, count, device)}
        for name in SAMPLE_SETS:
            entry[name] = evaluate_dataset(model, name, device)
        if teacher:
            entry["teacher-test"] = evaluate_dataset(model, f"teacher-folder:{teacher}", device)
        per_crop[path] = synthetic_pa_per_crop(model, count, device)
        result["checkpoints"][path] = entry
    base = paths[0]
    result["paired_synthetic_pa_mpjpe"] = {}
    for path in paths[1:]:
        d = per_crop[path] - per_crop[base]
        result["paired_synthetic_pa_mpjpe"][path] = {
            "against": base,
            "mean_diff_mm": round(float(d.mean()), 3),
            "standard_error_mm": round(float(d.std() / len(d) ** 0.5), 3),
            "better_share": round(float((d < 0).float().mean()), 3),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", required=True, help="comma-separated; the first is the base")
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--teacher", default=None, help="a teacher-labelled folder (its test split)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = compare(args.checkpoints.split(","), args.count, args.teacher)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
