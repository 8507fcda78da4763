"""Teacher labelling: any folder of photos, or a video, becomes a training set of real hand crops.

    python -m training.label_real SRC --out DIR [--preview grid.png] [--holdout GLOB ...]
                                      [--every N] [--limit N] [--max-hands 2] [--threads 1]

SRC is a folder (every .jpg/.jpeg/.png/.bmp/.webp below it, in sorted relative-path order) or a
video file (every N-th frame, `--every`). Each photo goes through the backend's teacher:
MediaPipe Hands (`backend.detect.mediapipe_hands.detect`: box, side, score, 21 image landmarks,
21 world landmarks) and then `Predictor.predict_hands` with those hands (the network, fused with
MediaPipe's landmarks: `backend/fuse/fusion.py`), which gives the MANO pose and shape and the 3D
joints in the camera of the photo (default focal: `backend.camera.default_focal`).

Photos smaller than MIN_SIDE on their longer side are upsampled (integer factor) first; a photo
where MediaPipe finds nothing is looked at once more padded with black on every side (PAD of its
longer side): tightly cropped hands (segmented onto black) are then found. Deterministic (sorted
inputs, one thread, no randomness) and resumable: `records.jsonl` lists every input done, and a
second run skips them (samples of an input whose record is missing, after a crash, are dropped
and redone).

Quality. Every hand found is dropped for one reason, counted in meta.json's `dropped`:
  too_small        box (landmarks' tight box) under MIN_BOX px on its longer side
  cut_by_border    a landmark lies outside the photo (the hand is cut by the frame)
  low_score        MediaPipe's handedness score under MIN_SCORE
  fit_residual     the fitted hand's landmark RMS (`fit.rms_px_after`) over MAX_RMS_REL of the box
  teacher_disagree MediaPipe's world landmarks and the fitted 3D joints differ by more than
                   MAX_DISAGREE_MM (PA-MPJPE: after a similarity alignment)
  anatomy          the fitted 3D joints break the anatomy constraints (planarity / backward
                   bending, `backend.hand_model.anatomy.geometric_loss`) by more than MAX_ANATOMY
  overlap          two hands' boxes overlap (IoU > MAX_OVERLAP_IOU): labels may mix them up
and inputs without any hand count as `no_hand` (`unreadable` for files that do not decode).
A kept hand's weights (in [0, 1]) scale its loss terms in training:
  weight_2d = score * exp(-(rms_rel / RMS_SCALE)^2)       heat-maps, 2D keypoints, camera
  weight_3d = weight_2d * exp(-(disagree_mm / DISAGREE_SCALE_MM)^2)   3D, bones, MANO terms

On-disk format `hamr.teacher/1` (DIR):
  meta.json        format, source, options, thresholds, counts (inputs, kept, dropped by reason,
                   per split), written at the end and every 200 inputs
  records.jsonl    one line per input done: {"source", "kept", "dropped": [reasons]}
  samples.jsonl    one line per kept hand (below)
  crops/NNNNNNN.jpg  the hand's context crop: CONTEXT_SIZE px square, CONTEXT_SCALE times the
                   network crop (`backend.crop.square_crop` of the landmarks' box grown 10 %,
                   training/data/common.py), so training can jitter the crop and re-crop it.
Each samples.jsonl line: id (int, the crop's number), source (relative path, or "VIDEO#frame"),
split ("train" / "test": "test" when the source matches a --holdout glob), side ("right" /
"left", the hand's own side), score, rms_px (in the working image), rms_rel, disagree_mm,
anatomy, weight_2d, weight_3d; in the context crop's pixels (centres at j + 0.5): keypoints2d
(21, 2) MediaPipe's landmarks, K (3, 3); in metres, camera frame (OpenCV axes): keypoints3d
(21, 3) the fitted joints, world (21, 3) MediaPipe's world landmarks (its own origin); pose
(16, 3) axis-angle of the side's own model, betas (10), transl (3); context (cx, cy, side) in the
working image, upsample (factor), pad (pixels added on each side).
The reader is `training/data/teacher_folder.py` (`teacher-folder:DIR` in configs).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FORMAT = "hamr.teacher/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MIN_SIDE = 300  # px: smaller photos are upsampled by an integer factor to at least this
PAD = 0.25  # black border added on each side (fraction of the longer side) for the second look
CONTEXT_SCALE = 1.5  # context crop side / network crop side
CONTEXT_SIZE = 384  # px of the stored context crop (the network crop at 256 px inside it)
MIN_BOX = 32.0
MIN_SCORE = 0.6
MAX_RMS_REL = 0.08
MAX_DISAGREE_MM = 25.0
MAX_ANATOMY = 0.6
MAX_OVERLAP_IOU = 0.3
RMS_SCALE = 0.04
DISAGREE_SCALE_MM = 15.0
DROP_REASONS = (
    "unreadable", "no_hand", "too_small", "cut_by_border", "low_score", "fit_residual",
    "teacher_disagree", "anatomy", "overlap",
)  # fmt: skip
THRESHOLDS = {
    "min_side": MIN_SIDE, "pad": PAD, "context_scale": CONTEXT_SCALE,
    "context_size": CONTEXT_SIZE, "min_box": MIN_BOX, "min_score": MIN_SCORE,
    "max_rms_rel": MAX_RMS_REL, "max_disagree_mm": MAX_DISAGREE_MM, "max_anatomy": MAX_ANATOMY,
    "max_overlap_iou": MAX_OVERLAP_IOU, "rms_scale": RMS_SCALE,
    "disagree_scale_mm": DISAGREE_SCALE_MM,
}  # fmt: skip


def list_inputs(src: Path, every: int = 1) -> Iterator[tuple[str, object]]:
    """(source id, path or frame) in a fixed order: a folder's photos by relative path, or every
    `every`-th frame of a video ("NAME#FRAME")."""
    if src.is_dir():
        files = sorted(
            p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        for p in files:
            yield p.relative_to(src).as_posix(), p
    elif src.suffix.lower() in VIDEO_SUFFIXES:
        from backend.media.video import read_frames

        for i, frame in enumerate(read_frames(src)):
            if i % every == 0:
                yield f"{src.name}#{i:06d}", frame
    elif src.suffix.lower() in IMAGE_SUFFIXES:
        yield src.name, src
    else:
        raise ValueError(f"{src}: not a folder, a photo or a video ({', '.join(VIDEO_SUFFIXES)})")


def count_inputs(src: Path) -> int | None:
    if src.is_dir():
        return sum(1 for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return None


def pa_mpjpe_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance (mm) of (21, 3) points a to b after a similarity alignment of a to b."""
    import torch

    from .metrics import pa_error

    return float(pa_error(torch.as_tensor(a)[None], torch.as_tensor(b)[None])[0]) * 1000


def _upsample(image: np.ndarray) -> tuple[np.ndarray, int]:
    from PIL import Image

    longer = max(image.shape[:2])
    factor = max(1, math.ceil(MIN_SIDE / longer))
    if factor == 1:
        return image, 1
    h, w = image.shape[:2]
    big = Image.fromarray(image).resize((w * factor, h * factor), Image.BICUBIC)
    return np.asarray(big), factor


def _pad(image: np.ndarray) -> tuple[np.ndarray, int]:
    pad = int(round(PAD * max(image.shape[:2])))
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0))), pad


class Teacher:
    """MediaPipe + the network fused with it (the backend's public API), one photo at a time."""

    def __init__(self, checkpoint: str | None = None, max_hands: int = 2) -> None:
        from backend.pipeline.photo import Predictor

        self.predictor = Predictor(checkpoint, refine="auto")
        self.max_hands = max_hands

    def label(self, image: np.ndarray) -> tuple[list[dict], list[str]]:
        """(H, W, 3) uint8 RGB -> (kept hands as sample dicts without id/source/split, the drop
        reasons of the others, or ["no_hand"])."""
        from backend.detect import mediapipe_hands

        work, factor = _upsample(image)
        pad = 0
        found = mediapipe_hands.detect(work, max_hands=self.max_hands)
        if not found:
            padded, pad_px = _pad(work)
            found = mediapipe_hands.detect(padded, max_hands=self.max_hands)
            if found:
                work, pad = padded, pad_px
        if not found:
            return [], ["no_hand"]
        kept, dropped = [], []
        for i, det in enumerate(found):
            reason = self._early_reason(det, found, i, work.shape, pad)
            if reason:
                dropped.append(reason)
                continue
            sample, reason = self._fit(work, det, found)
            if reason:
                dropped.append(reason)
                continue
            sample.update(upsample=factor, pad=pad)
            kept.append(sample)
        return kept, dropped

    @staticmethod
    def _early_reason(det: dict, found: list, i: int, shape, pad: int) -> str | None:
        from backend.crop import iou

        box = np.asarray(det["box_xyxy"], np.float64)
        if max(box[2] - box[0], box[3] - box[1]) < MIN_BOX:
            return "too_small"
        kp = np.asarray(det["keypoints2d"], np.float64)
        h, w = shape[:2]
        inside = (kp[:, 0] >= pad) & (kp[:, 0] <= w - pad) & (kp[:, 1] >= pad)
        inside &= kp[:, 1] <= h - pad
        if not inside.all():
            return "cut_by_border"
        if det["score"] < MIN_SCORE:
            return "low_score"
        others = [d for k, d in enumerate(found) if k != i]
        if any(iou(det["box_xyxy"], d["box_xyxy"]) > MAX_OVERLAP_IOU for d in others):
            return "overlap"
        return None

    def _fit(self, work: np.ndarray, det: dict, found: list) -> tuple[dict, str | None]:
        import torch

        from backend.crop import crop_image, crop_intrinsics, points_to_crop, square_crop
        from backend.hand_model.anatomy import geometric_loss
        from backend.options import HandRequest

        from .data.common import keypoint_box

        landmarks = np.asarray(det["keypoints2d"], np.float64)
        world = np.asarray(det["keypoints3d_world"], np.float64)
        req = HandRequest(tuple(det["box_xyxy"]), det["side"], det["score"], landmarks, world)
        hands, _ = self.predictor.predict_hands(work, [req], found=found, refine=True)
        hand = hands[0]
        if hand.fit is None:
            return {}, "fit_residual"
        box = keypoint_box(landmarks, np.ones(21))
        side_px = float(max(box[2] - box[0], box[3] - box[1]))
        rms = float(hand.fit["rms_px_after"])
        rms_rel = rms / side_px
        joints = np.asarray(hand.joints3d_cam, np.float64)
        disagree = pa_mpjpe_mm(joints, world)
        anatomy = float(geometric_loss(torch.as_tensor(joints)[None], hand.side))
        if rms_rel > MAX_RMS_REL:
            return {}, "fit_residual"
        if disagree > MAX_DISAGREE_MM:
            return {}, "teacher_disagree"
        if anatomy > MAX_ANATOMY:
            return {}, "anatomy"
        crop = square_crop(torch.as_tensor(box))
        context = torch.cat([crop[:2], crop[2:] * CONTEXT_SCALE])
        rgb = crop_image(work, tuple(float(c) for c in context), CONTEXT_SIZE)
        K = crop_intrinsics(
            torch.tensor(hand.camera["K"], dtype=torch.float64), context, CONTEXT_SIZE
        )
        kp_ctx = points_to_crop(
            torch.as_tensor(landmarks, dtype=torch.float64), context, CONTEXT_SIZE
        )
        weight_2d = float(det["score"]) * math.exp(-((rms_rel / RMS_SCALE) ** 2))
        weight_3d = weight_2d * math.exp(-((disagree / DISAGREE_SCALE_MM) ** 2))

        def r(a, nd=5):
            return np.round(np.asarray(a, np.float64), nd).tolist()

        sample = {
            "side": hand.side,
            "score": round(float(det["score"]), 4),
            "rms_px": round(rms, 3),
            "rms_rel": round(rms_rel, 5),
            "disagree_mm": round(disagree, 3),
            "anatomy": round(anatomy, 5),
            "weight_2d": round(weight_2d, 4),
            "weight_3d": round(weight_3d, 4),
            "keypoints2d": r(kp_ctx, 3),
            "K": r(K, 4),
            "keypoints3d": r(joints, 6),
            "world": r(world, 6),
            "pose": r(hand.pose_axis_angle, 6),
            "betas": r(hand.betas, 6),
            "transl": r(hand.transl, 6),
            "context": r(context, 3),
            "_rgb": rgb,
        }
        return sample, None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: that input is redone
                break
    return out


def _load_image(item) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    from .data.common import load_rgb

    return load_rgb(item)


def label_source(
    src: Path,
    out: Path,
    holdout: list[str] | None = None,
    every: int = 1,
    limit: int | None = None,
    max_hands: int = 2,
    checkpoint: str | None = None,
    progress: bool = True,
) -> dict:
    """Label SRC into OUT (module docstring); returns meta.json's dict."""
    from PIL import Image

    holdout = list(holdout or [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "crops").mkdir(exist_ok=True)
    records = _read_jsonl(out / "records.jsonl")
    done = {r["source"] for r in records}
    samples = [s for s in _read_jsonl(out / "samples.jsonl") if s["source"] in done]
    # rewrite both files so that a cut line or an unrecorded input's samples disappear
    with (out / "records.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    next_id = max((s["id"] for s in samples), default=-1) + 1
    counts = Counter()
    for r in records:
        counts.update(r["dropped"])
    kept_splits = Counter(s["split"] for s in samples)
    teacher = Teacher(checkpoint, max_hands)
    total = count_inputs(src)
    if limit is not None and total is not None:
        total = min(total, limit)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="photo", dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    meta = {}

    def write_meta(final: bool) -> dict:
        meta.update(
            format=FORMAT,
            source=str(src),
            holdout=holdout,
            every=every,
            max_hands=max_hands,
            checkpoint=str(teacher.predictor.checkpoint),
            thresholds=THRESHOLDS,
            inputs=len(records),
            kept=sum(kept_splits.values()),
            kept_by_split=dict(kept_splits),
            dropped={k: counts.get(k, 0) for k in DROP_REASONS},
            complete=final,
        )
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return meta

    with (out / "records.jsonl").open("a") as rec_f, (out / "samples.jsonl").open("a") as smp_f:
        for n, (source, item) in enumerate(list_inputs(src, every)):
            if limit is not None and n >= limit:
                break
            if bar is not None:
                bar.update(1)
            if source in done:
                continue
            try:
                image = _load_image(item)
            except OSError:
                kept, dropped = [], ["unreadable"]
            else:
                kept, dropped = teacher.label(image)
            split = "test" if any(fnmatch.fnmatch(source, g) for g in holdout) else "train"
            for s in kept:
                rgb = s.pop("_rgb")
                Image.fromarray(rgb).save(out / "crops" / f"{next_id:07d}.jpg", quality=92)
                line = {"id": next_id, "source": source, "split": split, **s}
                smp_f.write(json.dumps(line) + "\n")
                next_id += 1
                kept_splits[split] += 1
            smp_f.flush()
            rec_f.write(json.dumps({"source": source, "kept": len(kept), "dropped": dropped}))
            rec_f.write("\n")
            rec_f.flush()
            records.append({"source": source})
            counts.update(dropped)
            if bar is not None:
                bar.set_postfix(kept=sum(kept_splits.values()), dropped=sum(counts.values()))
            if len(records) % 200 == 0:
                write_meta(False)
    if bar is not None:
        bar.close()
    meta = write_meta(True)
    meta["wall_s_this_run"] = round(time.perf_counter() - t0, 1)
    return meta


def preview_grid(folder: Path, path: Path, count: int = 48, columns: int = 8) -> Path:
    """A grid of labelled crops (the network crop, no jitter) spread evenly over the folder's
    samples, each with its landmarks' skeleton, side and weights."""
    from PIL import Image, ImageDraw

    from backend.hand_model.constants import KEYPOINT_PARENTS

    from .data.teacher_folder import TeacherFolder

    data = TeacherFolder(folder, split=None)
    n = len(data)
    if n == 0:
        raise ValueError(f"{folder}: no samples to preview")
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))})
    tile = 192
    rows = math.ceil(len(picks) / columns)
    grid = Image.new("RGB", (columns * tile, rows * tile), "white")
    for k, i in enumerate(picks):
        item = data[i]
        rgb = (item["image"].permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(rgb).resize((tile, tile))
        d = ImageDraw.Draw(im)
        kp = item["keypoints2d"].numpy() * tile / rgb.shape[0]
        for j, p in enumerate(KEYPOINT_PARENTS):
            if p >= 0:
                d.line([tuple(kp[p]), tuple(kp[j])], fill=(0, 255, 0), width=2)
        rec = data.records[i]
        label = f"{rec['side'][0]} w2={rec['weight_2d']:.2f} w3={rec['weight_3d']:.2f}"
        d.text((3, 3), label, fill=(255, 255, 0))
        grid.paste(im, ((k % columns) * tile, (k // columns) * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a folder of photos (recursive), a photo or a video")
    ap.add_argument("--out", type=Path, required=True, help="the dataset folder (resumable)")
    ap.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="GLOB",
        help="sources matching this glob (relative path) go to the test split",
    )
    ap.add_argument("--every", type=int, default=1, help="video: every N-th frame")
    ap.add_argument("--limit", type=int, default=None, help="only the first N inputs")
    ap.add_argument("--max-hands", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="the network (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--preview", type=Path, default=None, help="write a grid of labelled crops")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if not args.src.exists():
        print(f"error: {args.src} does not exist", file=sys.stderr)
        return 2
    try:
        meta = label_source(
            args.src,
            args.out,
            args.holdout,
            args.every,
            args.limit,
            args.max_hands,
            args.checkpoint,
            progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.preview:
        preview_grid(args.out, args.preview)
        meta["preview"] = str(args.preview)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
