"""Measure how `hamr video` keeps a crop on a hand that only the network sees:
`python -m tools.eval_tracking`.

With no MediaPipe landmarks for a hand (MediaPipe not installed, or missing the hand, refine
off, the user's own boxes), each track's next crop comes from the network's own prediction, and
a poor prediction fed back as the next crop can shrink, grow or walk it off the hand. This runs
`process_video` with the network alone (detector "network", refine off, the first frame's box
given from the annotations) under each `video.PLACEMENTS` mode, on two kinds of clip made from
every annotated photo in ../shared/samples (FreiHAND's 224-pixel ones aside), with the true
keypoints known in every frame:

- pan: the camera pans across the photo (`eval_refine.pan_clip`), everything moves together;
- move: the hand's patch (its keypoint box, grown by half) moves over the blurred, still photo
  on a curve and grows by `--grow` over the clip, as a hand coming towards the camera;
- cutout: the same motion, but only the hand moves (the photo's pixels under a hand-shaped mask
  drawn from the true keypoints: thick bones and the palm), over another sample photo, sharp,
  still and upside down, as a hand waving in front of a bookshelf: most corners in the hand's
  box are the still background's.

Per frame: the share of the visible true keypoints inside the frame's crop (the hand is kept
when that is at least KEPT_SHARE) and the 2D error of the kept hand's keypoints in sides of the
true keypoint box. Prints one JSON object; CPU, the shipped checkpoint unless --checkpoint.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from backend.media.video import probe_video
from backend.pipeline.photo import Predictor
from backend.pipeline.video import VideoOptions, process_video
from backend.track.tracker import PLACEMENTS, keypoint_box
from tools.eval_refine import clip_hands, pan_clip, rounded

KEPT_SHARE = 0.8  # a frame keeps the hand when its crop holds this share of the true keypoints
CLIPS = ("pan", "move", "cutout")


def hand_mask(shape, uv: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: a hand-shaped mask drawn from 2D keypoints (project order),
    the visible bones as lines a tenth of the hand's size thick and the palm (wrist and the
    five MCPs) filled, its edge softened over a few pixels."""
    from backend.hand_model.constants import KEYPOINT_PARENTS

    mask = np.zeros(shape[:2], np.uint8)
    size = float((uv[vis].max(0) - uv[vis].min(0)).max())
    width = max(3, int(round(size / 10)))
    for child, parent in enumerate(KEYPOINT_PARENTS):
        if parent >= 0 and vis[child] and vis[parent]:
            a, b = (tuple(int(round(v)) for v in uv[i]) for i in (parent, child))
            cv2.line(mask, a, b, 255, width, cv2.LINE_AA)
    palm = [i for i in (0, 1, 5, 9, 13, 17) if vis[i]]
    if len(palm) >= 3:
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(uv[palm]).astype(np.int32)), 255)
    soft = cv2.GaussianBlur(mask, (0, 0), max(1.0, width / 6))
    return soft.astype(np.float32) / 255


def move_clip(
    photo: np.ndarray, uv: np.ndarray, vis: np.ndarray, path, frames: int, grow: float,
    cutout: np.ndarray | None = None,
):  # fmt: skip
    """Write a clip of the hand's patch moving over the blurred photo (cutout: a second photo;
    then only the hand moves, under `hand_mask`, over that photo upside down, sharp and scaled
    to cover the frame); returns the true keypoints (frames, 21, 2) of every frame."""
    h, w = photo.shape[:2]
    lo, hi = uv[vis].min(0), uv[vis].max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() * 0.75
    x0, y0 = np.maximum(centre - half, 0).astype(int)
    x1, y1 = np.minimum(centre + half, (w, h)).astype(int)
    patch = photo[y0:y1, x0:x1]
    if cutout is not None:
        alpha = hand_mask(photo.shape, uv, vis)[y0:y1, x0:x1]
        f = max(w / cutout.shape[1], h / cutout.shape[0])
        cover = cv2.resize(cutout[::-1, ::-1], None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        background = np.ascontiguousarray(cover[:h, :w])
    else:
        background = cv2.GaussianBlur(photo, (0, 0), max(2.0, min(w, h) / 60))
    size = (w & ~1, h & ~1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    # the patch at its largest fills at most 60 % of the frame's width and height
    base = min(1.0, 0.6 * min(size[0] / patch.shape[1], size[1] / patch.shape[0]) / grow)
    truth = []
    for i in range(frames):
        t = i / max(1, frames - 1)
        scale = base * (1.0 + (grow - 1.0) * t)
        pw, ph = int(round(patch.shape[1] * scale)), int(round(patch.shape[0] * scale))
        # a curve across the middle of the frame: right, then down a little
        room = np.array([size[0] - pw, size[1] - ph], dtype=float)
        ox = room[0] * (0.2 + 0.6 * t)
        oy = room[1] * (0.5 + 0.3 * np.sin(np.pi * t))
        ox, oy = int(np.clip(ox, 0, room[0])), int(np.clip(oy, 0, room[1]))
        frame = background[: size[1], : size[0]].copy()
        moved = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA)
        if cutout is not None:
            a = cv2.resize(alpha, (pw, ph), interpolation=cv2.INTER_AREA)[..., None]
            under = frame[oy : oy + ph, ox : ox + pw].astype(np.float32)
            moved = np.round(a * moved + (1 - a) * under).astype(np.uint8)
        frame[oy : oy + ph, ox : ox + pw] = moved
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        truth.append((uv - (x0, y0)) * (pw / patch.shape[1], ph / patch.shape[0]) + (ox, oy))
    writer.release()
    return np.array(truth)


def score(result: dict, truth: np.ndarray, vis: np.ndarray) -> dict:
    """Per frame: the hand whose crop holds most of the true keypoints; its share and error."""
    kept, errors = [], []
    for frame, uv in zip(result["frames"], truth, strict=True):
        side = float(max(uv[vis].max(0) - uv[vis].min(0)))
        best_share, best_err = 0.0, np.nan
        for hand in frame["hands"]:
            x0, y0, x1, y1 = hand["box_xyxy"]
            x, y = uv[vis, 0], uv[vis, 1]
            share = float(((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).mean())
            if share > best_share:
                err = np.linalg.norm(np.asarray(hand["keypoints2d"])[vis] - uv[vis], axis=1)
                best_share, best_err = share, float(err.mean() / side)
        kept.append(best_share >= KEPT_SHARE)
        errors.append(best_err if best_share >= KEPT_SHARE else np.nan)
    return {"kept": float(np.mean(kept)), "kept_last": float(kept[-1]), "errors": errors}


def run(predictor: Predictor, frames: int, grow: float, placements=PLACEMENTS) -> dict:
    from training.data.samples import DEFAULT_SAMPLES_ROOT

    if not DEFAULT_SAMPLES_ROOT.is_dir():
        return {"skipped": f"no sample photos at {DEFAULT_SAMPLES_ROOT}"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hands = list(clip_hands())
        for n, (name, k, hand, image, vis) in enumerate(hands):
            for kind in CLIPS:
                path = Path(tmp) / f"{name}_{k}_{kind}.mp4"
                if kind == "pan":
                    shift, top = pan_clip(image, path, frames)
                    truth = np.array([hand.uv - (shift * i, top) for i in range(frames)])
                else:
                    cutout = None
                    if kind == "cutout":  # over the next photo that is not this one
                        cutout = next(h[3] for h in hands[n + 1 :] + hands if h[3] is not image)
                    truth = move_clip(image, hand.uv, vis, path, frames, grow, cutout)
                info = probe_video(path)
                box = keypoint_box(truth[0][vis], info.width, info.height)
                for placement in placements:
                    t0 = time.perf_counter()
                    result = process_video(
                        predictor,
                        path,
                        VideoOptions(
                            boxes=[box],
                            detector="hamr",
                            refine=False,
                            min_score=0.0,
                            placement=placement,
                        ),
                    )
                    seconds = (time.perf_counter() - t0) / frames
                    s = score(result, truth, vis)
                    rows.append(
                        {
                            "set": name, "hand": k, "clip": kind, "placement": placement,
                            "kept": s["kept"], "kept_last": s["kept_last"],
                            "err": float(np.nanmean(s["errors"])) if s["kept"] else np.nan,
                            "s_per_frame": seconds,
                        }
                    )  # fmt: skip
    out: dict = {"frames_per_clip": frames, "grow": grow, "kept_share": KEPT_SHARE}
    for kind in CLIPS:
        out[kind] = {}
        for placement in placements:
            sel = [r for r in rows if r["clip"] == kind and r["placement"] == placement]
            out[kind][placement] = {
                "clips": len(sel),
                "frames_kept": round(float(np.mean([r["kept"] for r in sel])), 3),
                "last_frame_kept": round(float(np.mean([r["kept_last"] for r in sel])), 3),
                "err_kept_frames": round(float(np.nanmean([r["err"] for r in sel])), 3),
                "s_per_frame": round(float(np.median([r["s_per_frame"] for r in sel])), 3),
            }
    out["per_clip"] = rounded(rows)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--frames", type=int, default=16, help="frames of each clip")
    ap.add_argument("--grow", type=float, default=1.4, help="the moving hand's growth")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--placement", action="append", choices=PLACEMENTS, help="only these (default: all)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor(args.checkpoint)
    placements = tuple(args.placement or PLACEMENTS)
    result = {
        "checkpoint": predictor.checkpoint.name,
        **run(predictor, args.frames, args.grow, placements),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
