"""Accuracy of the fused hand against its peers on the same hands, in the same run. Prints JSON.

    python -m benchmarks.accuracy [--count 160] [--threads 1] [--out docs/results/accuracy.json]

For each hand with ground truth that MediaPipe finds (its box over the true one, IoU > 0.5):
- mediapipe: its image landmarks (2D) and its world landmarks (3D, Procrustes-aligned);
- network: the HAMR network alone on MediaPipe's box (`refine off`);
- fused: that network hand fused with MediaPipe's landmarks (`Predictor.fuse`, as `hamr predict`
  does by default), and the fusion's own time per hand.
Sets: the synthetic test split (--count rendered crops; exact 2D and 3D), and the annotated
sample photos in ../shared/samples (2D for all, 3D for InterHand2.6M; skipped when absent).
2D errors: pixels on the synthetic 256-px crops, hand-box sides on the photos; 3D: PA-MPJPE mm.
Ratios: fused / mediapipe (targets: 2D <= 1.0, 3D <= 0.95).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from backend.crop import iou
from backend.detect import mediapipe_hands
from backend.media.image import load_image
from backend.options import HandRequest
from backend.pipeline.photo import Predictor
from benchmarks.output import add_out_argument, emit


def pa_mm(pred, truth) -> float:
    """PA-MPJPE in millimetres of (21, 3) keypoints (similarity-aligned)."""
    from training.metrics import pa_error

    p, t = (torch.as_tensor(np.asarray(x), dtype=torch.float32)[None] for x in (pred, truth))
    return float(pa_error(p, t)[0]) * 1000


def compare(predictor: Predictor, image, found: dict, side: str) -> dict:
    """(the network's hand, the fused hand, seconds the fusion took, MediaPipe's hand)."""
    request = HandRequest(found["box_xyxy"], side)
    net, _ = predictor.predict_hands(image, [request], refine=False)
    fused, _ = predictor.predict_hands(image, [request], refine=False)
    t0 = time.perf_counter()
    predictor.refine_hand(fused[0], found["keypoints2d"], found["keypoints3d_world"])
    seconds = time.perf_counter() - t0
    return {"net": net[0].to_json(), "fused": fused[0].to_json(), "seconds": seconds}


def _summary(rows: list[dict], keys: tuple[str, ...], digits: int) -> dict:
    out: dict = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = round(float(np.mean(values)), digits)
    for dim in ("2d", "3d"):
        if f"fused_{dim}" in out and out.get(f"mediapipe_{dim}"):
            out[f"ratio_{dim}_fused_to_mediapipe"] = round(
                out[f"fused_{dim}"] / out[f"mediapipe_{dim}"], 3
            )
    if rows:
        out["fusion_ms_median"] = round(statistics.median(r["seconds"] for r in rows) * 1e3, 2)
    return out


def found_synthetic_hands(count: int):
    """The crops of the synthetic test split (the first `count`) where MediaPipe finds the hand:
    yields (RGB crop, true side, MediaPipe's hand, true 3D keypoints (21, 3), true 2D (21, 2))."""
    from training.evaluate import synthetic_test_batches

    for batch in synthetic_test_batches(count, torch.device("cpu")):
        for i in range(len(batch["image"])):
            image = batch["image"][i].permute(1, 2, 0).numpy() * 255 + 0.5
            image = image.clip(0, 255).astype(np.uint8)
            found = mediapipe_hands.detect(image, 1)
            if found:
                side = "left" if int(batch["side"][i]) == 1 else "right"
                gt3, gt2 = batch["keypoints3d"][i].numpy(), batch["keypoints2d"][i].numpy()
                yield image, side, found[0], gt3, gt2


def synthetic(predictor: Predictor, count: int) -> dict:
    rows = []
    for image, side, found, gt3, gt2 in found_synthetic_hands(count):
        out = compare(predictor, image, found, side)

        def px(uv, gt2=gt2):
            return float(np.linalg.norm(np.asarray(uv) - gt2, axis=1).mean())

        rows.append(
            {
                "mediapipe_2d": px(found["keypoints2d"]),
                "network_2d": px(out["net"]["keypoints2d"]),
                "fused_2d": px(out["fused"]["keypoints2d"]),
                "mediapipe_3d": pa_mm(found["keypoints3d_world"], gt3),
                "network_3d": pa_mm(out["net"]["joints3d_cam"], gt3),
                "fused_3d": pa_mm(out["fused"]["joints3d_cam"], gt3),
                "seconds": out["seconds"],
            }
        )
    keys = tuple(f"{w}_{d}" for d in ("2d", "3d") for w in ("mediapipe", "network", "fused"))
    return {"crops": count, "hands": len(rows), **_summary(rows, keys, 2)}


def found_sample_hands():
    """The annotated hands of ../shared/samples that MediaPipe finds (its box over the annotated
    keypoints' box, IoU > 0.5): yields (set name, SampleHand, RGB photo, visible mask (21,),
    the hand's size in pixels, MediaPipe's hand); nothing when the folder is absent."""
    from training.data.samples import DEFAULT_SAMPLES_ROOT, NAMES, SampleSet

    if not DEFAULT_SAMPLES_ROOT.is_dir():
        return
    for name in NAMES:
        dataset = SampleSet(None, name)
        for hand in dataset.hands:
            image, _ = load_image(dataset.dir / hand.file)
            vis = hand.vis > 0
            lo, hi = hand.uv[vis].min(0), hand.uv[vis].max(0)
            truth = (*lo, *hi)
            best = max(
                mediapipe_hands.detect(image), key=lambda d: iou(d["box_xyxy"], truth), default=None
            )
            if best is not None and iou(best["box_xyxy"], truth) > 0.5:
                yield name, hand, image, vis, float(max(hi - lo)), best


def sample_hands_total() -> int | None:
    """How many annotated hands ../shared/samples holds; None when it is absent."""
    from training.data.samples import DEFAULT_SAMPLES_ROOT, NAMES, SampleSet

    if not DEFAULT_SAMPLES_ROOT.is_dir():
        return None
    return sum(len(SampleSet(None, name).hands) for name in NAMES)


def samples(predictor: Predictor) -> dict:
    if (total := sample_hands_total()) is None:
        return {"skipped": "no sample photos (../shared/samples)"}
    rows = []
    for name, hand, image, vis, size, best in found_sample_hands():
        out = compare(predictor, image, best, best["side"])

        def err(uv, gt=hand.uv, vis=vis, size=size):
            return float(np.linalg.norm(np.asarray(uv)[vis] - gt[vis], axis=1).mean() / size)

        row = {
            "set": name,
            "mediapipe_2d": err(best["keypoints2d"]),
            "network_2d": err(out["net"]["keypoints2d"]),
            "fused_2d": err(out["fused"]["keypoints2d"]),
            "seconds": out["seconds"],
        }
        if hand.xyz is not None:
            row["mediapipe_3d"] = pa_mm(best["keypoints3d_world"], hand.xyz)
            row["network_3d"] = pa_mm(out["net"]["joints3d_cam"], hand.xyz)
            row["fused_3d"] = pa_mm(out["fused"]["joints3d_cam"], hand.xyz)
        rows.append(row)
    keys = tuple(f"{w}_{d}" for d in ("2d", "3d") for w in ("mediapipe", "network", "fused"))
    out = {"hands": total, "found_by_mediapipe": len(rows), **_summary(rows, keys, 4)}
    out["hands_with_3d"] = sum("fused_3d" in r for r in rows)
    out["fused_better_2d"] = sum(r["fused_2d"] < r["mediapipe_2d"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=160, help="synthetic test crops")
    ap.add_argument("--threads", type=int, default=1)
    add_out_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not mediapipe_hands.available():
        emit({"skipped": "mediapipe is not installed"}, args.out)
        return
    predictor = Predictor(refine="off")
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "synthetic": synthetic(predictor, args.count),
        "samples": samples(predictor),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
