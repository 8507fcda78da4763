"""Finding hands without a box: MediaPipe Hands (backend.mediapipe_hands), the choice between it
and the network (backend.detect.detect_hands), and the `--detector` / `detector` options.

References: the annotated keypoints of the real photos in ../shared/samples (their tight boxes,
their sides where the set records one), and the definitions of the options.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, check_camera_identity, check_prediction
from PIL import Image

from backend.cli import main
from backend.crop import box_side, iou
from backend.detect import detect_hands, find_hands, mediapipe_hands
from backend.errors import OptionError
from backend.options import HandRequest
from backend.pipeline.photo import Predictor

pytestmark = pytest.mark.skipif(
    not mediapipe_hands.available(), reason="mediapipe is not installed (make setup installs it)"
)
ROOT = Path(__file__).resolve().parents[1]
WILD = SAMPLES / "wild_hamer" / "test5.jpg"  # a woman holding both hands at her face


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _sample_hands():
    from training.data.samples import NAMES, SampleSet

    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    for name in NAMES:
        dataset = SampleSet(SAMPLES, name)
        for hand in dataset.hands:
            # OneHand10K records no side: the reader says right (0), so its side is not checked
            side = None if name == "onehand10k" else ("right", "left")[hand.side]
            yield name, dataset.dir / hand.file, hand, side


def test_mediapipe_finds_the_annotated_hands() -> None:
    """On the annotated real photos: a detection overlapping a hand's annotated box (IoU > 0.5)
    has the hand's side, and its landmarks lie on the annotated keypoints."""
    cache: dict = {}
    found = total = 0
    per_set: dict[str, list[int]] = {}
    for name, path, hand, side in _sample_hands():
        if path not in cache:
            cache[path] = mediapipe_hands.detect(_rgb(path))
        vis = hand.vis > 0
        lo, hi = hand.uv[vis].min(0), hand.uv[vis].max(0)
        truth = (*lo, *hi)
        total += 1
        per_set.setdefault(name, [0, 0])[1] += 1
        best = max(cache[path], key=lambda d: iou(d["box_xyxy"], truth), default=None)
        if best is None or iou(best["box_xyxy"], truth) <= 0.5:
            continue
        found += 1
        per_set[name][0] += 1
        if side is not None:
            assert best["side"] == side, (path.name, best["side"], side)
        error = np.linalg.norm(best["keypoints2d"][vis] - hand.uv[vis], axis=1).mean()
        assert error < 0.2 * max(hi - lo), (path.name, error)
        x0, y0, x1, y1 = best["box_xyxy"]
        assert 0 <= best["score"] <= 1 and x1 > x0 and y1 > y0
    # measured: FreiHAND 6/8, OneHand10K 3/4, Panoptic 2/4, InterHand2.6M 1/6 (its hands overlap
    # or are cut by the image edge): 12 of 22
    assert per_set["freihand"][0] >= 5, per_set
    assert found >= 10, (found, total, per_set)


def test_detect_hands_chooses_the_detector(predictor: Predictor) -> None:
    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    image = _rgb(WILD)
    mp_hands = mediapipe_hands.detect(image)
    assert len(mp_hands) == 2  # both of her hands
    hands, used = detect_hands(predictor, image, "auto")
    assert used == "mediapipe" and len(hands) == 2
    for request, det in zip(hands, mp_hands, strict=True):
        assert request.box_xyxy == pytest.approx(det["box_xyxy"])
        assert request.side == det["side"] and request.score == det["score"]
    # her right hand is on the image's left: MediaPipe's mirrored labels are swapped back
    by_x = sorted(hands, key=lambda r: r.box_xyxy[0])
    assert [r.side for r in by_x] == ["right", "left"]
    forced, _ = detect_hands(predictor, image, "left", detector="mediapipe")
    assert {r.side for r in forced} == {"left"}
    # the network as the detector, on request
    _, used = detect_hands(predictor, image, "auto", detector="hamr")
    assert used == "hamr"
    # an image with no hand: MediaPipe finds none, and `auto` falls back to the network
    grey = np.full((240, 320, 3), 128, np.uint8)
    assert detect_hands(predictor, grey, "auto", detector="mediapipe") == ([], "mediapipe")
    assert detect_hands(predictor, grey, "auto")[1] == "hamr"
    with pytest.raises(OptionError, match="detector must be one of"):
        detect_hands(predictor, image, "auto", detector="yolo")


def test_without_mediapipe_auto_uses_the_network(predictor, monkeypatch) -> None:
    """As on a machine where mediapipe is not installed (its wheels stop at Python 3.12)."""
    monkeypatch.setattr(mediapipe_hands, "available", lambda: False)
    grey = np.full((120, 160, 3), 128, np.uint8)
    assert detect_hands(predictor, grey, "auto")[1] == "hamr"
    with pytest.raises(OptionError, match="needs the mediapipe package"):
        detect_hands(predictor, grey, "auto", detector="mediapipe")


def test_detect_refuses_a_bad_image() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        mediapipe_hands.detect(np.zeros((10, 10), np.uint8))


def test_cli_predict_without_box(checkpoint, tmp_path, xdg_env) -> None:
    """A real `hamr predict` process: MediaPipe's boxes and sides reach the JSON, and the
    start-up chatter of its C++ side stays off the terminal."""
    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    out = tmp_path / "pred.json"
    args = ["predict", str(WILD), "--checkpoint", str(checkpoint), "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        cwd=ROOT,
        env=xdg_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    pred = json.loads(out.read_text())
    width, height = Image.open(WILD).size
    check_prediction(pred, width, height, hands=2)
    assert pred["detector"] == "mediapipe"
    truth = mediapipe_hands.detect(_rgb(WILD))
    assert [h["box_xyxy"] for h in pred["hands"]] == [
        pytest.approx(d["box_xyxy"], abs=0.01) for d in truth
    ]
    assert [h["side"] for h in pred["hands"]] == [d["side"] for d in truth]


def test_cli_detector_option(checkpoint, capsys) -> None:
    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    with pytest.raises(SystemExit):
        main(["predict", str(WILD), "--detector", "yolo"])
    assert "invalid choice" in capsys.readouterr().err
    code = main(["predict", str(WILD), "--checkpoint", str(checkpoint), "--detector", "hamr"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["detector"] == "hamr"


def test_video_tracks_take_mediapipe_boxes_on_every_frame(predictor, tmp_path) -> None:
    """A clip panning across a real photo (a known shift per frame): both hands are tracked with
    one id and one side each, and their boxes follow the pan."""
    import cv2

    from backend.pipeline.video import VideoOptions, process_video

    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    photo = _rgb(WILD)
    shift, frames, size = 12, 8, 900
    path = tmp_path / "pan.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size, size))
    for i in range(frames):
        x0 = 150 + shift * i  # the window moves right, so the hands move left in the frame
        writer.write(cv2.cvtColor(photo[250 : 250 + size, x0 : x0 + size], cv2.COLOR_RGB2BGR))
    writer.release()
    result = process_video(predictor, path, VideoOptions(max_hands=2, min_score=0.0, smoothing=0.0))
    assert len(result["frames"]) == frames
    tracks: dict[int, list] = {}
    for frame in result["frames"]:
        assert len(frame["hands"]) == 2
        for hand in frame["hands"]:
            tracks.setdefault(hand["track"], []).append((frame["index"], hand))
    assert sorted(tracks) == [0, 1]
    sides = {t: {h["side"] for _, h in seq} for t, seq in tracks.items()}
    assert sorted(next(iter(s)) for s in sides.values()) == ["left", "right"]
    assert all(len(s) == 1 for s in sides.values())
    for seq in tracks.values():
        first = np.asarray(seq[0][1]["box_xyxy"])
        # in hand sizes (the box's longer side, as everywhere): one of these hands is tall and
        # narrow, and MediaPipe's video mode moves its wrist landmark by 4 % of its height
        # between its first frame (found by the palm detector) and the next (followed)
        size = box_side(first)
        for index, hand in seq:
            expected = first - [shift * index, 0, shift * index, 0]
            assert np.abs(np.asarray(hand["box_xyxy"]) - expected).max() < 0.08 * size, index


def test_video_refine_fits_tracks_to_the_landmarks(predictor, tmp_path) -> None:
    """A clip panning across an annotated photo (Panoptic HandDB, a known shift per frame): with
    refine, every frame's hand carries its fit record and lies much closer to the annotated
    keypoints than the network's hand alone (measured 0.41 -> 0.17 of the hand box); without it,
    no hand has a fit. A second refined run gives exactly the same result."""
    from backend.pipeline.video import VideoOptions, process_video
    from tools.eval_refine import pan_clip, pan_errors
    from training.data.samples import SampleSet

    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    dataset = SampleSet(SAMPLES, "panoptic")
    hand = dataset.hands[3]
    path = tmp_path / "pan.mp4"
    shift, top = pan_clip(_rgb(dataset.dir / hand.file), path, frames=6)

    def error(result) -> float:
        errors = pan_errors(result, hand.uv, hand.vis > 0, shift, top)
        assert not np.isnan(errors).any(), errors  # the hand is tracked on every frame
        return float(np.mean(errors))

    plain_fit_calls, fit_calls = [], []
    plain = process_video(
        predictor,
        path,
        VideoOptions(max_hands=2, min_score=0.0, refine=False),
        fit_progress_cb=lambda done, total: plain_fit_calls.append((done, total)),
    )
    refined = process_video(
        predictor,
        path,
        VideoOptions(max_hands=2, min_score=0.0, refine=True),
        fit_progress_cb=lambda done, total: fit_calls.append((done, total)),
    )
    assert all(h["fit"] is None for f in plain["frames"] for h in f["hands"])
    fits = [h["fit"] for f in refined["frames"] for h in f["hands"]]
    assert fits and all(f is not None and f["landmarks"] == "mediapipe" for f in fits)
    # the fit's progress: nothing without refine; with it, from 0 to every fitted hand-frame
    assert plain_fit_calls == []
    assert fit_calls[0] == (0, len(fits)) and fit_calls[-1] == (len(fits), len(fits))
    assert [d for d, _ in fit_calls] == sorted(d for d, _ in fit_calls)
    assert sum(f["rms_px_after"] < f["rms_px_before"] for f in fits) >= 0.8 * len(fits)
    assert error(refined) < 0.6 * error(plain)
    # the same clip again gives the same hands to the bit: the fit magnifies any difference in
    # where it starts (a translation solved 1e-7 m apart ended 1e-4 m apart)
    assert (
        process_video(predictor, path, VideoOptions(max_hands=2, min_score=0.0, refine=True))
        == refined
    )
    for frame in refined["frames"]:
        for hand_out in frame["hands"]:
            check_camera_identity(hand_out)


def test_network_only_tracking_keeps_the_crop_on_the_hand(predictor, tmp_path) -> None:
    """A clip of an annotated hand's patch moving over the still, blurred photo and growing
    (tools.eval_tracking's move clip), with the network alone (no MediaPipe, the first frame's
    box given): moved by the image's motion, every frame's crop holds the hand; placed by the
    network's own keypoints (the tracker before `motion`), the crop leaves it."""
    from backend.media.video import probe_video
    from backend.pipeline.video import VideoOptions, process_video
    from backend.track.tracker import keypoint_box
    from tools.eval_tracking import move_clip, score
    from training.data.samples import SampleSet

    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    dataset = SampleSet(SAMPLES, "interhand2.6m")
    hand = dataset.hands[0]
    image, vis = _rgb(dataset.dir / hand.file), hand.vis > 0
    path = tmp_path / "move.mp4"
    truth = move_clip(image, hand.uv, vis, path, frames=10, grow=1.3)
    info = probe_video(path)
    box = keypoint_box(truth[0][vis], info.width, info.height)
    kept = {}
    for placement in ("motion", "keypoints"):
        result = process_video(
            predictor,
            path,
            VideoOptions(
                boxes=[box], detector="hamr", refine=False, min_score=0.0, placement=placement
            ),
        )
        kept[placement] = score(result, truth, vis)["kept"]
    assert kept["motion"] == 1.0 and kept["keypoints"] < 0.5, kept


def test_network_only_tracking_follows_a_hand_over_a_still_background(
    predictor, tmp_path, monkeypatch
) -> None:
    """Only the hand moves (tools.eval_tracking's cutout clip: a hand-shaped cut of a OneHand10K
    photo over a sharp, still InterHand photo), so most corners in its box are the background's:
    the box follows the points that move apart from the ring around it and keeps the hand in
    every frame; with every point's median (`_apart` patched to keep them all, the tracker
    before the ring) the box stays with the background and loses the hand."""
    from backend.media.video import probe_video
    from backend.pipeline.video import VideoOptions, process_video
    from backend.track.tracker import keypoint_box
    from tools.eval_tracking import move_clip, score
    from training.data.samples import SampleSet

    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    hands, backgrounds = SampleSet(SAMPLES, "onehand10k"), SampleSet(SAMPLES, "interhand2.6m")
    hand = hands.hands[1]
    image, vis = _rgb(hands.dir / hand.file), hand.vis > 0
    background = _rgb(backgrounds.dir / backgrounds.hands[0].file)
    path = tmp_path / "cutout.mp4"
    truth = move_clip(image, hand.uv, vis, path, frames=10, grow=1.3, cutout=background)
    info = probe_video(path)
    box = keypoint_box(truth[0][vis], info.width, info.height)

    def kept() -> float:
        result = process_video(
            predictor,
            path,
            VideoOptions(
                boxes=[box], detector="hamr", refine=False, min_score=0.0, placement="motion"
            ),
        )
        return score(result, truth, vis)["kept"]

    with_ring = kept()
    monkeypatch.setattr("backend.track.motion._apart", lambda *args: None)
    assert with_ring == 1.0 and kept() < 0.5


def test_video_cancelled_while_fitting(predictor, tmp_path) -> None:
    """A cancel that arrives once every frame is read stops the track fit at its next chunk."""
    import threading

    from backend.pipeline.video import VideoCancelled, VideoOptions, process_video
    from tools.eval_refine import pan_clip
    from training.data.samples import SampleSet

    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    dataset = SampleSet(SAMPLES, "panoptic")
    path = tmp_path / "pan.mp4"
    pan_clip(_rgb(dataset.dir / dataset.hands[3].file), path, frames=3)
    cancel, calls = threading.Event(), []

    def fit_progress(done: int, total: int) -> None:
        calls.append(done)
        cancel.set()  # from the fit's first report on

    with pytest.raises(VideoCancelled, match="while fitting"):
        process_video(
            predictor,
            path,
            VideoOptions(min_score=0.0, refine=True),
            fit_progress_cb=fit_progress,
            cancel_event=cancel,
        )
    assert calls == [0]


def test_a_users_box_takes_the_side_of_the_mediapipe_hand_it_overlaps(checkpoint) -> None:
    if not WILD.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    from backend.options import HandRequest

    image = _rgb(WILD)
    found = mediapipe_hands.detect(image)
    predictor = Predictor(checkpoint, refine="off")
    boxes = [HandRequest(tuple(d["box_xyxy"]), "auto") for d in reversed(found)]
    pred = predictor.predict(image, boxes)
    assert [h["side"] for h in pred["hands"]] == [d["side"] for d in reversed(found)]
    assert all(h["fit"] is None for h in pred["hands"])  # refine off: sides only
    forced = predictor.predict(image, [HandRequest(b.box_xyxy, "left") for b in boxes])
    assert [h["side"] for h in forced["hands"]] == ["left", "left"]


def test_a_cancel_stops_the_work_between_hands_and_between_crop_batches(predictor) -> None:
    """The HTTP service sets the event when the client leaves: prediction stops before the next
    hand, and the network's detector before its next batch of crops."""
    import threading

    from backend.errors import Cancelled

    class SetAfter(threading.Event):
        """An event that reads as set from its n-th check on, counting the checks."""

        def __init__(self, n: int) -> None:
            super().__init__()
            self.n, self.checks = n, 0

        def is_set(self) -> bool:
            self.checks += 1
            return self.checks >= self.n

    image = np.full((256, 256, 3), 120, np.uint8)
    requests = [HandRequest((10, 10, 100, 100), "right") for _ in range(3)]
    cancel = SetAfter(2)
    with pytest.raises(Cancelled, match="after 1 of 3 hands"):
        predictor.predict_hands(image, requests, refine=False, cancel=cancel)
    assert cancel.checks == 2  # the first hand ran, the second was not started
    done = threading.Event()
    done.set()
    with pytest.raises(Cancelled):
        find_hands(predictor, image, cancel=done)
    assert len(predictor.predict_hands(image, requests, refine=False)[0]) == 3  # without: all
