"""Cost of finding hands with MediaPipe, of refining a hand on its landmarks, and of moving a
video track's box with the image. Prints JSON.

    python -m benchmarks.refine [--repeats 5] [--threads N]

On the bundled photo (backend/assets/samples/synthetic_hand.jpg) and its hand box, with the
shipped checkpoint on the CPU:
- baseline: `Predictor.predict` of that box with refining off (crop, network, camera);
- mediapipe: `mediapipe_hands.detect` on the photo as a photo is (with its closer look at each
  hand), and on the whole frame only, as a video frame is (when mediapipe is installed);
- fusion: `Predictor.refine_hand` of the baseline's hand (`backend.fuse.fusion`), on landmarks
  made by projecting the hand model in a known pose through the photo's camera and world
  landmarks its centred keypoints (so the fusion always has a full set of 21);
- track fusion: `fusion.fuse_hands` of a video track of --track-frames frames in one batch with
  one fixed shape (the baseline's hand drifting sideways 2 mm a frame, landmarks as above), the
  way `hamr video` fuses; reported per frame, with its ratio to the photo fusion of one hand;
- motion: `motion.median_flow` of the hand box from the photo to the photo shifted by
  (6, -4) px (how `hamr video` moves a track only the network placed), and `template_shift`
  alone (its fallback for a jump too far for the flow).
Medians over --repeats after warm-up, and each one's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import cv2
import numpy as np
import torch

from backend.camera import project_points
from backend.detect import mediapipe_hands
from backend.fuse.fusion import fuse_hands
from backend.hand_model.poses import named_pose
from backend.media.image import load_image
from backend.options import HandRequest
from backend.pipeline.photo import Predictor
from backend.schema import Hand
from backend.track.motion import median_flow, template_shift, to_gray

from .timing import median_ms

PHOTO = Path(__file__).resolve().parents[1] / "backend/assets/samples/synthetic_hand.jpg"
BOX = (170.0, 106.0, 396.0, 353.0)  # the Makefile's demo box


def run(repeats: int, track_frames: int = 64) -> dict:
    predictor = Predictor(refine="off")
    image, _ = load_image(PHOTO)
    request = [HandRequest(BOX, "right")]
    hand = predictor.predict(image, request)["hands"][0]
    model = predictor.hands["right"]
    pose = named_pose("grasp", model.rest_joints()[0], "right")
    pose[0] = torch.tensor(hand["pose_axis_angle"][0])
    joints = model(pose[None], None, torch.tensor(hand["transl"])[None]).keypoints[0]
    K = torch.tensor(hand["camera"]["K"], dtype=torch.float32)
    landmarks = project_points(joints, K).detach().numpy()

    baseline = median_ms(lambda: predictor.predict(image, request), repeats)
    world = (joints - joints.mean(0)).detach().numpy()

    def fuse_photo() -> None:
        predictor.refine_hand(Hand.from_json(copy.deepcopy(hand)), landmarks, world)

    fit = median_ms(fuse_photo, repeats)
    drift = torch.zeros(track_frames, 3)
    drift[:, 0] = 0.002 * torch.arange(track_frames)
    track_t = torch.tensor(hand["transl"])[None] + drift
    track_joints = model(pose.expand(track_frames, -1, -1), None, track_t).keypoints
    track_landmarks = list(project_points(track_joints, K).detach().numpy())
    track_world = (track_joints - track_joints.mean(1, keepdim=True)).detach().numpy()
    n = track_frames
    box_side = max(BOX[2] - BOX[0], BOX[3] - BOX[1])

    def track_fit() -> None:
        fuse_hands(
            model, "right", K.numpy(), np.stack(track_landmarks), track_world,
            np.array([hand["pose_axis_angle"]] * n), np.array([hand["betas"]] * n),
            track_t.numpy(), np.array([hand["keypoints2d"]] * n), np.full(n, hand["score"]),
            np.full(n, box_side), betas=np.array(hand["betas"]),
        )  # fmt: skip

    track = median_ms(track_fit, max(1, repeats // 2), warmup=1) / track_frames
    gray = to_gray(image)
    shifted = cv2.warpAffine(gray, np.float32([[1, 0, 6], [0, 1, -4]]), gray.shape[::-1])
    flow = median_ms(lambda: median_flow(gray, shifted, BOX), repeats)
    template = median_ms(lambda: template_shift(gray, shifted, BOX), repeats)
    out = {
        "benchmark": "hamr_refine",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "repeats": repeats,
        "photo": f"{PHOTO.name} {image.shape[1]}x{image.shape[0]}",
        "baseline_predict_ms": round(baseline, 1),
        "fusion_ms": round(fit, 1),
        "fusion_over_baseline": round(fit / baseline, 2),
        "track_frames": track_frames,
        "track_fusion_ms_per_frame": round(track, 2),
        "track_fusion_per_frame_over_fusion": round(track / fit, 3),
        "motion_ms": round(flow, 2),
        "motion_over_baseline": round(flow / baseline, 3),
        "template_shift_ms": round(template, 2),
    }
    if mediapipe_hands.available():
        detect = median_ms(lambda: mediapipe_hands.detect(image), repeats)
        frame = median_ms(lambda: mediapipe_hands.detect(image, tiles=False, closer=False), repeats)
        out.update(
            mediapipe_detect_ms=round(detect, 1),
            mediapipe_over_baseline=round(detect / baseline, 2),
            mediapipe_frame_ms=round(frame, 1),
            mediapipe_hands_found=len(mediapipe_hands.detect(image)),
        )
    else:
        out["mediapipe"] = "not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--track-frames", type=int, default=64, help="frames of the track fit")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run(args.repeats, args.track_frames), indent=1))


if __name__ == "__main__":
    main()
