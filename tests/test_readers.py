"""Dataset readers (training/data/{freihand,rhd,stb,samples,mix}.py) on tiny fixtures written in the
official layouts (tests/reader_fixtures.py) and on the real photos of ../shared/samples.

Every check compares with truth computed independently of the readers: the fixtures' 3D points
and K, projections and crop maps written out here, joint orders spelled by name in the fixtures.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.reader_fixtures import (
    FREIHAND_VERSION_RGB,
    MARKER_RGB,
    STB_K,
    project,
    write_freihand,
    write_rhd,
    write_stb,
    write_synthetic_folder,
)
from training.data.common import ITEM_KEYS, CropJitter
from training.data.freihand import FreiHAND
from training.data.mix import DATASET_NAMES, LABEL_WEIGHT_KEYS, MixedDataset, build_dataset
from training.data.rhd import RHD
from training.data.samples import DEFAULT_SAMPLES_ROOT, SampleSet
from training.data.stb import STB
from training.data.synthetic_folder import SyntheticFolder

SIZE = 256
needs_samples = pytest.mark.skipif(
    not DEFAULT_SAMPLES_ROOT.is_dir(), reason=f"{DEFAULT_SAMPLES_ROOT} is absent"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Per-item torch work is tiny; with 2 busy cores, intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def freihand_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("FreiHAND_pub_v2")
    return root, write_freihand(root)


@pytest.fixture(scope="module")
def rhd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("RHD_published_v2")
    return root, write_rhd(root, "training")


@pytest.fixture(scope="module")
def stb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("STB")
    return root, write_stb(root)


def crop_matrix(crop) -> np.ndarray:
    """(3,) crop (cx, cy, side) -> (3, 3) image-to-crop pixel map, written out independently."""
    cx, cy, side = (float(c) for c in crop)
    s = SIZE / side
    return np.array([[s, 0, -(cx - side / 2) * s], [0, s, -(cy - side / 2) * s], [0, 0, 1]])


def pixel(image: torch.Tensor, uv) -> np.ndarray:
    """RGB (0-255) of the crop pixel that contains crop point uv."""
    j, i = int(np.floor(float(uv[0]))), int(np.floor(float(uv[1])))
    return image[:, i, j].numpy() * 255


def check_geometry(item: dict, K_image: np.ndarray | None = None) -> None:
    """2D = projection of 3D through the item's K; annotated keypoints inside the crop; K of the
    crop = crop map x the image's K."""
    assert set(ITEM_KEYS) <= set(item)
    vis = item["keypoints2d_vis"].numpy() > 0
    uv = item["keypoints2d"].numpy()
    assert (uv[vis] >= 0).all() and (uv[vis] <= SIZE).all()
    if item["has_3d"] > 0:
        kp3d = item["keypoints3d"].double().numpy()
        np.testing.assert_allclose(uv, project(kp3d, item["K"].double().numpy()), atol=1e-3)
    if K_image is not None:
        expected = crop_matrix(item["crop"]) @ K_image
        np.testing.assert_allclose(item["K"].numpy(), expected, rtol=1e-5, atol=1e-3)


def check_crop_placement(item: dict, uv_image: np.ndarray) -> None:
    """The crop is square_crop of the annotated keypoints' box grown by 10 % of its longer side
    each way: centre = box centre, side = 1.3 * 1.2 * longer side."""
    pts = uv_image[item["keypoints2d_vis"].numpy() > 0]
    lo, hi = pts.min(0), pts.max(0)
    expected = [*(lo + hi) / 2, 1.3 * 1.2 * (hi - lo).max()]
    np.testing.assert_allclose(item["crop"].numpy(), expected, rtol=1e-5)


# FreiHAND ----------------------------------------------------------------------------------------
def test_freihand_items_match_truth_and_version_mapping(freihand_root):
    root, truth = freihand_root
    ds = FreiHAND(root, "training")
    assert len(ds) == 8  # 2 unique samples x 4 versions
    for i in range(len(ds)):
        item, j = ds[i], i % 2  # image i shows sample i % 2 over background version i // 2
        xyz, K = truth["training"]["xyz"][j], truth["training"]["K"][j]
        np.testing.assert_allclose(item["keypoints3d"].numpy(), xyz, atol=1e-6)
        check_geometry(item, K)
        check_crop_placement(item, project(xyz, K))
        assert item["side"] == 0 and item["index"] == i
        assert (item["has_3d"], item["has_K"], item["has_mask"], item["has_mano"]) == (1, 1, 1, 0)
        assert torch.equal(item["keypoints3d_valid"], torch.ones(21))
        np.testing.assert_allclose(
            pixel(item["image"], item["keypoints2d"][4]), MARKER_RGB, atol=30
        )  # the thumb tip marker
        np.testing.assert_allclose(
            pixel(item["image"], item["keypoints2d"][0]), FREIHAND_VERSION_RGB[i // 2], atol=12
        )
        assert not (item["pose"].any() or item["betas"].any() or item["cam_weak"].any())


def test_freihand_mask_lands_where_points_to_crop_says(freihand_root):
    """The fixture's mask is a 9x9 square on the middle-finger MCP's pixel of the unique sample;
    every version of that sample uses it."""
    root, truth = freihand_root
    ds = FreiHAND(root, "training")
    for i in (1, 5):
        item = ds[i]
        xyz, K = truth["training"]["xyz"][1], truth["training"]["K"][1]
        centre = crop_matrix(item["crop"]) @ np.append(np.floor(project(xyz, K)[9]) + 0.5, 1)
        assert item["mask"][int(centre[1]), int(centre[0])] == 1
        scale = SIZE / float(item["crop"][2])
        assert item["mask"].sum() == pytest.approx((9 * scale) ** 2, rel=0.25)
        assert torch.equal(item["mask_visible"], item["mask"])


def test_freihand_evaluation_exposes_gt_vertices(freihand_root):
    root, truth = freihand_root
    ds = FreiHAND(root, "evaluation")
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        check_geometry(item, truth["evaluation"]["K"][i])
        np.testing.assert_allclose(
            item["vertices_gt"].numpy(), truth["evaluation"]["verts"][i], atol=1e-6
        )
        assert item["has_mask"] == 0 and not item["mask"].any() and not item["mask_visible"].any()


def test_freihand_evaluation_without_annotations(tmp_path):
    write_freihand(tmp_path, eval_labels=False)
    item = FreiHAND(tmp_path, "evaluation")[0]
    assert item["has_3d"] == 0 and not item["keypoints2d_vis"].any()
    assert "vertices_gt" not in item
    np.testing.assert_allclose(item["crop"].numpy(), [112, 112, 224 * 1.3], rtol=1e-6)


def test_freihand_counts_versions_present(tmp_path):
    write_freihand(tmp_path)
    for i in range(4, 8):  # remove the last two background versions
        (tmp_path / "training" / "rgb" / f"{i:08d}.jpg").unlink()
    assert len(FreiHAND(tmp_path, "training")) == 4
    with pytest.raises(FileNotFoundError, match="FreiHAND"):
        FreiHAND(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        FreiHAND(tmp_path, "test")


# RHD ---------------------------------------------------------------------------------------------
def test_rhd_hand_selection_sides_and_visibility(rhd_root):
    """Image 0 gives both hands, image 1 only its right hand (the left has 5 visible keypoints),
    image 2 nothing (tiny left hand, invisible right hand)."""
    root, truth = rhd_root
    ds = RHD(root, "training")
    expected = [(0, "left"), (0, "right"), (1, "right")]
    assert len(ds) == len(expected)
    for i, (image, side) in enumerate(expected):
        item, hand = ds[i], truth[image][side]
        assert item["side"] == {"right": 0, "left": 1}[side]
        np.testing.assert_allclose(item["keypoints3d"].numpy(), hand["xyz"], atol=1e-6)
        np.testing.assert_array_equal(item["keypoints2d_vis"].numpy(), hand["vis"])
        assert torch.equal(item["keypoints3d_valid"], torch.ones(21))
        check_geometry(item, truth[image]["K"])
        check_crop_placement(item, project(hand["xyz"], truth[image]["K"]))
        np.testing.assert_allclose(
            pixel(item["image"], item["keypoints2d"][4]), MARKER_RGB, atol=30
        )


def test_rhd_masks_follow_the_hand_class_range(rhd_root):
    """Squares of the hand's own class (at the wrist) are in its mask; the other hand's class (at
    its index tip) and the person class (at its pinky tip) are not."""
    root, truth = rhd_root
    ds = RHD(root, "training")
    for i, (image, side) in enumerate([(0, "left"), (0, "right"), (1, "right")]):
        item = ds[i]
        uv = project(truth[image][side]["xyz"], truth[image]["K"])
        m = crop_matrix(item["crop"])
        assert item["has_mask"] == 1
        for keypoint, inside in ((0, 1), (8, 0), (20, 0)):
            c = m @ np.append(np.floor(uv[keypoint]) + 0.5, 1)
            if 0 <= c[0] < SIZE and 0 <= c[1] < SIZE:
                assert item["mask"][int(c[1]), int(c[0])] == inside, (i, keypoint)
        assert torch.equal(item["mask_visible"], item["mask"])


# STB ---------------------------------------------------------------------------------------------
def test_stb_palm_order_frame_and_side(stb_root):
    root, truth = stb_root
    ds = STB(root, "test")
    frames = [("B1Counting", 0), ("B1Counting", 1), ("B1Random", 0), ("B1Random", 1)]
    assert len(ds) == len(frames)
    for i, (seq, f) in enumerate(frames):
        item, xyz = ds[i], truth[seq][f]
        # keypoint 0 holds the palm centre, flagged out of 2D and 3D supervision
        np.testing.assert_allclose(item["keypoints3d"].numpy(), xyz, atol=1e-6)
        assert item["keypoints3d_valid"][0] == 0 and item["keypoints2d_vis"][0] == 0
        assert item["keypoints3d_valid"][1:].all() and item["keypoints2d_vis"][1:].all()
        assert item["side"] == 1  # STB hands are left hands
        check_geometry(item, STB_K)
        check_crop_placement(item, project(xyz, STB_K))
        np.testing.assert_allclose(
            pixel(item["image"], item["keypoints2d"][4]), MARKER_RGB, atol=30
        )


def test_stb_train_split_and_errors(stb_root, tmp_path):
    root, truth = stb_root
    ds = STB(root, "train")
    seqs = [f"B{b}{k}" for b in range(2, 7) for k in ("Counting", "Random")]
    assert len(ds) == len(seqs)
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(ds[i]["keypoints3d"].numpy(), truth[seq][0], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="B1Counting_SK.mat"):
        STB(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        STB(root, "evaluation")


# Crop jitter -------------------------------------------------------------------------------------
def test_crop_jitter_is_deterministic_per_seed_epoch_and_index(freihand_root):
    root, truth = freihand_root
    jitter = CropJitter(scale=(0.9, 1.15), shift=0.08)
    a, b = FreiHAND(root, crop_jitter=jitter, seed=3), FreiHAND(root, crop_jitter=jitter, seed=3)
    plain = FreiHAND(root)
    for i in range(3):
        item = a[i]
        assert torch.equal(item["crop"], b[i]["crop"])
        assert torch.equal(item["image"], b[i]["image"])
        check_geometry(item, truth["training"]["K"][i % 2])
        base = plain[i]["crop"]
        ratio = float(item["crop"][2] / base[2])
        assert 0.9 <= ratio <= 1.15 and ratio != 1
        assert (item["crop"][:2] - base[:2]).abs().max() <= 0.08 * base[2] + 1e-4
    assert not torch.equal(a[0]["crop"], FreiHAND(root, crop_jitter=jitter, seed=4)[0]["crop"])
    before = a[0]["crop"]
    a.set_epoch(1)
    assert not torch.equal(a[0]["crop"], before)


# MixedDataset and build_dataset ------------------------------------------------------------------
def test_mixed_dataset_weights_and_determinism(freihand_root, rhd_root):
    datasets = [FreiHAND(freihand_root[0]), RHD(rhd_root[0])]
    mix = MixedDataset(datasets, [3.0, 1.0], length=4000, seed=7)
    draws = [mix.locate(i) for i in range(len(mix))]
    share = np.mean([d == 0 for d, _ in draws])
    assert share == pytest.approx(0.75, abs=0.03)  # binomial sd 0.007
    for d in (0, 1):  # items uniform within each dataset
        counts = np.bincount([j for s, j in draws if s == d], minlength=len(datasets[d]))
        expected = sum(s == d for s, _ in draws) / len(datasets[d])
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    assert draws == [MixedDataset(datasets, [3, 1], 4000, seed=7).locate(i) for i in range(4000)]
    assert draws != [MixedDataset(datasets, [3, 1], 4000, seed=8).locate(i) for i in range(4000)]
    mix.set_epoch(1)
    assert draws != [mix.locate(i) for i in range(4000)]
    assert {d for d, _ in (MixedDataset(datasets, [0, 1], 50).locate(i) for i in range(50))} == {1}


def test_mixed_items_collate_with_the_synthetic_folder(freihand_root, rhd_root, tmp_path):
    synth = SyntheticFolder(write_synthetic_folder(tmp_path / "synth"))
    datasets = [FreiHAND(freihand_root[0], "evaluation"), RHD(rhd_root[0]), synth]
    mix = MixedDataset(datasets, [1, 1, 1], length=24, seed=0)
    items = [mix[i] for i in range(len(mix))]
    for item in items:
        assert set(item) == set(ITEM_KEYS) | {"source"} | set(LABEL_WEIGHT_KEYS)
        assert float(item["weight_2d"]) == float(item["weight_3d"]) == 1.0  # exact labels
        source, j = int(item["source"]), int(item["index"])
        assert datasets[source][j]["keypoints3d"].equal(item["keypoints3d"])
    assert {int(it["source"]) for it in items} == {0, 1, 2}
    batch = torch.utils.data.default_collate(items)
    assert batch["image"].shape == (24, 3, SIZE, SIZE) and batch["side"].dtype == torch.long
    synthetic = batch["source"] == 2
    assert batch["has_K"][synthetic].all() and batch["keypoints3d_valid"][synthetic].all()


def test_mixed_dataset_rejects_bad_arguments(freihand_root):
    ds = [FreiHAND(freihand_root[0])]
    with pytest.raises(ValueError, match="weights"):
        MixedDataset(ds, [1.0, 2.0], 10)
    with pytest.raises(ValueError, match="non-negative"):
        MixedDataset(ds, [0.0], 10)
    with pytest.raises(ValueError, match="length"):
        MixedDataset(ds, [1.0], 0)


def test_build_dataset_names_paths_and_errors(freihand_root, rhd_root, stb_root, tmp_path):
    fh = build_dataset(f"freihand:{freihand_root[0]}", "train")
    assert isinstance(fh, FreiHAND) and fh.split == "training"
    assert build_dataset(f"freihand:{freihand_root[0]}", "test").split == "evaluation"
    assert isinstance(build_dataset(f"rhd:{rhd_root[0]}", "train"), RHD)
    assert len(build_dataset(f"stb:{stb_root[0]}", "test")) == 4
    jittered = build_dataset(f"stb:{stb_root[0]}", "train", crop_jitter=CropJitter(), seed=2)
    assert jittered.crop_jitter == CropJitter() and jittered.seed == 2
    synth = write_synthetic_folder(tmp_path / "synth")
    assert isinstance(build_dataset(f"synthetic-folder:{synth}", "train"), SyntheticFolder)
    with pytest.raises(ValueError, match="unknown dataset 'coco'.*freihand, rhd, stb"):
        build_dataset("coco:/data", "train")
    with pytest.raises(ValueError, match="'rhd' needs a path"):
        build_dataset("rhd", "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(f"stb:{tmp_path / 'missing'}", "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset(f"stb:{stb_root[0]}", "val")
    with pytest.raises(FileNotFoundError, match="samples folder"):
        build_dataset(f"samples-panoptic:{tmp_path / 'missing'}", "test")
    assert "samples-interhand2.6m" in DATASET_NAMES


# The real photos of ../shared/samples ------------------------------------------------------------
@needs_samples
@pytest.mark.parametrize(
    "name, count", [("freihand", 8), ("onehand10k", 4), ("panoptic", 4), ("interhand2.6m", 6)]
)
def test_sample_sets_load_every_annotated_hand(name, count):
    ds = build_dataset(f"samples-{name}", "test")
    assert isinstance(ds, SampleSet) and len(ds) == count
    for i in range(len(ds)):
        item = ds[i]
        check_geometry(item)
        assert item["has_3d"] == (name == "interhand2.6m") and item["has_mano"] == 0
        assert item["has_K"] == (name == "interhand2.6m")


@needs_samples
def test_sample_sets_sides_and_visibility():
    panoptic = SampleSet(None, "panoptic")
    data = json.loads((DEFAULT_SAMPLES_ROOT / "panoptic" / "test_panoptic.json").read_text())
    files = [im["file_name"] for im in data["images"]]
    sides = [int(panoptic[i]["side"]) for i in range(len(panoptic))]
    assert sides == [int(f.endswith("_l.jpg")) for f in files]
    onehand = SampleSet(None, "onehand10k")
    assert onehand[0]["keypoints2d_vis"][0] == 0  # 9.jpg: unlabelled wrist
    assert onehand[0]["keypoints2d_vis"][1:].all()


@needs_samples
def test_interhand_samples_match_their_2d_labels_and_sides():
    data = json.loads(
        (DEFAULT_SAMPLES_ROOT / "interhand2.6m" / "annotations_derived.json").read_text()
    )
    expected = [
        (s, side) for s in data["samples"] for side in ("right", "left") if any(s[side]["valid"])
    ]
    ds = SampleSet(DEFAULT_SAMPLES_ROOT, "interhand2.6m")
    assert len(ds) == len(expected)
    for i, (sample, side) in enumerate(expected):
        item = ds[i]
        assert item["side"] == {"right": 0, "left": 1}[side]
        check_geometry(item, np.asarray(sample["K"]))
        uv_image = np.linalg.solve(
            crop_matrix(item["crop"]), np.c_[item["keypoints2d"].double().numpy(), np.ones(21)].T
        ).T
        np.testing.assert_allclose(uv_image[:, :2], sample[side]["joints_2d"], atol=2e-3)
        np.testing.assert_allclose(
            item["keypoints3d"].numpy(), sample[side]["joints_cam_m"], atol=1e-6
        )
