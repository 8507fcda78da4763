"""Video pipeline: the One-Euro filter and quaternion helpers (backend.track.smoothing), the
tracker's state machine, and `process_video` on a synthetic clip of the rendered hand model.

References: the One-Euro equations worked by hand (Casiez et al. 2012), scipy's Rotation for the
quaternion maps, a known noise-free trajectory for jitter, per-frame `Predictor.predict` calls for
the track's shape and pose, and the pinhole projection for the camera identity.
"""

from __future__ import annotations

import copy
import math
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import check_camera_identity, render_hand_frames, with_display_matrix, write_clip
from scipy.spatial.transform import Rotation

from backend.crop import box_side
from backend.detect import detect_hands
from backend.errors import InputError, OptionError
from backend.media.video import probe_video, read_frames
from backend.options import HandRequest
from backend.pipeline.video import VideoCancelled, VideoOptions, process_video, write_overlay_video
from backend.schema import VIDEO_SCHEMA as SCHEMA
from backend.schema import Hand
from backend.track.finalize import finalize_tracks
from backend.track.smoothing import (
    OneEuroFilter,
    OneEuroParams,
    QuaternionFilter,
    axis_angle_to_quaternion,
    params_for_strength,
    quaternion_to_axis_angle,
    smooth_track,
)
from backend.track.tracker import (
    ANCHOR_RANGE,
    MAX_STEP_SCALE,
    MAX_STEP_SHIFT,
    HandTracker,
    follow_box,
    keypoint_box,
    match_detections,
)

# ----------------------------------------------------------------------------- One-Euro filter


def test_one_euro_matches_hand_computation() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.5, d_cutoff=1.0))
    assert f(np.array([0.0]), 0.0)[0] == 0.0  # the first sample passes through
    # second sample x = 1 at t = 0.1 s, worked out by hand:
    # alpha(1 Hz, 0.1 s) = 1 / (1 + (1 / (2 pi)) / 0.1) = 0.385869...
    a_d = 1 / (1 + 1 / (2 * math.pi) / 0.1)
    assert a_d == pytest.approx(0.3858696, abs=1e-6)
    dx_hat = a_d * (1.0 - 0.0) / 0.1  # 3.858696 units/s
    cutoff = 1.0 + 0.5 * dx_hat  # 2.929348 Hz
    alpha = 1 / (1 + 1 / (2 * math.pi * cutoff) / 0.1)  # 0.647957
    assert alpha == pytest.approx(0.647957, abs=1e-6)
    assert f(np.array([1.0]), 0.1)[0] == pytest.approx(alpha, abs=1e-12)


def test_one_euro_constant_input_is_unchanged() -> None:
    f = OneEuroFilter(OneEuroParams(1.0, 2.0))
    x = np.array([[0.3, -1.2, 5.0], [2.0, 0.0, -0.5]])
    for i in range(20):
        np.testing.assert_array_equal(f(x, i / 30), x)


def test_one_euro_step_converges_without_overshoot() -> None:
    f = OneEuroFilter(OneEuroParams(min_cutoff=1.0, beta=0.0))
    f(np.zeros(1), 0.0)
    outputs = [f(np.ones(1), i / 30)[0] for i in range(1, 200)]
    assert np.all(np.diff(outputs) >= 0) and max(outputs) <= 1.0
    # with beta = 0 it is a fixed low-pass: 1 - (1 - alpha)^n after n samples
    alpha = 1 / (1 + 1 / (2 * math.pi) * 30)
    assert outputs[9] == pytest.approx(1 - (1 - alpha) ** 10, abs=1e-12)
    assert outputs[-1] == pytest.approx(1.0, abs=1e-3)


def test_one_euro_rejects_non_increasing_time() -> None:
    f = OneEuroFilter(OneEuroParams(1.0, 0.0))
    f(np.zeros(3), 1.0)
    with pytest.raises(ValueError):
        f(np.zeros(3), 1.0)


def test_quaternion_filter_handles_sign_flips() -> None:
    q = axis_angle_to_quaternion(np.array([[0.3, -0.2, 1.1], [0.0, 0.0, 0.0]]))
    f = QuaternionFilter(OneEuroParams(1.0, 5.0))
    for i in range(10):  # the same rotations, every other sample with the opposite sign
        out = f(q if i % 2 == 0 else -q, i / 30)
        np.testing.assert_allclose(out, q, atol=1e-12)


def test_quaternion_filter_output_is_unit() -> None:
    rng = np.random.default_rng(0)
    f = QuaternionFilter(OneEuroParams(0.5, 1.0))
    for i in range(10):
        q = Rotation.random(4, random_state=int(rng.integers(1 << 30))).as_quat()
        out = f(q, i / 30)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-12)


def test_axis_angle_quaternion_maps_match_scipy() -> None:
    rotvecs = np.concatenate(
        [
            Rotation.random(50, random_state=1).as_rotvec(),
            [[1e-9, -2e-9, 0.0], [0.0, 0.0, 0.0], [math.pi - 1e-6, 0.0, 0.0]],
        ]
    )
    quats = axis_angle_to_quaternion(rotvecs)
    ref = Rotation.from_rotvec(rotvecs).as_quat()  # (x, y, z, w)
    ref = np.concatenate([ref[:, 3:], ref[:, :3]], axis=1)
    ref *= np.where(ref[:, :1] < 0, -1, 1)
    np.testing.assert_allclose(quats, ref, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_axis_angle(quats), rotvecs, atol=1e-9)
    np.testing.assert_allclose(quaternion_to_axis_angle(-quats), rotvecs, atol=1e-9)


def test_smoothing_strength_mapping() -> None:
    assert params_for_strength(0.0) is None
    rot, transl = params_for_strength(0.5)
    assert rot.min_cutoff == pytest.approx(1.0) and rot.d_cutoff == 1.0
    assert rot.beta == pytest.approx(5.0) and transl.beta == pytest.approx(20.0)
    assert params_for_strength(0.9)[0].min_cutoff < params_for_strength(0.2)[0].min_cutoff
    with pytest.raises(ValueError):
        params_for_strength(1.5)


def test_smoothing_reduces_jitter_on_a_noisy_trajectory() -> None:
    n, fps = 90, 30.0
    times = np.arange(n) / fps
    rng = np.random.default_rng(3)
    # truth: every joint turning slowly about its own axis; the hand drifting at 0.1 m/s
    axes = Rotation.random(16, random_state=2).as_rotvec()
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    true_rot = [Rotation.from_rotvec(axes * (0.3 + 0.5 * t)) for t in times]
    true_transl = np.stack([[0.1 * t, 0.0, 0.5] for t in times])
    noise = [Rotation.from_rotvec(rng.normal(0, math.radians(3), (16, 3))) for _ in times]
    noisy_pose = np.stack([(e * r).as_rotvec() for e, r in zip(noise, true_rot, strict=True)])
    noisy_transl = true_transl + rng.normal(0, 0.005, true_transl.shape)

    def errors(pose: np.ndarray, transl: np.ndarray) -> tuple[float, float]:
        angle = [
            (Rotation.from_rotvec(p) * r.inv()).magnitude()
            for p, r in zip(pose[10:], true_rot[10:], strict=True)
        ]
        return float(np.mean(angle)), float(np.linalg.norm(transl - true_transl, axis=1).mean())

    raw_rot, raw_t = errors(noisy_pose, noisy_transl)
    pose, transl = smooth_track(times, noisy_pose, noisy_transl, 0.5)
    rot_err, t_err = errors(pose, transl)
    assert rot_err < 0.7 * raw_rot and t_err < 0.7 * raw_t
    off = smooth_track(times, noisy_pose, noisy_transl, 0.0)
    np.testing.assert_array_equal(off[0], noisy_pose)
    np.testing.assert_array_equal(off[1], noisy_transl)


# ----------------------------------------------------------------------------- tracker logic


def _hand(box: tuple[float, float, float, float], score: float, side: str = "right") -> Hand:
    """A hand whose keypoints spread over `box`; the tracker reads nothing else."""
    x0, y0, x1, y1 = box
    keypoints = np.stack(np.meshgrid(np.linspace(x0, x1, 7), np.linspace(y0, y1, 3)), -1)
    return Hand(side, score, [], [], [], [], [], {}, [], [], keypoints.reshape(21, 2).tolist())


def test_keypoint_box_grows_like_training_and_clips() -> None:
    kp = np.array([[100.0, 100.0], [150.0, 200.0]])
    assert keypoint_box(kp, 640, 480) == pytest.approx((90.0, 90.0, 160.0, 210.0))
    assert keypoint_box(kp - 95, 640, 480)[:2] == (0.0, 0.0)


def test_match_detections_by_overlap_and_side() -> None:
    tracker = HandTracker(max_hands=2, min_score=0.2, patience=2, redetect_every=5)
    tracker.add_detections(
        [HandRequest((0, 0, 50, 50), "right"), HandRequest((100, 0, 150, 50), "left")]
    )
    matched, new = match_detections(
        tracker.tracks,
        [
            HandRequest((102, 2, 152, 52), "left"),
            HandRequest((5, 5, 55, 55), "left"),  # over track 0, but the wrong side
        ],
    )
    assert list(matched) == [1] and len(new) == 1


def test_tracker_keeps_ids_loses_and_refinds_tracks() -> None:
    tracker = HandTracker(max_hands=2, min_score=0.2, patience=2, redetect_every=5)
    assert tracker.needs_detection()  # the first frame detects
    tracker.add_detections(
        [HandRequest((10, 10, 60, 60), "right"), HandRequest((200, 10, 250, 60), "left")]
    )
    assert [t.id for t in tracker.tracks] == [0, 1] and not tracker.needs_detection()
    hands = tracker.update(
        [_hand((12, 12, 62, 62), 0.9), _hand((200, 12, 250, 62), 0.1, "left")], 640, 480
    )
    assert [h.track for h in hands] == [0, 1]
    # the keypoints' box (7, 7, 67, 67) held to 1.1 x the 50-pixel side: 55 around (37, 37)
    assert tracker.tracks[0].box_xyxy == pytest.approx((9.5, 9.5, 64.5, 64.5))
    assert not tracker.needs_detection()  # one low frame < patience
    tracker.update([_hand((14, 12, 64, 62), 0.9), _hand((200, 12, 250, 62), 0.1, "left")], 640, 480)
    assert [t.id for t in tracker.tracks] == [0] and tracker.needs_detection()
    # the detector finds the lost hand again near its last box, and a third hand elsewhere
    tracker.add_detections(
        [HandRequest((198, 10, 252, 64), "left"), HandRequest((400, 300, 450, 350), "right")]
    )
    assert [t.id for t in tracker.tracks] == [0, 1]  # max_hands = 2: no room for the third
    assert tracker.tracks[1].box_xyxy == (198.0, 10.0, 252.0, 64.0)


def test_tracker_moves_a_box_onto_mediapipe_landmarks_when_the_hand_has_them() -> None:
    tracker = HandTracker(max_hands=1, min_score=0.2, patience=2, redetect_every=5)
    tracker.add_detections([HandRequest((10, 10, 60, 60), "right")])
    hand = _hand((30, 30, 80, 80), 0.9)  # the network's keypoints, off to one side
    hand.landmarks = np.asarray(_hand((12, 12, 62, 62), 1.0).keypoints2d)
    tracker.update([hand], 640, 480)
    assert tracker.tracks[0].box_xyxy == pytest.approx((7.0, 7.0, 67.0, 67.0))  # the landmarks'
    tracker.update([_hand((30, 30, 80, 80), 0.9)], 640, 480)  # none: the network's keypoints
    # their box (25, 25, 85, 85) is 18 px off on each axis: the centre moves 0.25 x 60 = 15 px
    # along that diagonal, the side stays 60
    step = 15 / math.sqrt(2)
    assert tracker.tracks[0].box_xyxy == pytest.approx((7 + step, 7 + step, 67 + step, 67 + step))
    assert tracker.tracks[0].moving_box == pytest.approx((7.0, 7.0, 67.0, 67.0))  # for `move`


def test_tracker_drops_duplicate_tracks() -> None:
    tracker = HandTracker(max_hands=2, min_score=0.2, patience=3, redetect_every=5)
    tracker.add_detections([HandRequest((0, 0, 50, 50)), HandRequest((100, 0, 150, 50))])
    # both tracks take the landmarks of the same hand: the weaker one goes
    first, second = _hand((0, 0, 50, 50), 0.5), _hand((2, 0, 52, 50), 0.7)
    for hand in (first, second):
        hand.landmarks = np.asarray(_hand((1, 0, 51, 50), 1.0).keypoints2d)
    hands = tracker.update([first, second], 640, 480)
    assert [h.track for h in hands] == [1] and [t.id for t in tracker.tracks] == [1]


def test_follow_box_holds_back_a_runaway_prediction() -> None:
    previous = (100.0, 100.0, 200.0, 200.0)  # side 100, centre (150, 150)
    # keypoints collapsed to a 10-pixel blob at the centre: the side shrinks by 1.1 at most
    blob = _hand((145, 145, 155, 155), 0.9).keypoints2d
    side = 100 / MAX_STEP_SCALE
    assert follow_box(previous, 100.0, blob, 640, 480) == pytest.approx(
        (150 - side / 2, 150 - side / 2, 150 + side / 2, 150 + side / 2)
    )
    # ... and never below the last detected side / ANCHOR_RANGE, however many frames it lasts
    box = previous
    for _ in range(30):
        box = follow_box(box, 100.0, blob, 640, 480)
    assert box_side(box) == pytest.approx(100 / ANCHOR_RANGE)
    # keypoints far to the right: the centre moves MAX_STEP_SHIFT of the side per frame
    far = _hand((400, 140, 480, 160), 0.9).keypoints2d
    moved = follow_box(previous, 100.0, far, 640, 480)
    assert (moved[0] + moved[2]) / 2 == pytest.approx(150 + MAX_STEP_SHIFT * 100)
    assert (moved[1] + moved[3]) / 2 == pytest.approx(150)
    # a prediction within the bounds is taken as it is (keypoint_box's)
    near = np.asarray(_hand((110, 105, 190, 195), 0.9).keypoints2d)
    assert follow_box(previous, 100.0, near, 640, 480) == keypoint_box(near, 640, 480)


def test_tracker_moves_a_network_placed_box_with_the_image() -> None:
    """A track that the network alone placed follows the image's motion into the next frame
    (a textured frame shifted by a known amount), not its keypoints; one placed by MediaPipe's
    landmarks is not moved."""
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    shifted = cv2.warpAffine(image, np.float32([[1, 0, 6], [0, 1, -4]]), (320, 240))
    tracker = HandTracker(max_hands=2, min_score=0.2, patience=2, redetect_every=5)
    tracker.add_detections([HandRequest((60, 60, 140, 140)), HandRequest((200, 60, 280, 140))])
    landmarked = _hand((205, 65, 275, 135), 0.9)
    landmarked.landmarks = np.asarray(landmarked.keypoints2d)
    tracker.update([_hand((90, 90, 150, 150), 0.9), landmarked], 320, 240)
    after_landmarks = tracker.tracks[1].box_xyxy
    tracker.move(image, shifted)
    assert tracker.tracks[0].box_xyxy == pytest.approx((66, 56, 146, 136), abs=0.3)
    assert tracker.tracks[1].box_xyxy == after_landmarks
    # the shift is remembered as the track's velocity, the guess for the next frame's flow
    assert tracker.tracks[0].velocity == pytest.approx((6, -4), abs=0.3)
    # for a landmark track, the shift between two frames' landmark boxes in a row
    assert tracker.tracks[1].velocity is None  # one landmark frame only: none yet
    landmarked = _hand((215, 60, 285, 130), 0.9)
    landmarked.landmarks = np.asarray(landmarked.keypoints2d)
    tracker.update([_hand((66, 56, 146, 136), 0.9), landmarked], 320, 240)
    assert tracker.tracks[1].velocity == pytest.approx((10, -5))


# ----------------------------------------------------------------------------- process_video


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (read := cap.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


@pytest.fixture(scope="module")
def unsmoothed(predictor, hand_video) -> dict:
    # steps 1-4 and 6 alone: no fit to MediaPipe's landmarks (tests/test_detect.py covers it)
    return process_video(
        predictor,
        hand_video.path,
        VideoOptions(boxes=[hand_video.boxes[0]], smoothing=0.0, min_score=0.0, refine=False),
    )


def test_video_result_schema_tracks_and_identity(predictor, hand_video) -> None:
    progress = []
    result = process_video(
        predictor,
        hand_video.path,
        VideoOptions(boxes=[hand_video.boxes[0]], side="right", smoothing=0.5, min_score=0.0),
        progress_cb=lambda done, total: progress.append((done, total)),
    )
    assert result["schema"] == SCHEMA and result["fps"] == pytest.approx(hand_video.fps)
    assert [f["index"] for f in result["frames"]] == list(range(hand_video.num_frames))
    assert progress[-1] == (hand_video.num_frames, hand_video.num_frames)
    for frame in result["frames"]:
        assert [h["track"] for h in frame["hands"]] == [0]
        hand = frame["hands"][0]
        assert hand["side"] == "right" and 0 <= hand["score"] <= 1
        assert np.asarray(hand["pose_axis_angle"]).shape == (16, 3)
        check_camera_identity(hand)
    betas = {tuple(f["hands"][0]["betas"]) for f in result["frames"]}
    assert len(betas) == 1  # one shape per track


def test_video_track_shape_is_the_score_weighted_mean(predictor, hand_video, unsmoothed) -> None:
    frames = _frames(hand_video.path)
    raw_betas, raw_scores = [], []
    for image, frame in zip(frames, unsmoothed["frames"], strict=True):
        hand = frame["hands"][0]
        # the same crop, predicted alone: the frame's own pose, shape and score (the fixture
        # does not refine on MediaPipe's landmarks)
        request = HandRequest(hand["box_xyxy"], hand["side"])
        alone = predictor.predict(image, [request], refine=False)["hands"][0]
        np.testing.assert_allclose(hand["pose_axis_angle"], alone["pose_axis_angle"], atol=1e-5)
        assert hand["score"] == pytest.approx(alone["score"], abs=2e-4)  # rounded to 1e-4
        raw_betas.append(alone["betas"])
        raw_scores.append(hand["score"])  # the weight: the frame's reported confidence
        check_camera_identity(hand)
    expected = np.average(raw_betas, axis=0, weights=raw_scores)
    np.testing.assert_allclose(unsmoothed["frames"][0]["hands"][0]["betas"], expected, atol=1e-5)


def test_finalize_tracks_smooths_noisy_rotations(predictor, unsmoothed) -> None:
    """Rotation noise (3 degrees per joint and frame) added to a real track: smoothing brings the
    poses nearer the clean ones, and the camera identity still holds."""
    rng = np.random.default_rng(0)
    clean = [f["hands"][0]["pose_axis_angle"] for f in unsmoothed["frames"]]
    noisy = [
        (Rotation.from_rotvec(rng.normal(0, math.radians(3), (16, 3))) * Rotation.from_rotvec(p))
        .as_rotvec()
        .tolist()
        for p in clean
    ]

    def finalized(strength: float) -> list[dict]:
        frames = [
            (f["index"], [Hand.from_json(copy.deepcopy(h)) for h in f["hands"]])
            for f in unsmoothed["frames"]
        ]
        for (_, hands), pose in zip(frames, noisy, strict=True):
            hands[0].pose_axis_angle = pose
        finalize_tracks(predictor, frames, unsmoothed["fps"], strength)
        return [hands[0].to_json() for _, hands in frames]

    def error(hands: list[dict]) -> float:
        return float(
            np.mean(
                [
                    (Rotation.from_rotvec(h["pose_axis_angle"]) * Rotation.from_rotvec(c).inv())
                    .magnitude()
                    .mean()
                    for h, c in zip(hands[4:], clean[4:], strict=True)
                ]
            )
        )

    raw = finalized(0.0)
    np.testing.assert_allclose([h["pose_axis_angle"] for h in raw], noisy, atol=1e-12)
    smooth = finalized(0.8)
    assert error(smooth) < 0.6 * error(raw)
    for hand in smooth:
        check_camera_identity(hand)


def test_video_two_hands_keep_their_ids(predictor, hand_video, tmp_path: Path) -> None:
    frames = _frames(hand_video.path)
    path = tmp_path / "two.mp4"
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (2 * width, height))
    for frame in frames:  # the hand and its mirror image (a left hand) side by side
        both = np.concatenate([frame, frame[:, ::-1]], axis=1)
        writer.write(cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
    writer.release()
    x0, y0, x1, y1 = hand_video.boxes[0]
    boxes = [(x0, y0, x1, y1), (2 * width - x1, y0, 2 * width - x0, y1)]
    result = process_video(predictor, path, VideoOptions(boxes=boxes, min_score=0.0, smoothing=0.5))
    for frame in result["frames"]:
        by_track = {h["track"]: h for h in frame["hands"]}
        assert sorted(by_track) == [0, 1]
        centre = {t: np.mean(h["keypoints2d"], axis=0)[0] for t, h in by_track.items()}
        assert centre[0] < width < centre[1]
    sides = {h["track"]: h["side"] for f in result["frames"] for h in f["hands"]}
    assert len(sides) == 2  # each track keeps one side


def test_video_detects_hands_without_boxes(predictor, hand_video) -> None:
    result = process_video(predictor, hand_video.path, VideoOptions(max_hands=1, min_score=0.0))
    assert len(result["frames"]) == hand_video.num_frames
    # the first frame gets what the detector finds there (MediaPipe, or the tiny test network,
    # which finds a hand), and a hand found is tracked with one id from then on
    # (a video frame: MediaPipe looks at the whole frame only, no tiles or closer views)
    found, _ = detect_hands(predictor, _frames(hand_video.path)[0], "auto", 1, views=False)
    first = result["frames"][0]["hands"]
    assert [h["box_xyxy"] for h in first] == [pytest.approx(h.box_xyxy, abs=0.01) for h in found]
    tracks = {h["track"] for f in result["frames"] for h in f["hands"]}
    assert tracks == ({0} if found else set())


def test_video_cancellation(predictor, hand_video) -> None:
    cancel = threading.Event()
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            cancel.set()

    with pytest.raises(VideoCancelled):
        process_video(
            predictor,
            hand_video.path,
            VideoOptions(boxes=[hand_video.boxes[0]]),
            progress_cb=progress,
            cancel_event=cancel,
        )
    assert seen == [1, 2, 3]


def test_a_clip_tagged_to_turn_is_read_as_it_is_shown(predictor, hand_video, tmp_path) -> None:
    """Phones store a clip recorded upright sideways, with a display matrix saying how to turn
    it; players and Blender's movie clips show it turned, so the backend must read it turned.
    References: the stored frames turned by numpy, and the hands found in the upright clip."""
    rng = np.random.default_rng(5)
    wide = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)] * 3
    plain = write_clip(tmp_path / "wide.mp4", wide)
    stored = list(read_frames(plain))
    for turns in (1, 2, 3):
        tagged = with_display_matrix(plain, tmp_path / f"turned{turns}.mp4", turns)
        frames = list(read_frames(tagged))
        assert len(frames) == len(stored)
        for got, raw in zip(frames, stored, strict=True):
            assert np.array_equal(got, np.rot90(raw, -turns))  # clockwise quarter turns
        info = probe_video(tagged)
        assert (info.width, info.height) == ((96, 160) if turns % 2 else (160, 96))
    # the hand clip stored a quarter turn counter-clockwise and tagged to turn back: the same
    # hands as in the upright clip (up to the video codec's losses)
    upright_frames, _ = render_hand_frames()
    sideways = write_clip(tmp_path / "sideways.mp4", [np.rot90(f, 1) for f in upright_frames])
    tagged = with_display_matrix(sideways, tmp_path / "tagged.mp4", 1)
    options = {"boxes": [hand_video.boxes[0]], "smoothing": 0.0, "min_score": 0.0}
    options["refine"] = False
    turned = process_video(predictor, tagged, VideoOptions(**options))
    upright = process_video(predictor, hand_video.path, VideoOptions(**options))
    assert turned["image"] == upright["image"]
    errors = [
        np.abs(np.subtract(a["hands"][0]["keypoints2d"], b["hands"][0]["keypoints2d"])).mean()
        for a, b in zip(turned["frames"], upright["frames"], strict=True)
    ]
    assert max(errors) < 0.5, errors  # pixels (measured 0.01-0.02 px), of a 256-pixel frame


def test_video_bad_inputs(predictor, hand_video, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(InputError, match="cannot decode"):
        process_video(predictor, garbage)
    with pytest.raises(InputError, match="no such video"):
        process_video(predictor, tmp_path / "missing.mp4")
    with pytest.raises(OptionError, match="outside"):
        process_video(predictor, hand_video.path, VideoOptions(boxes=[(300, 300, 400, 400)]))
    with pytest.raises(OptionError, match="smoothing"):
        process_video(predictor, hand_video.path, VideoOptions(smoothing=2.0))


def test_overlay_video(predictor, hand_video, unsmoothed, tmp_path: Path) -> None:
    out = write_overlay_video(predictor, hand_video.path, unsmoothed, tmp_path / "overlay.mp4")
    info = probe_video(out)
    assert (info.width, info.height) == (256, 256)
    frames = _frames(out)
    assert len(frames) == hand_video.num_frames
    # the overlay changed the pixels around the hand and left the corners alone
    original = _frames(hand_video.path)
    diff = np.abs(frames[0].astype(int) - original[0].astype(int)).mean(axis=2)
    assert diff.max() > 50 and diff[:20, :20].mean() < 8
