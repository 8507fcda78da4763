"""Measure the fusion with MediaPipe's landmarks (backend.fuse.fusion):
`python -m tools.eval_refine`.

Two references, both independent of MediaPipe:
1. the synthetic test split (`training.evaluate`, --count crops): on each crop where MediaPipe finds
   the hand, the network's hand (on MediaPipe's box, the true side) and the same hand refined,
   against the true 3D joints (PA-MPJPE, mm) and 2D keypoints (mean error, px of the 256 crop);
2. every annotated hand in ../shared/samples that MediaPipe finds (IoU > 0.5 with the annotated
   keypoints' box): 2D error in box sides and PCK at 0.1 box side, for the network, MediaPipe's
   landmarks and the refined hand; PA-MPJPE where the set has 3D (InterHand2.6M);
3. with --video: for each of those photos (FreiHAND's 224-pixel ones aside), a clip panning
   across it (--frames frames, a known shift per frame, the frame 10 % smaller than the photo),
   through `hamr video`'s `process_video` (default smoothing) without and with refine: each
   frame's 2D error against the shifted annotations, in box sides, and the seconds per frame.
Prints one JSON object. Runs on the CPU; the shipped checkpoint unless --checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from backend.crop import iou
from backend.detect import mediapipe_hands
from backend.media.image import load_image
from backend.options import HandRequest
from backend.pipeline.photo import Predictor
from backend.schema import Hand


def _pa_mm(pred, gt) -> float:
    from training.metrics import pa_error

    pred = torch.as_tensor(np.asarray(pred), dtype=torch.float32)[None]
    return float(pa_error(pred, torch.as_tensor(gt, dtype=torch.float32)[None])[0] * 1000)


def _px(uv, truth) -> float:
    return float(np.linalg.norm(np.asarray(uv) - truth, axis=1).mean())


def _two(predictor: Predictor, image, request: HandRequest, found: dict):
    """(the network's hand, the hand fused with MediaPipe's hand `found`, seconds it took)."""
    net = predictor.predict(image, [request], refine=False)["hands"][0]
    hand = Hand.from_json(json.loads(json.dumps(net)))
    t0 = time.perf_counter()
    predictor.refine_hand(hand, found["keypoints2d"], found["keypoints3d_world"])
    return net, hand.to_json(), time.perf_counter() - t0


def synthetic(predictor: Predictor, count: int) -> dict:
    from benchmarks.accuracy import found_synthetic_hands

    rows = []
    for image, side, found, gt3, gt2 in found_synthetic_hands(count):
        request = HandRequest(found["box_xyxy"], side)
        net, refined, seconds = _two(predictor, image, request, found)
        rows.append(
            {
                "pa_net": _pa_mm(net["joints3d_cam"], gt3),
                "pa_refined": _pa_mm(refined["joints3d_cam"], gt3),
                "px_net": _px(net["keypoints2d"], gt2),
                "px_refined": _px(refined["keypoints2d"], gt2),
                "px_mediapipe": _px(found["keypoints2d"], gt2),
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
    from benchmarks.accuracy import found_sample_hands, sample_hands_total

    if (total := sample_hands_total()) is None:
        return {"skipped": "no sample photos (../shared/samples)"}
    rows = []
    for name, hand, image, vis, size, best in found_sample_hands():
        request = HandRequest(best["box_xyxy"], best["side"])
        net, refined, _ = _two(predictor, image, request, best)
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


def pan_clip(photo: np.ndarray, path, frames: int) -> tuple[int, int]:
    """Write a clip panning right across `photo`; returns (shift per frame, top margin) px."""
    import cv2

    h, w = photo.shape[:2]
    margin = int(min(w, h) * 0.1) & ~1
    shift = max(1, margin // frames)
    size = ((w - margin) & ~1, (h - margin) & ~1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    for i in range(frames):
        window = photo[margin // 2 : margin // 2 + size[1], shift * i : shift * i + size[0]]
        writer.write(cv2.cvtColor(np.ascontiguousarray(window), cv2.COLOR_RGB2BGR))
    writer.release()
    return shift, margin // 2


def pan_errors(result: dict, uv: np.ndarray, vis: np.ndarray, shift: int, top: int) -> list:
    """Per frame of a `pan_clip` video result: the 2D error of the tracked hand that best overlaps
    the annotated one (keypoints `uv`, visible where `vis`), shifted as the clip pans, in sides
    of its box; NaN where no tracked hand overlaps it (IoU < 0.3)."""
    side = float(max(uv[vis].max(0) - uv[vis].min(0)))
    errors = []
    for frame in result["frames"]:
        truth = uv - [shift * frame["index"], top]
        box = (*truth[vis].min(0), *truth[vis].max(0))
        best = max(frame["hands"], key=lambda h: iou(h["box_xyxy"], box), default=None)
        if best is None or iou(best["box_xyxy"], box) < 0.3:
            errors.append(np.nan)  # the hand was not tracked in this frame
            continue
        errors.append(_px(np.asarray(best["keypoints2d"])[vis], truth[vis]) / side)
    return errors


def clip_hands():
    """The annotated sample hands that clips are made from (FreiHAND's 224-pixel photos aside):
    yields (set name, index in the set, SampleHand, RGB photo, visibility mask)."""
    from training.data.samples import NAMES, SampleSet

    for name in NAMES:
        if name == "freihand":
            continue
        dataset = SampleSet(None, name)
        for k, hand in enumerate(dataset.hands):
            image, _ = load_image(dataset.dir / hand.file)
            yield name, k, hand, image, hand.vis > 0


def video(predictor: Predictor, frames: int) -> dict:
    import tempfile
    from pathlib import Path

    from backend.pipeline.video import VideoOptions, process_video
    from training.data.samples import DEFAULT_SAMPLES_ROOT

    if not DEFAULT_SAMPLES_ROOT.is_dir():
        return {"skipped": f"no sample photos at {DEFAULT_SAMPLES_ROOT}"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, k, hand, image, vis in clip_hands():
            lo, hi = hand.uv[vis].min(0), hand.uv[vis].max(0)
            if not any(iou(d["box_xyxy"], (*lo, *hi)) > 0.5 for d in mediapipe_hands.detect(image)):
                continue
            path = Path(tmp) / f"{name}_{k}.mp4"
            shift, top = pan_clip(image, path, frames)
            row = {"set": name, "hand": k}
            for refine in (False, True):
                t0 = time.perf_counter()
                result = process_video(predictor, path, VideoOptions(min_score=0.0, refine=refine))
                seconds = (time.perf_counter() - t0) / frames
                errors = pan_errors(result, hand.uv, vis, shift, top)
                key = "refined" if refine else "net"
                row[f"err_{key}"] = float(np.nanmean(errors)) if errors else float("nan")
                row[f"s_per_frame_{key}"] = seconds
            rows.append(row)
    out: dict = {"clips": len(rows), "frames_per_clip": frames}
    for key in ("err_net", "err_refined", "s_per_frame_net", "s_per_frame_refined"):
        out[f"mean_{key}"] = round(float(np.nanmean([r[key] for r in rows])), 3)
    out["better_refined"] = sum(r["err_refined"] < r["err_net"] for r in rows)
    out["per_clip"] = rounded(rows)
    return out


def rounded(rows: list[dict]) -> list[dict]:
    """Per-clip rows for the JSON output: floats to 3 decimals."""
    return [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--count", type=int, default=64, help="synthetic test crops")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--video", action="store_true", help="also the panning clips (section 3)")
    ap.add_argument("--video-only", action="store_true", help="section 3 alone")
    ap.add_argument("--frames", type=int, default=8, help="frames of each panning clip")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not mediapipe_hands.available():
        raise SystemExit("tools.eval_refine needs mediapipe (make setup installs it)")
    predictor = Predictor(args.checkpoint)
    result: dict = {"checkpoint": predictor.checkpoint.name}
    if not args.video_only:
        result["synthetic_test"] = synthetic(predictor, args.count)
        result["samples"] = samples(predictor)
    if args.video or args.video_only:
        result["video"] = video(predictor, args.frames)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
