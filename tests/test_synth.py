"""The synthetic data engine: label consistency against independent recomputation, determinism,
and the on-disk round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.camera import project_points
from backend.hand_model.model import HandModel
from backend.network.camera import pixels_to_normalized, weak_project
from training.data.synthetic_folder import SyntheticFolder, decode_mask, encode_mask
from training.synth.engine import SynthConfig, SyntheticHands
from training.synth.prior import LIMITS_DEG, angles_to_pose, sample_digit_angles
from training.synthesize import batch_generator, synthesize


@pytest.fixture(scope="module")
def engine() -> SyntheticHands:
    return SyntheticHands(SynthConfig(left_fraction=0.5))


@pytest.fixture(scope="module")
def batch(engine) -> dict[str, torch.Tensor]:
    return engine.sample(12, torch.Generator().manual_seed(123))


def test_labels_reproduce_from_the_side_models(batch):
    """vertices == HandModel(side)(pose, betas) + transl, with each side's own model: this checks
    the mirror rule for left samples against the left model itself."""
    models = {0: HandModel("right"), 1: HandModel("left")}
    for i in range(batch["image"].shape[0]):
        side = int(batch["side"][i])
        out = models[side](
            batch["pose"][i : i + 1], batch["betas"][i : i + 1], batch["transl"][i : i + 1]
        )
        torch.testing.assert_close(out.vertices[0], batch["vertices"][i], atol=2e-5, rtol=0)
        torch.testing.assert_close(out.keypoints[0], batch["keypoints3d"][i], atol=2e-5, rtol=0)
    assert set(batch["side"].tolist()) == {0, 1}


def test_projected_3d_keypoints_equal_2d_labels(batch):
    proj = project_points(batch["keypoints3d"], batch["K"])
    torch.testing.assert_close(proj, batch["keypoints2d"], atol=1e-3, rtol=0)
    # the crop's K is the full image's K followed by the crop's affine map
    full = project_points(batch["keypoints3d"], batch["K_full"])
    crop = batch["crop"]
    back = full - (crop[:, None, :2] - crop[:, None, 2:] / 2)
    torch.testing.assert_close(back * (256 / crop[:, None, 2:]), proj, atol=1e-3, rtol=0)


def test_keypoints_fall_on_the_mask(batch):
    """Every keypoint inside the crop lies on, or within 4 px of, the hand's silhouette."""
    mask = batch["mask"]
    n, h, w = mask.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for i in range(n):
        pts = batch["keypoints2d"][i]
        inside = (pts >= 0).all(1) & (pts < 256).all(1)
        on = mask[i] > 0.5
        cand = torch.stack([xs[on], ys[on]], dim=1)
        d = torch.cdist(pts[inside], cand).amin(dim=1)
        assert d.max() < 4.0, f"sample {i}: keypoint {d.argmax()} is {d.max():.1f} px off the mask"


def test_hand_lies_inside_the_crop_and_fills_it(batch):
    mask = batch["mask"]
    area = mask.mean(dim=(1, 2))
    assert (area > 0.05).all() and (area < 0.8).all()
    border = torch.cat([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], dim=1)
    assert border.sum(dim=1).max() < 60, "the jittered crop may clip a little, not the whole hand"


def test_weak_camera_label_is_the_fit_of_the_side_models_keypoints(batch):
    """cam_weak is the closed-form weak-perspective fit of the hand (side's own model, no
    translation) to the crop keypoints; weak perspective ignores depth relief and off-axis
    viewing, so it only approximates the projection (close, off-centre hands are the worst)."""
    from backend.network.camera import fit_weak_perspective

    models = {0: HandModel("right"), 1: HandModel("left")}
    for i in range(batch["image"].shape[0]):
        side = int(batch["side"][i])
        kp = models[side](batch["pose"][i : i + 1], batch["betas"][i : i + 1]).keypoints
        target = pixels_to_normalized(batch["keypoints2d"][i : i + 1], 256)
        refit = fit_weak_perspective(kp, target)
        torch.testing.assert_close(batch["cam_weak"][i : i + 1], refit, atol=1e-4, rtol=1e-4)
        pred = weak_project(kp, batch["cam_weak"][i : i + 1])
        assert (pred - target).norm(dim=-1).median() < 0.15  # 19 px of a 256 crop


def test_images_are_valid_and_varied(batch):
    img = batch["image"]
    assert img.shape == (12, 3, 256, 256) and img.min() >= 0 and img.max() <= 1
    # the hand differs from its surroundings and images differ from each other
    assert img.flatten(1).std(dim=0).mean() > 0.1


def test_same_seed_same_data_other_seed_other_data(engine):
    a = engine.sample(3, torch.Generator().manual_seed(7))
    b = engine.sample(3, torch.Generator().manual_seed(7))
    c = engine.sample(3, torch.Generator().manual_seed(8))
    for k in ("image", "keypoints2d", "pose", "mask"):
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["pose"], c["pose"])


def test_pose_prior_respects_joint_limits():
    g = torch.Generator().manual_seed(0)
    angles = sample_digit_angles(2000, g)
    for k, digit in enumerate(LIMITS_DEG):
        lim = torch.tensor(LIMITS_DEG[digit])
        assert (angles[:, k] >= lim[:, 0] - 1e-4).all() and (angles[:, k] <= lim[:, 1] + 1e-4).all()
    # fingers flex on average (not a uniform mess): mean MCP flexion is positive
    assert angles[:, 1:, 0].mean() > 10


def test_prior_pose_matches_the_rotation_composition():
    """Joint 1 of each digit composes flex, spread and twist; check against rotation matrices."""
    from smplx.lbs import batch_rodrigues

    from backend.hand_model.poses import DIGIT_JOINTS, digit_axes

    model = HandModel("right", dtype=torch.float64)
    rest = model.rest_joints()[0]
    angles = torch.tensor([[[30.0, 20, 10, 12, 5]] * 5], dtype=torch.float64)
    pose = angles_to_pose(angles, rest)  # (1, 15, 3) joints 1..15
    axes = digit_axes(rest, "right")
    for digit, (j1, j2, _) in DIGIT_JOINTS.items():
        flex, spread = axes[digit]
        bone = rest[j2] - rest[j1]
        twist = bone / bone.norm()
        r = lambda aa: batch_rodrigues(aa[None])[0]  # noqa: E731
        expected = r(flex * np.radians(30)) @ r(spread * np.radians(12)) @ r(twist * np.radians(5))
        torch.testing.assert_close(r(pose[0, j1 - 1]), expected, atol=1e-8, rtol=0)


def test_mask_encoding_round_trip():
    rng = np.random.default_rng(0)
    full = rng.random((8, 8)) > 0.5
    visible = full & (rng.random((8, 8)) > 0.3)
    f, v = decode_mask(encode_mask(full, visible))
    assert np.array_equal(f > 0, full) and np.array_equal(v > 0, visible)


def test_dataset_round_trip_and_determinism(tmp_path):
    logs = []
    a = synthesize(
        20,
        tmp_path / "a",
        seed=5,
        image_format="png",
        preview=tmp_path / "grid.png",
        log=lambda *x, **k: logs.append(x),
    )
    b = synthesize(20, tmp_path / "b", seed=5, image_format="png", log=lambda *x, **k: None)
    ds_a, ds_b = SyntheticFolder(a), SyntheticFolder(b)
    assert len(ds_a) == 20 and (tmp_path / "grid.png").stat().st_size > 10_000
    # read back equals what the engine produced (batch 0 with this seed; PNG is lossless)
    engine = SyntheticHands(SynthConfig())
    ref = engine.sample(16, batch_generator(5, 0, torch.device("cpu")))
    for i in (0, 7, 15):
        item = ds_a[i]
        for k in ("keypoints2d", "keypoints3d", "pose", "betas", "transl", "K", "crop"):
            torch.testing.assert_close(item[k], ref[k][i].float(), atol=1e-6, rtol=0)
        assert int(item["side"]) == int(ref["side"][i])
        img = (ref["image"][i] * 255 + 0.5).clamp(0, 255).floor() / 255
        torch.testing.assert_close(item["image"], img, atol=1e-6, rtol=0)
        assert torch.equal(item["mask"], ref["mask"][i])
        for k in item:
            assert torch.equal(item[k], ds_b[i][k]), f"same seed must give the same data: {k}"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthesize(0, tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        SynthConfig(background_dir=str(tmp_path / "missing")) and SyntheticHands(
            SynthConfig(background_dir=str(tmp_path / "missing"))
        )
    with pytest.raises(FileNotFoundError):
        SyntheticFolder(tmp_path)
