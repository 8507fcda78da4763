"""Readers for the small real-photo sets in ../shared/samples (see its README.md and each folder's
SOURCE.txt): smoke checks of 2D / 3D accuracy and left/right handling, far too few to train on.

Expected on disk (ROOT = the samples folder, by default `DEFAULT_SAMPLES_ROOT`, i.e.
../shared/samples next to the repository; it is not shipped, so callers skip when it is absent):

    ROOT/freihand/test_freihand.json        COCO keypoints, 224x224 FreiHAND training images
    ROOT/onehand10k/test_onehand10k.json    COCO keypoints, in-the-wild photos
    ROOT/panoptic/test_panoptic.json        COCO keypoints, CMU Panoptic HandDB manual labels
    ROOT/interhand2.6m/annotations_derived.json
        {"description", "joint_order", "samples": [{"image", "width", "height", "K",
        "right" / "left": {"joints_cam_m" (21, 3), "joints_2d" (21, 2), "valid" (21,)}}]}
    (images next to each annotation file, named as the annotations say)

Conventions converted:
- COCO sets: 21 keypoints (x, y, v), already in the project's order (the reader checks the
  category's keypoint names); v > 0 means annotated (OneHand10K 9.jpg has an unlabelled wrist:
  v = 0, so keypoints2d_vis = 0 there). No 3D, no K (has_K = 0, `default_intrinsics`).
  Side: FreiHAND has right hands only (0); Panoptic HandDB names each hand's image _l / _r (left /
  right; the _l/_r pairs are the same photo, one file per annotated hand: checked by eye on both
  sample photos, e.g. the cellist's fingerboard hand is _l); OneHand10K records no side: 0, unknown.
- InterHand2.6M: the derived file's joint_order is wrist, then thumb, index, middle, ring, pinky
  each mcp -> pip -> dip -> tip, i.e. the project's order (checked); joints_cam_m is camera frame,
  metres, OpenCV axes; K is the image's; `valid` is InterHand's joint_valid (a hand whose joints are
  all invalid is not an item). The side is the annotation's key ("right" / "left"), not the file's
  chirality_heuristic. 2D keypoints are the projection of joints_cam_m through K (equal to
  joints_2d); has_3d = 1, keypoints3d_valid = keypoints2d_vis = valid.
Items follow training/data/common.py; `index` counts hands in file order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import CropJitter, HandCropDataset, HandSample, load_rgb, project

DEFAULT_SAMPLES_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
COCO_FILES = {
    "freihand": "test_freihand.json",
    "onehand10k": "test_onehand10k.json",
    "panoptic": "test_panoptic.json",
}
NAMES = (*COCO_FILES, "interhand2.6m")
# COCO keypoint names of the mmpose-converted hand sets: the project's order under other names.
_COCO_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
COCO_KEYPOINT_NAMES = ("wrist",) + tuple(f"{f}{k}" for f in _COCO_FINGERS for k in range(1, 5))
_INTERHAND_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
INTERHAND_JOINT_ORDER = ("wrist",) + tuple(
    f"{f}_{j}" for f in _INTERHAND_FINGERS for j in ("mcp", "pip", "dip", "tip")
)
SIDES = {"right": 0, "left": 1}


@dataclass
class _Hand:
    """One annotated hand of a sample set, before its image is read."""

    file: str  # image file name in the set's folder
    uv: np.ndarray  # (21, 2) image pixels
    vis: np.ndarray  # (21,) 1 annotated
    side: int  # 0 right, 1 left
    K: np.ndarray | None = None  # (3, 3)
    xyz: np.ndarray | None = None  # (21, 3) camera frame, metres


def _coco_side(name: str, file_name: str) -> int:
    """0 right / 1 left for one COCO image (module docstring)."""
    if name == "panoptic":
        stem = Path(file_name).stem
        if stem.endswith("_l"):
            return 1
        if stem.endswith("_r"):
            return 0
        raise ValueError(f"panoptic image {file_name!r} does not end in _l or _r")
    return 0


class SampleSet(HandCropDataset):
    """One sample set's hands: `name` in NAMES; `root` None means DEFAULT_SAMPLES_ROOT."""

    def __init__(
        self,
        root: str | Path | None,
        name: str,
        crop_jitter: CropJitter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(crop_jitter, seed)
        if name not in NAMES:
            raise ValueError(f"unknown sample set {name!r}; known: {', '.join(NAMES)}")
        self.name = f"samples-{name}"
        self.dir = Path(DEFAULT_SAMPLES_ROOT if root is None else root) / name
        if not self.dir.is_dir():
            raise FileNotFoundError(f"sample set folder not found: {self.dir}")
        if name == "interhand2.6m":
            self.hands = self._read_interhand(self.dir / "annotations_derived.json")
        else:
            self.hands = self._read_coco(self.dir / COCO_FILES[name], name)

    def _read_coco(self, path: Path, name: str) -> list[_Hand]:
        data = json.loads(path.read_text())
        names = tuple(data["categories"][0]["keypoints"])
        if names != COCO_KEYPOINT_NAMES:
            raise ValueError(f"{path}: unexpected keypoint order {names}")
        files = {im["id"]: im["file_name"] for im in data["images"]}
        hands = []
        for ann in data["annotations"]:
            kp = np.asarray(ann["keypoints"], np.float64).reshape(21, 3)
            if not (kp[:, 2] > 0).any():
                continue
            file_name = files[ann["image_id"]]
            vis = (kp[:, 2] > 0).astype(np.float64)
            hands.append(_Hand(file_name, kp[:, :2], vis, _coco_side(name, file_name)))
        return hands

    def _read_interhand(self, path: Path) -> list[_Hand]:
        data = json.loads(path.read_text())
        if tuple(data["joint_order"]) != INTERHAND_JOINT_ORDER:
            raise ValueError(f"{path}: unexpected joint_order {data['joint_order']}")
        hands = []
        for sample in data["samples"]:
            K = np.asarray(sample["K"], np.float64)
            for side_name, side in SIDES.items():
                hand = sample.get(side_name)
                if hand is None or not any(hand["valid"]):
                    continue
                xyz = np.asarray(hand["joints_cam_m"], np.float64)
                vis = np.asarray(hand["valid"], np.float64)
                hands.append(_Hand(sample["image"], project(xyz, K), vis, side, K, xyz))
        return hands

    def __len__(self) -> int:
        return len(self.hands)

    def load(self, index: int) -> HandSample:
        hand = self.hands[index]
        return HandSample(
            image=load_rgb(self.dir / hand.file),
            keypoints2d=hand.uv,
            keypoints2d_vis=hand.vis,
            side=hand.side,
            K=hand.K,
            keypoints3d=hand.xyz,
            keypoints3d_valid=None if hand.xyz is None else hand.vis,
        )
