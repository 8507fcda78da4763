"""FreiHAND reader (Zimmermann et al., "FreiHAND: A Dataset for Markerless Capture of Hand Pose and
Shape from Single RGB Images", ICCV 2019), official release FreiHAND_pub_v2 (+ _eval).

Expected on disk (ROOT = the unpacked FreiHAND_pub_v2 folder):

    ROOT/training/rgb/%08d.jpg     224x224; 130240 = 32560 unique samples x 4 versions
                                   (green screen, then three background replacements): image i
                                   shows sample i % 32560
    ROOT/training/mask/%08d.jpg    hand masks of the 32560 unique samples, valid for all versions
    ROOT/training_K.json           (32560, 3, 3) intrinsics
    ROOT/training_xyz.json         (32560, 21, 3) keypoints, camera frame, metres
    ROOT/evaluation/rgb/%08d.jpg   3960 images
    ROOT/evaluation_K.json         (3960, 3, 3)
    ROOT/evaluation_xyz.json       optional (released later with FreiHAND_pub_v2_eval)
    ROOT/evaluation_verts.json     optional (3960, 778, 3) MANO mesh vertices, camera frame, metres

Conventions converted: none are needed. FreiHAND's 21 keypoints are already in the project's
order, its camera frame has OpenCV axes, units are metres; the 2D keypoints are the projection of
xyz through K (that is how FreiHAND defines them). Every hand is a right hand. Versions present are
detected from the first image of each block of 32560 (a partial download of only the green-screen
version works). training_mano.json and training_verts.json are not read: MANO fits of other
datasets are not used (has_mano = 0). The evaluation split has no masks; without
evaluation_xyz.json its items carry no keypoints (vis 0) and the crop is square_crop of the whole
image. When evaluation_verts.json exists, evaluation items add `vertices_gt` (778, 3) (MANO
topology; the evaluator uses it for PA-MPVPE / F-score only for models with that topology).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .common import CropJitter, HandCropDataset, HandSample, load_rgb, project

SPLITS = ("training", "evaluation")
MAX_VERSIONS = 4  # green screen + 3 background versions of the training set


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    with open(path) as f:
        return np.asarray(json.load(f), np.float64).reshape(shape)


class FreiHAND(HandCropDataset):
    """FreiHAND_pub_v2 items (module docstring); `split` is 'training' or 'evaluation'."""

    name = "freihand"

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        crop_jitter: CropJitter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(crop_jitter, seed)
        if split not in SPLITS:
            raise ValueError(f"FreiHAND split must be one of {SPLITS}, got {split!r}")
        self.root, self.split = Path(root), split
        k_path = self.root / f"{split}_K.json"
        if not k_path.exists():
            raise FileNotFoundError(
                f"{self.root} is not a FreiHAND_pub_v2 folder (no {k_path.name})"
            )
        self.K = _load_array(k_path, (-1, 3, 3))  # (n, 3, 3)
        self.unique = len(self.K)
        xyz_path = self.root / f"{split}_xyz.json"
        self.xyz = _load_array(xyz_path, (-1, 21, 3)) if xyz_path.exists() else None
        verts_path = self.root / "evaluation_verts.json"
        self.verts = None  # (n, 778, 3) float32, evaluation only
        if split == "evaluation" and verts_path.exists():
            self.verts = _load_array(verts_path, (-1, 778, 3)).astype(np.float32)
        for what, arr in (("xyz", self.xyz), ("verts", self.verts)):
            if arr is not None and len(arr) != self.unique:
                raise ValueError(f"{split}_{what}: {len(arr)} entries for {self.unique} K")
        self.versions = self._count_versions() if split == "training" else 1
        self.mask_dir = self.root / "training" / "mask"
        self.has_masks = split == "training" and self.mask_dir.is_dir()

    def _image_path(self, i: int) -> Path:
        return self.root / self.split / "rgb" / f"{i:08d}.jpg"

    def _count_versions(self) -> int:
        versions = 0
        while versions < MAX_VERSIONS and self._image_path(versions * self.unique).exists():
            versions += 1
        if versions == 0:
            raise FileNotFoundError(f"no FreiHAND images: {self._image_path(0)} is missing")
        return versions

    def __len__(self) -> int:
        return self.unique * self.versions

    def label_index(self, index: int) -> int:
        """The unique sample (row of the json files) shown by image `index`."""
        return index % self.unique

    def load(self, index: int) -> HandSample:
        j = self.label_index(index)
        image = load_rgb(self._image_path(index))
        K = self.K[j]
        if self.xyz is None:  # unlabelled evaluation images: the crop is the whole image
            h, w = image.shape[:2]
            box = np.array([0.0, 0.0, w, h])
            sample = HandSample(image, np.zeros((21, 2)), np.zeros(21), side=0, K=K, box_xyxy=box)
        else:
            xyz = self.xyz[j]
            sample = HandSample(image, project(xyz, K), np.ones(21), side=0, K=K, keypoints3d=xyz)
        if self.has_masks:
            mask_rgb = load_rgb(self.mask_dir / f"{j:08d}.jpg")
            sample.mask = mask_rgb[..., 0] >= 128  # JPEG-compressed 0/255 mask
        if self.verts is not None:
            sample.extra["vertices_gt"] = torch.from_numpy(self.verts[j])
        return sample
