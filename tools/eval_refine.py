"""Measure the fit to MediaPipe's landmarks (backend.fit): `python -m tools.eval_refine`.

Two references, both independent of MediaPipe:
1. the synthetic test split (`training.evaluate`, --count crops): on each crop where MediaPipe finds
   the hand, the network's hand (on MediaPipe's box, the true side) and the same hand refined,
   against the true 3D joints (PA-MPJPE, mm) and 2D keypoints (mean error, px of the 256 crop);
2. every annotated hand in ../shared/samples that MediaPipe finds (IoU > 0.5 with the annotated
   keypoints' box): 2D error in box sides and PCK at 0.1 box side, for the network, MediaPipe's
   landmarks and the refined hand; PA-MPJPE where the set has 3D (InterHand2.6M).
Prints one JSON object. Runs on the CPU; the shipped checkpoint unless --checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from backend import detect_mediapipe
from backend.detect import iou
from backend.inference import HandRequest, Predictor, load_image


def _pa_mm(pred, gt) -> float:
    from training.metrics import pa_error

    pred = torch.as_tensor(np.asarray(pred), dtype=torch.float32)[None]
    return float(pa_error(pred, torch.as_tensor(gt, dtype=torch.float32)[None])[0] * 1000)


def _px(uv, truth) -> float:
    return float(np.linalg.norm(np.asarray(uv) - truth, axis=1).mean())


def _two(predictor: Predictor, image, request: HandRequest, landmarks):
    """(the network's hand, the refined hand, seconds the fit took)."""
    net = predictor.predict(image, [request], refine=False)["hands"][0]
    refined = json.loads(json.dumps(net))
    t0 = time.perf_counter()
    predictor.refine_hand(refined, landmarks)
    return net, refined, time.perf_counter() - t0


def synthetic(predictor: Predictor, count: int) -> dict:
    from training.evaluate import synthetic_test_batches

    rows = []
    for batch in synthetic_test_batches(count, torch.device("cpu")):
        for i in range(len(batch["image"])):
            image = batch["image"][i].permute(1, 2, 0).numpy() * 255 + 0.5
            image = image.clip(0, 255).astype(np.uint8)
            found = detect_mediapipe.detect(image, 1)
            if not found:
                continue
            side = "left" if int(batch["side"][i]) == 1 else "right"
            request = HandRequest(found[0]["box_xyxy"], side)
            net, refined, seconds = _two(predictor, image, request, found[0]["keypoints2d"])
            gt3, gt2 = batch["keypoints3d"][i].numpy(), batch["keypoints2d"][i].numpy()
            rows.append(
                {
                    "pa_net": _pa_mm(net["joints3d_cam"], gt3),
                    "pa_refined": _pa_mm(refined["joints3d_cam"], gt3),
                    "px_net": _px(net["keypoints2d"], gt2),
                    "px_refined": _px(refined["keypoints2d"], gt2),
                    "px_mediapipe": _px(found[0]["keypoints2d"], gt2),
                    "seconds": seconds,
                }
            )
    out = {"crops": count, "found_by_mediapipe": len(rows)}
    if rows:
        for key in rows[0]:
            out[f"mean_{key}"] = round(float(np.mean([r[key] for r in rows])), 2)
        out["refined_better_3d"] = sum(r["pa_refined"] < r["pa_net"] for r in rows)
    return out


def samples(predictor: Predictor) -> dict:
    from training.data.samples import DEFAULT_SAMPLES_ROOT, NAMES, SampleSet

    if not DEFAULT_SAMPLES_ROOT.is_dir():
        return {"skipped": f"no sample photos at {DEFAULT_SAMPLES_ROOT}"}
    rows, total = [], 0
    for name in NAMES:
        dataset = SampleSet(None, name)
        for hand in dataset.hands:
            total += 1
            image, _ = load_image(dataset.dir / hand.file)
            vis = hand.vis > 0
            lo, hi = hand.uv[vis].min(0), hand.uv[vis].max(0)
            truth = (*lo, *hi)
            best = max(detect_mediapipe.detect(image), key=lambda d: iou(d["box_xyxy"], truth),
                       default=None)  # fmt: skip
            if best is None or iou(best["box_xyxy"], truth) <= 0.5:
                continue
            request = HandRequest(best["box_xyxy"], best["side"])
            net, refined, _ = _two(predictor, image, request, best["keypoints2d"])
            size = float(max(hi - lo))
            row = {"set": name}
            for key, uv in (
                ("net", net["keypoints2d"]),
                ("mediapipe", best["keypoints2d"]),
                ("refined", refined["keypoints2d"]),
            ):
                err = np.linalg.norm(np.asarray(uv)[vis] - hand.uv[vis], axis=1) / size
                row[f"err_{key}"] = float(err.mean())
                row[f"pck10_{key}"] = float((err < 0.1).mean())
            if hand.xyz is not None:
                row["pa_net"] = _pa_mm(net["joints3d_cam"], hand.xyz)
                row["pa_refined"] = _pa_mm(refined["joints3d_cam"], hand.xyz)
            rows.append(row)
    out: dict = {"hands": total, "found_by_mediapipe": len(rows)}
    for key in ("err_net", "err_mediapipe", "err_refined", "pck10_net", "pck10_mediapipe",
                "pck10_refined"):  # fmt: skip
        out[f"mean_{key}"] = round(float(np.mean([r[key] for r in rows])), 3)
    three_d = [r for r in rows if "pa_net" in r]
    if three_d:
        out["pa_mpjpe_mm_net"] = [round(r["pa_net"], 1) for r in three_d]
        out["pa_mpjpe_mm_refined"] = [round(r["pa_refined"], 1) for r in three_d]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--count", type=int, default=64, help="synthetic test crops")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not detect_mediapipe.available():
        raise SystemExit("tools.eval_refine needs mediapipe (make setup installs it)")
    predictor = Predictor(args.checkpoint)
    result = {
        "checkpoint": predictor.checkpoint.name,
        "synthetic_test": synthetic(predictor, args.count),
        "samples": samples(predictor),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
