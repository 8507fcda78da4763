"""The fit of a predicted hand to 2D landmarks (backend.fuse.landmark_fit) and its use in
`Predictor.predict`.

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

from backend.camera import project_points
from backend.detect import mediapipe_hands
from backend.errors import OptionError
from backend.fuse.landmark_fit import FitSettings, fit_to_landmarks, fit_track
from backend.hand_model.model import HandModel
from backend.hand_model.poses import named_pose
from backend.options import HandRequest
from backend.pipeline.photo import Predictor

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


def _moving_track(model: HandModel, frames: int = 12, noise_px: float = 3.0):
    """A hand closing from relaxed to a point while it drifts sideways: truth poses (N, 16, 3),
    translations (N, 3), noise-free 2D keypoints (N, 21, 2) and noisy landmarks (N, 21, 2)."""
    poses, transls, clean = [], [], []
    a, b = (named_pose(n, model.rest_joints()[0], "right") for n in ("relaxed", "point"))
    for f in range(frames):
        w = f / (frames - 1)
        pose = (1 - w) * a + w * b
        pose[0] = _rotation([1.0, 0.3, 0.2], 150)
        transl = torch.tensor([0.02 + 0.004 * f, -0.01, 0.5])
        joints = model(pose[None], None, transl[None]).keypoints[0]
        poses.append(pose)
        transls.append(transl)
        clean.append(project_points(joints, torch.tensor(K, dtype=torch.float32)).numpy())
    clean = np.stack(clean)
    noisy = clean + np.random.default_rng(0).normal(0, noise_px, clean.shape)
    return torch.stack(poses), torch.stack(transls), clean, noisy


def _track_start(poses: torch.Tensor) -> torch.Tensor:
    start = poses.clone()
    start[:, 1:] = start[:, 1:] * 0.6 + 0.1  # every finger joint off
    start[:, 0] = poses[:, 0] + _rotation([0.0, 1.0, 0.0], 10)
    return start


def _px(a, b) -> np.ndarray:
    """(N,) RMS distance between two (N, 21, 2) keypoint sets."""
    return np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).sum(-1).mean(-1))


def test_fit_track_fits_every_frame_and_bridges_frames_without_landmarks(right):
    poses, transl, clean, noisy = _moving_track(right)
    start = _track_start(poses)
    missing = [5, 6]
    landmarks = [None if f in missing else noisy[f] for f in range(len(noisy))]
    box = float((clean[0].max(0) - clean[0].min(0)).max())
    args = (right, "right", start, torch.zeros(10), transl, K, landmarks, [box] * 12, range(12))
    fitted = fit_track(*args)
    alone = fit_track(*args, settings=FitSettings(temporal=0.0))
    before = right(start, None, transl).keypoints
    start_px = _px(project_points(before, torch.tensor(K).float()), clean)
    seen = [f for f in range(12) if f not in missing]
    # the frames with landmarks: onto the (noise-free) truth, far closer than they started
    assert (_px(fitted["keypoints2d"], clean)[seen] < 0.4 * start_px[seen]).all()
    # the frames without: the temporal term carries them with their neighbours, while without
    # it nothing pulls them (they keep their start)
    assert (_px(fitted["keypoints2d"], clean)[missing] < 0.5 * start_px[missing]).all()
    np.testing.assert_allclose(
        _px(alone["keypoints2d"], clean)[missing], start_px[missing], rtol=0.1
    )
    # the RMS records: NaN exactly where a frame had no landmarks, smaller after the fit
    assert np.isnan(fitted["rms_px_after"][missing]).all()
    assert (fitted["rms_px_after"][seen] < fitted["rms_px_before"][seen]).all()
    np.testing.assert_allclose(
        fitted["rms_px_after"][seen], _px(fitted["keypoints2d"], noisy)[seen], atol=1e-3
    )
    # one shape for the track; keypoints2d is the joints projected
    assert fitted["betas"].shape == (10,)
    projected = project_points(torch.from_numpy(fitted["joints"]), torch.tensor(K).float())
    np.testing.assert_allclose(fitted["keypoints2d"], projected.numpy(), atol=1e-3)


def test_fit_track_temporal_term_damps_landmark_noise(right):
    """Landmarks with 3 px of independent noise per frame: the fitted joints jitter less (smaller
    frame-to-frame acceleration) with the temporal term than without, and sit no farther from
    the truth."""
    poses, transl, clean, noisy = _moving_track(right)
    box = float((clean[0].max(0) - clean[0].min(0)).max())
    args = (right, "right", _track_start(poses), torch.zeros(10), transl, K, list(noisy))
    smooth = fit_track(*args, [box] * 12, range(12))
    raw = fit_track(*args, [box] * 12, range(12), settings=FitSettings(temporal=0.0))

    def jitter(joints):
        return float(np.linalg.norm(joints[:-2] - 2 * joints[1:-1] + joints[2:], axis=-1).mean())

    assert jitter(smooth["joints"]) < 0.7 * jitter(raw["joints"])
    assert _px(smooth["keypoints2d"], clean).mean() <= 1.05 * _px(raw["keypoints2d"], clean).mean()
    # a frame-number gap unlinks its neighbours: the fit then treats two separate runs
    gapped = fit_track(*args, [box] * 12, [*range(6), *range(10, 16)])
    assert jitter(gapped["joints"][:6]) < 0.7 * jitter(raw["joints"][:6])


def test_fit_track_in_chunks_matches_one_batch(right):
    """A track longer than the chunk: its shape is fitted first on frames spread over the whole
    track, then each chunk with that shape; the result stays near the one-batch fit."""
    poses, transl, clean, noisy = _moving_track(right)
    box = float((clean[0].max(0) - clean[0].min(0)).max())
    args = (right, "right", _track_start(poses), torch.zeros(10), transl, K, list(noisy))
    whole = fit_track(*args, [box] * 12, range(12))
    chunked = fit_track(*args, [box] * 12, range(12), settings=FitSettings(chunk=5))
    # measured: at most 3.5 px apart on a 165 px hand; mean error to the truth 5.5 against 4.7 px
    assert _px(chunked["keypoints2d"], whole["keypoints2d"]).max() < 0.03 * box
    assert _px(chunked["keypoints2d"], clean).mean() < 1.3 * _px(whole["keypoints2d"], clean).mean()
    assert chunked["betas"].shape == (10,) and np.isfinite(chunked["joints"]).all()


def test_fit_track_of_one_frame_is_the_photo_fit(right):
    pose, transl, landmarks = _truth(right, "point")
    start = pose.clone()
    start[1:] = start[1:] * 0.5
    photo = fit_to_landmarks(right, "right", start, torch.zeros(10), transl, K, landmarks, 120.0)
    track = fit_track(
        right, "right", start[None], torch.zeros(10), transl[None], K, [landmarks], [120.0], [7]
    )
    np.testing.assert_allclose(track["pose"][0], photo["pose"].numpy(), atol=1e-5)
    np.testing.assert_allclose(track["transl"][0], photo["transl"].numpy(), atol=1e-6)
    assert track["rms_px_after"][0] == pytest.approx(photo["rms_px_after"], abs=1e-3)


def test_fit_track_refuses_bad_input(right):
    poses, transl, clean, noisy = _moving_track(right, frames=3)
    args = (right, "right", poses, torch.zeros(10), transl, K)
    with pytest.raises(ValueError, match="length"):
        fit_track(*args, list(noisy[:2]), [100.0] * 3, range(3))
    with pytest.raises(ValueError, match="increase"):
        fit_track(*args, list(noisy), [100.0] * 3, [0, 2, 1])
    with pytest.raises(ValueError, match="positive"):
        fit_track(*args, list(noisy), [100.0, 0.0, 100.0], range(3))
    with pytest.raises(ValueError, match="frame 1"):
        fit_track(*args, [noisy[0], noisy[1][:20], None], [100.0] * 3, range(3))


@pytest.mark.skipif(not mediapipe_hands.available(), reason="needs mediapipe")
def test_predict_refines_on_mediapipe_landmarks(checkpoint):
    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    from PIL import Image

    image = np.asarray(Image.open(WILD).convert("RGB"))
    found = mediapipe_hands.detect(image)
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
    with pytest.raises(OptionError, match="refine must be"):
        Predictor(checkpoint, refine="always")
