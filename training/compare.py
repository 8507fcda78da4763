"""Compare checkpoints, network alone, on the same data in one run:
`python -m training.compare --checkpoints A.safetensors,B.safetensors [--count 256]
 [--teacher DIR[,DIR2...]] [--json OUT]`.

For each checkpoint: the synthetic test split (`training.evaluate`'s, --count crops), every
annotated hand of ../shared/samples (`training.evaluate --dataset samples`' four sets), and, with
--teacher, the held-out split of each teacher-labelled folder (2D error against MediaPipe's
landmarks, PA-MPJPE against the landmark fit's 3D joints; the first folder's under
"teacher-test", each further one's under "teacher-test:<folder name>"); for the samples and the
teacher splits also the 2D error in box sides and PCK at 0.1 box side (`box_scores`,
"...-box" keys). Then, for every checkpoint after the first, the synthetic test split's
PA-MPJPE paired crop by crop with the first one's: mean difference (mm, negative = better than
the first), its standard error and the share of crops where it is better. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from backend.network.camera import normalized_to_pixels

from .data.transforms import flip_to_right
from .evaluate import SAMPLE_SETS, _run, evaluate_dataset, synthetic_test_batches
from .metrics import pa_error


@torch.no_grad()
def synthetic_pa_per_crop(model, batches) -> torch.Tensor:
    """(count,) PA-MPJPE (mm) of each synthetic test crop."""
    model.eval()
    errors = []
    for batch in batches:
        batch = flip_to_right(batch)
        out = model(batch["image"])
        errors.append(pa_error(out.keypoints3d.float(), batch["keypoints3d"].float()) * 1000)
    return torch.cat(errors)


@torch.no_grad()
def box_scores(model, specs, device="cpu") -> dict:
    """2D error of the network alone on annotated hands, in units of each hand's box side (the
    longer side of its annotated keypoints' tight box; the crop is the reader's, from that box
    grown 10 %): mean error and PCK at 0.1 box side over the annotated keypoints of every hand
    of `specs` (dataset specs, test split)."""
    from .data.mix import build_dataset

    model.eval()
    errors = []
    for spec in specs:
        ds = build_dataset(spec, "test")
        loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)
        for batch in loader:
            batch = flip_to_right(batch)
            out = model(batch["image"].to(device))
            pred = normalized_to_pixels(out.keypoints2d, batch["image"].shape[-1]).cpu()
            gt, vis = batch["keypoints2d"], batch["keypoints2d_vis"] > 0
            for i in range(len(gt)):
                pts = gt[i][vis[i]]
                side = float((pts.max(0).values - pts.min(0).values).max())
                errors.append((pred[i][vis[i]] - pts).norm(dim=-1) / side)
    e = torch.cat(errors)
    return {"keypoints": len(e), "mean_error_box": float(e.mean()),
            "pck_0.1_box": float((e < 0.1).float().mean())}  # fmt: skip


def detector_check(paths: list[str], photos: list[str]) -> dict:
    """The network's own detector (`--detector hamr`, no landmark fit) on each photo with each
    checkpoint: the boxes it finds, and how many of MediaPipe's hands (the reference) it finds
    (a box with IoU > 0.3; each MediaPipe hand counted once)."""
    import numpy as np

    from backend.crop import iou
    from backend.detect import mediapipe_hands
    from backend.pipeline.photo import Predictor

    from .data.common import load_rgb

    out: dict = {}
    images = {photo: load_rgb(photo) for photo in photos}
    reference = {
        photo: [d["box_xyxy"] for d in mediapipe_hands.detect(img)] for photo, img in images.items()
    }
    for path in paths:
        predictor = Predictor(path, detector="hamr", refine="off")
        rows = {}
        for photo, image in images.items():
            hands, _ = predictor.predict_hands(image, detector="hamr", refine=False)
            boxes = [h.box_xyxy for h in hands]
            found = sum(1 for ref in reference[photo] if any(iou(ref, b) > 0.3 for b in boxes))
            rows[photo] = {
                "mediapipe_hands": len(reference[photo]),
                "hamr_boxes": len(boxes),
                "mediapipe_hands_found": found,
                "boxes": np.round(np.asarray(boxes, float), 1).tolist(),
            }
        out[path] = rows
    return out


def compare(
    paths: list[str],
    count: int = 256,
    teacher: str | list[str] | None = None,
    device: str = "cpu",
) -> dict:
    from backend.network.checkpoint import load_checkpoint

    from .data.mix import build_dataset

    teachers = [teacher] if isinstance(teacher, str) else list(teacher or [])
    if len({Path(t).name for t in teachers}) < len(teachers):
        raise ValueError(f"teacher folders need distinct names: {teachers}")
    # (key suffix, spec) of each folder with a held-out split: the first unsuffixed
    teacher_specs = [
        ("" if i == 0 else f":{Path(folder).name}", f"teacher-folder:{folder}")
        for i, folder in enumerate(teachers)
        if len(build_dataset(f"teacher-folder:{folder}", "test"))
    ]
    result: dict = {"count": count, "checkpoints": {}}
    per_crop = {}
    batches = synthetic_test_batches(count, torch.device(device))  # drawn once, for all
    for path in paths:
        model, _ = load_checkpoint(path, device)
        entry = {"synthetic-test": _run(model, batches, device)}
        for name in SAMPLE_SETS:
            entry[name] = evaluate_dataset(model, name, device)
        entry["samples-box"] = box_scores(model, SAMPLE_SETS, device)
        for tag, spec in teacher_specs:
            entry[f"teacher-test{tag}"] = evaluate_dataset(model, spec, device)
            entry[f"teacher-test-box{tag}"] = box_scores(model, [spec], device)
        per_crop[path] = synthetic_pa_per_crop(model, batches)
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
    ap.add_argument(
        "--teacher", default=None, help="comma-separated teacher-labelled folders (test splits)"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--detector-photos",
        default=None,
        help="comma-separated photos: run only `detector_check` on them (--detector hamr)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.detector_photos:
            result = detector_check(args.checkpoints.split(","), args.detector_photos.split(","))
        else:
            teachers = args.teacher.split(",") if args.teacher else None
            result = compare(args.checkpoints.split(","), args.count, teachers)
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
