"""Cost of finding hands with MediaPipe and of refining a hand on its landmarks. Prints JSON.

    python -m benchmarks.refine [--repeats 5] [--threads N]

On the bundled photo (backend/assets/samples/synthetic_hand.jpg) and its hand box, with the
shipped checkpoint on the CPU:
- baseline: `Predictor.predict` of that box with refining off (crop, network, camera);
- mediapipe: `detect_mediapipe.detect` on the whole photo (when mediapipe is installed);
- fit: `Predictor.refine_hand` of the baseline's hand, on landmarks made by projecting the hand
  model in a known pose through the photo's camera (so the fit always has a full set of 21).
Medians over --repeats after warm-up, and each one's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from backend import detect_mediapipe
from backend.hand_model.poses import named_pose
from backend.inference import HandRequest, Predictor, load_image
from backend.render import project_points

from .timing import median_ms

PHOTO = Path(__file__).resolve().parents[1] / "backend/assets/samples/synthetic_hand.jpg"
BOX = (170.0, 106.0, 396.0, 353.0)  # the Makefile's demo box


def run(repeats: int) -> dict:
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
    fit = median_ms(lambda: predictor.refine_hand(copy.deepcopy(hand), landmarks), repeats)
    out = {
        "benchmark": "hamr_refine",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "repeats": repeats,
        "photo": f"{PHOTO.name} {image.shape[1]}x{image.shape[0]}",
        "baseline_predict_ms": round(baseline, 1),
        "fit_ms": round(fit, 1),
        "fit_over_baseline": round(fit / baseline, 2),
    }
    if detect_mediapipe.available():
        detect = median_ms(lambda: detect_mediapipe.detect(image), repeats)
        out.update(
            mediapipe_detect_ms=round(detect, 1),
            mediapipe_over_baseline=round(detect / baseline, 2),
            mediapipe_hands_found=len(detect_mediapipe.detect(image)),
        )
    else:
        out["mediapipe"] = "not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run(args.repeats), indent=1))


if __name__ == "__main__":
    main()
