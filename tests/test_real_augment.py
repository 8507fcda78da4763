"""Rotation and colour augmentation of real crops (training/data/common.py `RealAugment`).

The references are independent of the code under test: the rotation angle is recovered from the
2D labels by a least-squares fit, the 3D labels are checked against the camera's projection and a
weak-perspective fit, the pose against the MANO model's own joints, the image against a drawn dot,
and the default path against the code before the change (from git).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.crop import CROP_SIZE, crop_image
from training.data.common import (
    ITEM_KEYS,
    CropJitter,
    HandSample,
    RealAugment,
    build_item,
    colour_augment,
    project,
)

REPO = Path(__file__).resolve().parents[1]
BASE_COMMIT = "9170e83"  # the code before RealAugment
NO_COLOUR = RealAugment(
    brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=0.0
)
K = np.array([[300.0, 0.0, 170.0], [0.0, 300.0, 115.0], [0.0, 0.0, 1.0]])
C = CROP_SIZE / 2


def _sample(seed: int = 0, dot: int | None = None) -> HandSample:
    """A hand-sized cloud of 21 points 0.5 m in front of the camera, projected with K, on a grey
    320 x 240 image; `dot`: a white 3 x 3 block drawn on that keypoint (moved to a pixel centre)."""
    rng = np.random.default_rng(seed)
    kp3d = np.array([0.02, -0.01, 0.5]) + rng.uniform(-0.05, 0.05, (21, 3))
    kp2d = project(kp3d, K)
    image = np.full((240, 320, 3), 60, np.uint8)
    image[::7] = 90  # some texture so that crops differ
    if dot is not None:
        j, i = (int(v) for v in kp2d[dot])
        image[i - 1 : i + 2, j - 1 : j + 2] = 255
        kp2d[dot] = (j + 0.5, i + 0.5)
    pose = rng.normal(0, 0.3, (16, 3))
    return HandSample(image, kp2d, np.ones(21), 0, K=K, keypoints3d=kp3d, pose=pose)


def _angle(plain: torch.Tensor, turned: torch.Tensor) -> float:
    """The rotation about the crop centre that best maps `plain` 2D points onto `turned`."""
    a, b = (plain - C).double(), (turned - C).double()
    cross = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()
    dot = (a * b).sum()
    return math.atan2(float(cross), float(dot))


def _rz(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _weak_residual(uv: torch.Tensor, xyz: torch.Tensor) -> float:
    """RMS residual of the least-squares fit uv ~ s * xyz[:, :2] + t (orthographic, any s, t)."""
    x = xyz[:, :2].double()
    u = uv.double()
    xc, uc = x - x.mean(0), u - u.mean(0)
    s = (xc * uc).sum() / (xc * xc).sum()
    return float((uc - s * xc).square().sum(-1).mean().sqrt())


def _pair(seed: int = 0, index: int = 3, augment: RealAugment = NO_COLOUR):
    sample = _sample(seed)
    plain = build_item(sample, index)
    rng = np.random.default_rng([seed, 0, index])
    return sample, plain, build_item(sample, index, None, rng, augment)


def test_keypoints_turn_about_the_crop_centre_and_3d_about_the_camera_z_axis():
    _, plain, turned = _pair()
    theta = _angle(plain["keypoints2d"], turned["keypoints2d"])
    assert 1e-3 < abs(theta) <= math.radians(30)
    # the 2D labels are exactly the plain ones turned about the crop centre (y down: clockwise)
    r = _rz(theta)[:2, :2]
    expected = (plain["keypoints2d"].double() - C) @ r.T + C
    assert torch.allclose(turned["keypoints2d"].double(), expected, atol=1e-3)
    # 3D turned about the camera's z axis by the same angle, same sign
    kp3d = plain["keypoints3d"].double() @ _rz(theta).T
    assert torch.allclose(turned["keypoints3d"].double(), kp3d, atol=1e-6)
    # (a) the item's K projects the turned 3D onto the turned 2D (perspective, exact) ...
    proj = project(turned["keypoints3d"].double().numpy(), turned["K"].double().numpy())
    assert np.abs(proj - turned["keypoints2d"].double().numpy()).max() < 5e-3
    # ... and the weak-perspective fit is as good as before turning; the opposite sign is not
    before = _weak_residual(plain["keypoints2d"], plain["keypoints3d"])
    after = _weak_residual(turned["keypoints2d"], turned["keypoints3d"])
    assert after == pytest.approx(before, rel=1e-3, abs=1e-3)
    wrong = _weak_residual(turned["keypoints2d"], plain["keypoints3d"].double() @ _rz(-theta).T)
    assert wrong > before + 1.0


def test_a_quarter_turn_moves_a_point_right_of_centre_below_it():
    """Hand-computed: +90 degrees takes (C + 10, C) to (C, C + 10) and camera +x to +y."""
    from backend.crop import points_to_crop, rotation_z

    crop = torch.tensor([100.0, 100.0, 256.0], dtype=torch.float64)
    uv = torch.tensor([[110.0, 100.0]], dtype=torch.float64)
    out = points_to_crop(uv, crop, angle=math.pi / 2)
    assert torch.allclose(out, torch.tensor([[C, C + 10]], dtype=torch.float64), atol=1e-9)
    x = rotation_z(math.pi / 2) @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(x, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_global_orientation_turns_the_model_joints():
    """(b) MANO at the item's pose gives the plain joints turned by Rz (root-relative)."""
    from backend.hand_model.model import HandModel

    sample, plain, turned = _pair(seed=1)
    theta = _angle(plain["keypoints2d"], turned["keypoints2d"])
    model = HandModel("right", dtype=torch.float64)
    pose = torch.from_numpy(sample.pose)[None]
    kp = model(pose).keypoints[0]
    kp_turned = model(turned["pose"].double()[None]).keypoints[0]
    rel, rel_turned = kp - kp[:1], kp_turned - kp_turned[:1]
    assert (rel_turned - rel @ _rz(theta).T).norm(dim=-1).max() < 1e-5
    assert (rel_turned - rel).norm(dim=-1).max() > 1e-3  # it did turn
    assert torch.equal(turned["pose"][1:], torch.from_numpy(sample.pose[1:]).float())


def test_image_turns_with_the_keypoints():
    """(c) a white dot drawn at keypoint 8 lands at the turned keypoint 8 in the turned crop."""
    for seed in (0, 1, 2):
        sample = _sample(seed, dot=8)
        rng = np.random.default_rng([seed, 0, 0])
        item = build_item(sample, 0, CropJitter(), rng, NO_COLOUR)
        image = item["image"].mean(0)
        bright = image >= image.max() - 0.05
        ys, xs = torch.nonzero(bright, as_tuple=True)
        w = image[ys, xs]
        centre = torch.stack([(xs + 0.5) @ w, (ys + 0.5) @ w]) / w.sum()
        assert (centre - item["keypoints2d"][8]).norm() < 1.5, (
            seed,
            centre,
            item["keypoints2d"][8],
        )
    # a direct quarter turn of crop_image: the dot right of the centre shows below it
    image = np.zeros((64, 64, 3), np.uint8)
    image[32, 40] = 255  # centre (40.5, 32.5): (8.5, 0.5) from the crop centre (32, 32)
    out = crop_image(image, (32.0, 32.0, 64.0), 64, angle=math.pi / 2)
    # turned by +90 degrees: (-0.5, 8.5) from the centre, pixel centre (31.5, 40.5)
    i, j = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    assert (i, j) == (40, 31) and out[40, 31, 0] == 255


def test_deterministic_per_seed_epoch_index(tmp_path):
    from training.data.teacher_folder import TeacherFolder

    data = TeacherFolder(
        _teacher_folder(tmp_path), crop_jitter=CropJitter(), real_augment=RealAugment()
    )
    a, b = data[0], data[0]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    data.set_epoch(1)
    c = data[0]
    assert not torch.equal(a["image"], c["image"])
    assert not torch.equal(a["keypoints2d"], c["keypoints2d"])


def test_colour_changes_stay_in_range_and_can_be_turned_off():
    image = torch.rand(3, 32, 32)
    rng = np.random.default_rng(5)
    out = colour_augment(image, RealAugment(), rng)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.allclose(out, image, atol=1e-3)
    same = colour_augment(image, NO_COLOUR, np.random.default_rng(5))
    assert torch.allclose(same, image, atol=1e-6)
    grey = colour_augment(image, RealAugment(grayscale_p=1.0), np.random.default_rng(5))
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    # a blur keeps a flat image flat and lowers a lone bright pixel
    dot = torch.zeros(3, 16, 16)
    dot[:, 8, 8] = 1.0
    aug = RealAugment(
        brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_p=1.0
    )
    blurred = colour_augment(dot, aug, np.random.default_rng(0))
    assert float(blurred[0, 8, 8]) < 0.9 and float(blurred[0, 8, 9]) > 0.0
    assert float(blurred[0].sum()) == pytest.approx(1.0, abs=1e-4)


def _load_old_build_item():
    """build_item of BASE_COMMIT, with that commit's backend/crop.py (None without git history)."""
    try:
        files = {
            name: subprocess.run(
                ["git", "show", f"{BASE_COMMIT}:{path}"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for name, path in (
                ("old_crop", "backend/crop.py"),
                ("old_common", "training/data/common.py"),
            )
        }
    except (OSError, subprocess.CalledProcessError):
        return None
    files["old_common"] = files["old_common"].replace(
        "from backend.crop import", "from old_crop import"
    )
    modules = {}
    for name, text in files.items():
        spec = importlib.util.spec_from_loader(name, loader=None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        exec(compile(text, name, "exec"), module.__dict__)
        modules[name] = module
    return modules["old_common"]


def test_default_path_is_unchanged_bit_for_bit():
    old = _load_old_build_item()
    if old is None:
        pytest.skip(f"git history with {BASE_COMMIT} is absent")
    try:
        for seed in (0, 1):
            sample = _sample(seed)
            sample_old = old.HandSample(
                sample.image, sample.keypoints2d, sample.keypoints2d_vis, 0, K=K,
                keypoints3d=sample.keypoints3d,
            )  # fmt: skip
            sample.pose = None  # the old HandSample has no pose
            for jitter in (None, CropJitter()):
                rng = np.random.default_rng([seed, 0, 1])
                rng_old = np.random.default_rng([seed, 0, 1])
                new = build_item(sample, 1, jitter, rng)
                ref = old.build_item(sample_old, 1, jitter and old.CropJitter(), rng_old)
                assert set(new) == set(ref)
                for key in ref:
                    assert torch.equal(new[key], ref[key]), key
    finally:
        sys.modules.pop("old_crop", None)
        sys.modules.pop("old_common", None)


def _teacher_folder(root: Path) -> Path:
    """A one-sample `hamr.teacher/1` folder (the fields TeacherFolder reads) in `root`."""
    sample = _sample(3)
    (root / "crops").mkdir()
    Image.fromarray(sample.image).save(root / "crops" / "0000000.jpg", quality=95)
    (root / "meta.json").write_text(json.dumps({"format": "hamr.teacher/1"}))
    rec = {
        "id": 0,
        "split": "train",
        "side": "right",
        "keypoints2d": sample.keypoints2d.tolist(),
        "K": K.tolist(),
        "keypoints3d": sample.keypoints3d.tolist(),
        "pose": sample.pose.tolist(),
        "betas": [0.1] * 10,
        "weight_2d": 0.9,
        "weight_3d": 0.8,
    }
    (root / "samples.jsonl").write_text(json.dumps(rec) + "\n")
    return root


def test_teacher_folder_item_with_augment(tmp_path):
    from training.data.teacher_folder import TeacherFolder

    root = _teacher_folder(tmp_path)
    rec = json.loads((root / "samples.jsonl").read_text())
    plain = TeacherFolder(root)[0]
    assert torch.equal(plain["pose"], torch.tensor(rec["pose"], dtype=torch.float32))
    data = TeacherFolder(root, crop_jitter=CropJitter(), seed=4, real_augment=RealAugment())
    item = data[0]
    shapes = {
        "image": (3, CROP_SIZE, CROP_SIZE), "mask": (CROP_SIZE, CROP_SIZE),
        "keypoints2d": (21, 2), "keypoints3d": (21, 3), "pose": (16, 3), "betas": (10,),
        "K": (3, 3), "crop": (3,), "weight_2d": (), "weight_3d": (), "has_mano": (),
    }  # fmt: skip
    assert set(ITEM_KEYS) | {"weight_2d", "weight_3d"} == set(item)
    for key, shape in shapes.items():
        assert tuple(item[key].shape) == shape, key
        assert item[key].dtype == plain[key].dtype, key
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert float(item["has_mano"]) == 1 and float(item["has_K"]) == 0
    assert float(item["weight_2d"]) == pytest.approx(0.9)
    # its 3D projects onto its 2D through its K, as the plain item's does
    proj = project(item["keypoints3d"].double().numpy(), item["K"].double().numpy())
    assert np.abs(proj - item["keypoints2d"].double().numpy()).max() < 5e-3
    assert not torch.equal(item["pose"][0], plain["pose"][0])
    assert torch.equal(item["pose"][1:], plain["pose"][1:])


def test_train_config_switch(tmp_path):
    from training.train import TrainConfig

    assert TrainConfig().real_augment is False
    path = tmp_path / "c.toml"
    path.write_text("real_augment = true\n")
    assert TrainConfig.from_toml(path).real_augment is True
    path.write_text('real_augment = "yes"\n')
    with pytest.raises(ValueError, match="real_augment"):
        TrainConfig.from_toml(path)
