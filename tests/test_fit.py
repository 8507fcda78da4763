"""The fit of a predicted hand to 2D landmarks (backend.fit) and its use in `Predictor.predict`.

References: landmarks made by projecting a known hand (the hand model in a named pose, a known
camera), so the truth the fit should move towards is known; the pinhole projection identity of
the prediction JSON; MediaPipe's own detections on a real photo.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SAMPLES, check_camera_identity

from backend import detect_mediapipe
from backend.fit import fit_to_landmarks
from backend.hand_model.model import HandModel
from backend.hand_model.poses import named_pose
from backend.inference import HandRequest, InputError, Predictor
from backend.render import project_points

K = np.array([[600.0, 0, 320], [0, 600.0, 240], [0, 0, 1]])
WILD = SAMPLES / "wild_hamer" / "test5.jpg"


def _rotation(axis, degrees) -> torch.Tensor:
    axis = torch.tensor(axis, dtype=torch.float32)
    return axis / axis.norm() * math.radians(degrees)


@pytest.fixture(scope="module")
def right() -> HandModel:
    return HandModel("right")


def _truth(model: HandModel, pose_name: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(pose, translation, 2D landmarks) of a hand half a metre in front of the camera."""
    pose = named_pose(pose_name, model.rest_joints()[0], "right").clone()
    pose[0] = _rotation([1.0, 0.3, 0.2], 150)  # palm towards the camera, fingers up
    transl = torch.tensor([0.02, -0.01, 0.5])
    joints = model(pose[None], None, transl[None]).keypoints[0]
    return pose, transl, project_points(joints, torch.tensor(K, dtype=torch.float32)).numpy()


def _pa_error(a: torch.Tensor, b: torch.Tensor) -> float:
    from training.metrics import pa_error

    return float(pa_error(a[None], b[None])[0])


@pytest.mark.parametrize("pose_name", ["relaxed", "point", "grasp"])
def test_fit_moves_a_wrong_hand_onto_the_landmarks_and_towards_the_truth(right, pose_name):
    pose, transl, landmarks = _truth(right, pose_name)
    start = pose.clone()
    start[1:] = start[1:] * 0.3 + 0.15  # fingers off in every joint, by up to ~50 degrees
    start[0] = pose[0] + _rotation([0.0, 1.0, 0.0], 20)  # and the hand turned by 20 degrees
    betas = torch.zeros(10)
    box = landmarks.max(0) - landmarks.min(0)
    fitted = fit_to_landmarks(right, "right", start, betas, transl, K, landmarks, float(box.max()))
    assert fitted["rms_px_after"] < 0.25 * fitted["rms_px_before"], fitted
    # the keypoints2d it returns are its joints projected
    projected = project_points(fitted["joints"], torch.tensor(K).float())
    np.testing.assert_allclose(fitted["keypoints2d"].numpy(), projected.numpy(), atol=1e-4)
    truth = right(pose[None], None, transl[None]).keypoints[0]
    before = right(start[None], betas[None], transl[None]).keypoints[0]
    # 2D landmarks leave the depth of each joint open, and the prior holds the fingers near the
    # start: the 3D error shrinks, but far less than the 2D one (measured: 0.77, 0.95, 0.97)
    assert _pa_error(fitted["joints"], truth) < _pa_error(before, truth)


def test_fit_at_the_truth_stays_there(right):
    pose, transl, landmarks = _truth(right, "relaxed")
    fitted = fit_to_landmarks(right, "right", pose, torch.zeros(10), transl, K, landmarks, 100.0)
    assert fitted["rms_px_before"] < 1e-3 and fitted["rms_px_after"] < 0.5
    assert (fitted["pose"] - pose).abs().max() < 0.02


def test_fit_refuses_bad_landmarks(right):
    pose, transl, landmarks = _truth(right, "relaxed")
    with pytest.raises(ValueError, match="21 finite"):
        fit_to_landmarks(right, "right", pose, torch.zeros(10), transl, K, landmarks[:20], 100.0)
    bad = landmarks.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="21 finite"):
        fit_to_landmarks(right, "right", pose, torch.zeros(10), transl, K, bad, 100.0)
    with pytest.raises(ValueError, match="box_side"):
        fit_to_landmarks(right, "right", pose, torch.zeros(10), transl, K, landmarks, 0.0)


@pytest.mark.skipif(not detect_mediapipe.available(), reason="needs mediapipe")
def test_predict_refines_on_mediapipe_landmarks(checkpoint):
    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    from PIL import Image

    image = np.asarray(Image.open(WILD).convert("RGB"))
    found = detect_mediapipe.detect(image)
    plain = Predictor(checkpoint, refine="off").predict(image)
    refined = Predictor(checkpoint).predict(image)
    assert [h["fit"] for h in plain["hands"]] == [None, None]
    for hand, raw, det in zip(refined["hands"], plain["hands"], found, strict=True):
        check_camera_identity(hand)
        fit = hand["fit"]
        assert fit["landmarks"] == "mediapipe" and fit["rms_px_after"] < fit["rms_px_before"]
        errors = {
            name: float(np.sqrt(((np.asarray(h["keypoints2d"]) - det["keypoints2d"]) ** 2)
                                .sum(-1).mean()))
            for name, h in (("raw", raw), ("refined", hand))
        }  # fmt: skip
        assert errors["refined"] == pytest.approx(fit["rms_px_after"], abs=0.05)
        assert errors["raw"] == pytest.approx(fit["rms_px_before"], abs=0.05)
        assert hand["box_xyxy"] == raw["box_xyxy"] and hand["side"] == raw["side"]
    # a user's box gets the landmarks of the MediaPipe hand it overlaps
    box = HandRequest(tuple(found[0]["box_xyxy"]), "auto")
    boxed = Predictor(checkpoint).predict(image, [box])
    assert boxed["detector"] is None and boxed["hands"][0]["fit"] is not None
    # where MediaPipe finds nothing there is nothing to fit
    grey = np.full((200, 200, 3), 128, np.uint8)
    lone = Predictor(checkpoint).predict(grey, [HandRequest((50, 50, 150, 150), "right")])
    assert lone["hands"][0]["fit"] is None
    with pytest.raises(InputError, match="refine must be"):
        Predictor(checkpoint, refine="always")
