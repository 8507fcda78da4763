"""Teacher labelling of real photos (training/label_real.py) and its reader
(training/data/teacher_folder.py), against the annotated hands of ../shared/samples.

Skips when ../shared/samples or MediaPipe is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from backend.detect import mediapipe_hands
from training.data.samples import DEFAULT_SAMPLES_ROOT

pytestmark = [
    pytest.mark.skipif(not DEFAULT_SAMPLES_ROOT.exists(), reason="../shared/samples is absent"),
    pytest.mark.skipif(not mediapipe_hands.available(), reason="mediapipe is not installed"),
]

# annotated sample hands the teacher is checked on: (set, item index)
HANDS = (("onehand10k", 0), ("onehand10k", 1), ("panoptic", 0), ("panoptic", 1))
MAX_ERROR_BOX = 0.12  # mean landmark error bound, in box sides (MediaPipe: about 0.05 here)


@pytest.fixture(scope="module")
def teacher():
    from training.label_real import Teacher

    torch.set_num_threads(1)
    return Teacher()


def _to_image(sample: dict, ctx_uv: np.ndarray) -> np.ndarray:
    """Context-crop pixels of a stored sample -> pixels of the photo it came from."""
    from training.label_real import CONTEXT_SIZE

    cx, cy, side = sample["context"]
    work = ctx_uv / CONTEXT_SIZE * side + np.array([cx - side / 2, cy - side / 2])
    return (work - sample["pad"]) / sample["upsample"]


def _sample_hand(name: str, index: int):
    from training.data.samples import SampleSet

    return SampleSet(DEFAULT_SAMPLES_ROOT, name).load(index)


def test_labels_agree_with_ground_truth(teacher):
    checked = 0
    for name, index in HANDS:
        hand = _sample_hand(name, index)
        kept, _ = teacher.label(hand.image)
        vis = hand.keypoints2d_vis > 0
        gt = hand.keypoints2d
        box_side = float((gt[vis].max(0) - gt[vis].min(0)).max())
        errors = []
        for s in kept:
            uv = _to_image(s, np.asarray(s["keypoints2d"]))
            errors.append(np.linalg.norm(uv - gt, axis=1)[vis].mean() / box_side)
        if not errors:
            continue
        best = min(errors)
        assert best < MAX_ERROR_BOX, (name, index, best)
        s = kept[int(np.argmin(errors))]
        assert 0 < s["weight_3d"] <= s["weight_2d"] <= 1
        # the fitted 3D joints are a hand, in metres: wrist-to-middle-MCP 5-12 cm (a child's to a
        # large adult's; over the 5,436 teacher-labelled hands of ../shared/realhands the 1st-99th
        # percentiles are 6.7-9.5 cm). The Panoptic photo's bow hand sits at 6.0 cm with the
        # stage-19 weights (6.2 with stage 18's): MediaPipe's world landmarks make it small.
        kp3d = np.asarray(s["keypoints3d"])
        assert 0.05 < np.linalg.norm(kp3d[9] - kp3d[0]) < 0.12
        assert 0.2 < kp3d[:, 2].mean() < 20  # in front of the camera
        checked += 1
    assert checked >= 3, f"the teacher labelled only {checked} of {len(HANDS)} sample hands"


def test_rejects_a_photo_without_a_hand(teacher):
    # a real photo's region away from its hand: the sample photo's top-left corner, where the
    # annotated hand's box does not reach, grown to 320 px by reflection
    hand = _sample_hand("panoptic", 0)
    x0, y0 = hand.keypoints2d[hand.keypoints2d_vis > 0].min(0)
    region = hand.image[: max(int(y0) - 20, 40), : max(int(x0) - 20, 40)]
    assert region.shape[0] >= 40 and region.shape[1] >= 40
    reps = (1 + 320 // region.shape[0], 1 + 320 // region.shape[1], 1)
    photo = np.ascontiguousarray(np.tile(region, reps)[:320, :320])
    kept, dropped = teacher.label(photo)
    assert kept == [] and dropped == ["no_hand"]


def _write_folder(tmp_path, photos):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for i, img in enumerate(photos):
        Image.fromarray(img).save(src / ("sub" if i else ".") / f"p{i}.png")
    return src


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, teacher):
    """A folder of three photos (a right hand, the same photo mirrored: a left hand, a blank
    photo), labelled with the first held out."""
    from training.label_real import label_source

    tmp = tmp_path_factory.mktemp("teacher")
    # a hand the labeller keeps with room to spare both ways round (the fitted joints' anatomy
    # score 0.00 as it is, 0.02-0.03 mirrored, with stages 10, 12 and 13; onehand10k 0, used
    # before, sat at 0.60 against the 0.6 limit with stage 12 and 0.69 with stage 13)
    hand = _sample_hand("onehand10k", 3)
    blank = np.full((240, 320, 3), 128, np.uint8)
    src = _write_folder(tmp, [hand.image, hand.image[:, ::-1].copy(), blank])
    out = tmp / "labelled"
    meta = label_source(src, out, holdout=["p0.png"], progress=False)
    return src, out, meta


def test_folder_counts_resume_and_reader(labelled):
    from training.data.common import ITEM_KEYS
    from training.data.mix import build_dataset
    from training.data.teacher_folder import TeacherFolder
    from training.label_real import label_source

    src, out, meta = labelled
    assert meta["format"] == "hamr.teacher/1" and meta["inputs"] == 3
    assert meta["dropped"]["no_hand"] == 1
    assert meta["kept"] == meta["kept_by_split"].get("train", 0) + meta["kept_by_split"].get(
        "test", 0
    )
    assert meta["kept_by_split"].get("test", 0) >= 1  # p0.png, the held-out right hand
    lines = (out / "samples.jsonl").read_text().splitlines()
    # resumable: a second run does nothing and duplicates nothing
    again = label_source(src, out, holdout=["p0.png"], progress=False)
    assert again["inputs"] == 3 and again["kept"] == meta["kept"]
    assert (out / "samples.jsonl").read_text().splitlines() == lines

    test = build_dataset(f"teacher-folder:{out}", "test")
    assert len(test) == meta["kept_by_split"]["test"]
    item = test[0]
    assert set(ITEM_KEYS) <= set(item) and {"weight_2d", "weight_3d"} <= set(item)
    shapes = {
        "image": (3, 256, 256), "keypoints2d": (21, 2), "keypoints3d": (21, 3),
        "pose": (16, 3), "betas": (10,), "K": (3, 3), "mask": (256, 256),
    }  # fmt: skip
    for k, shape in shapes.items():
        assert tuple(item[k].shape) == shape, k
    assert float(item["has_3d"]) == 1 and float(item["has_mano"]) == 1
    assert float(item["has_mask"]) == 0
    # the landmarks' box fills the crop as every reader's (CROP_SCALE x the 10 %-grown box)
    kp = item["keypoints2d"]
    extent = float((kp.max(0).values - kp.min(0).values).max())
    assert 256 / 1.3 / 1.2 - 2 < extent < 256 / 1.3 / 1.2 + 2
    every = TeacherFolder(out, split=None)
    assert len(every) == meta["kept"]


def test_fit_labels_are_the_fitted_keypoints_projected(labelled):
    """labels_2d="fit": the item's 2D keypoints are its 3D keypoints (the landmark fit's)
    projected through its own K, crop and all, and lie near MediaPipe's landmarks (the default
    labels) at the fit's residual; an unknown choice is refused."""
    from training.data.mix import build_dataset

    _, out, _ = labelled
    landmarks = build_dataset(f"teacher-folder:{out}", "test")[0]
    fit = build_dataset(f"teacher-folder:{out}", "test", labels_2d="fit")[0]
    xyz, K = fit["keypoints3d"].double(), fit["K"].double()
    projected = (xyz @ K.T)[:, :2] / (xyz @ K.T)[:, 2:]
    torch.testing.assert_close(fit["keypoints2d"].double(), projected, atol=1e-3, rtol=0)
    assert not torch.allclose(fit["keypoints2d"], landmarks["keypoints2d"], atol=0.5)
    gap = (fit["keypoints2d"] - landmarks["keypoints2d"]).norm(dim=-1)  # crop pixels
    assert float(gap.mean()) < 0.05 * 256 / 1.3  # within 5 % of the hand's size on average
    with pytest.raises(ValueError, match="labels_2d"):
        build_dataset(f"teacher-folder:{out}", "test", labels_2d="mediapipe")


def test_left_hand_flips_in_as_the_backend_does(labelled):
    """The mirrored photo's hand is a left hand; its stored pose is the left model's, and the
    reader's item flipped in (training's flip_to_right) is the right hand of the unmirrored
    photo: same crop, 2D and root-relative 3D, within the teacher's own noise."""
    from backend.hand_model.model import HandModel
    from training.data.teacher_folder import TeacherFolder
    from training.data.transforms import flip_to_right

    _, out, _ = labelled
    data = TeacherFolder(out, split=None)
    sides = [r["side"] for r in data.records]
    assert "right" in sides and "left" in sides, sides
    right = data[sides.index("right")]
    left = data[sides.index("left")]
    rec = data.records[sides.index("left")]
    # the stored 3D joints are the left model's keypoints at the stored pose, betas, transl
    model = HandModel("left")
    joints = model(
        torch.tensor([rec["pose"]]), torch.tensor([rec["betas"]]), torch.tensor([rec["transl"]])
    ).keypoints[0]
    assert torch.allclose(joints, torch.tensor(rec["keypoints3d"]), atol=1e-4)
    batch = {k: v[None] for k, v in left.items()}
    flipped = {k: v[0] for k, v in flip_to_right(batch).items()}
    assert int(flipped["side"]) == 1  # the side stays, so results can be mirrored back
    err2d = (flipped["keypoints2d"] - right["keypoints2d"]).norm(dim=-1).mean()
    assert err2d < 0.03 * 256
    image_diff = (flipped["image"] - right["image"]).abs().mean()
    assert image_diff < 0.05
    rel = flipped["keypoints3d"] - flipped["keypoints3d"][:1]
    rel_right = right["keypoints3d"] - right["keypoints3d"][:1]
    assert (rel - rel_right).norm(dim=-1).mean() < 0.015
    # and the mirrored pose drives the right model to the flipped joints
    rmodel = HandModel("right")
    kp = rmodel(flipped["pose"][None], flipped["betas"][None]).keypoints[0]
    rel_model = kp - kp[:1]
    assert (rel_model - rel).norm(dim=-1).max() < 1e-4


def test_preview_grid(labelled, tmp_path):
    from training.label_real import preview_grid

    _, out, meta = labelled
    path = preview_grid(out, tmp_path / "grid.png", count=4, columns=2)
    with Image.open(path) as im:
        assert im.size[0] == 2 * 192 and im.size[1] >= 192
    assert json.loads((out / "meta.json").read_text())["complete"] is True


def test_compare_reports_each_teacher_folder(labelled, tmp_path):
    """training.compare --teacher A,B: each folder's held-out split under its own key; the same
    hands under another folder name give the same numbers, and two folders of one name are
    refused (their keys would collide)."""
    import shutil

    from backend.network.runner import DEFAULT_CHECKPOINT
    from training.compare import compare

    _, out, meta = labelled
    second = shutil.copytree(out, tmp_path / "second")
    ckpt = str(DEFAULT_CHECKPOINT)
    entry = compare([ckpt], count=2, teacher=[str(out), str(second)])["checkpoints"][ckpt]
    assert entry["teacher-test:second"] == entry["teacher-test"]
    assert entry["teacher-test-box:second"] == entry["teacher-test-box"]
    assert entry["teacher-test-box"]["keypoints"] == 21 * meta["kept_by_split"]["test"]
    assert 0 < entry["teacher-test-box"]["mean_error_box"] < 1
    with pytest.raises(ValueError, match="distinct names"):
        compare([ckpt], count=2, teacher=[str(out), str(tmp_path / "x" / out.name)])
