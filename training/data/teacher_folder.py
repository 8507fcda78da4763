"""Reader of teacher-labelled real hands (`hamr.teacher/1`, written by `training.label_real`).

    DIR/meta.json, DIR/samples.jsonl, DIR/crops/NNNNNNN.jpg (format: training/label_real.py)

Each item crops the stored context crop exactly as every reader does (`common.build_item`: the
landmarks' box grown 10 %, `square_crop`, optional `CropJitter`), and packs `common.ITEM_KEYS`:
keypoints2d and keypoints2d_vis (all 1) from MediaPipe's image landmarks; keypoints3d (camera
frame, metres; training compares them root-relative) from the landmark fit; pose (16, 3) and betas
(10) of the fit with has_mano = 1 (the articulation and parameter terms); has_3d = 1, has_mask = 0
(no silhouette), has_K = 0 (the photo's focal length is a default guess). Plus the per-sample
loss weights `weight_2d` and `weight_3d` () float in [0, 1] (the labeller's confidence; they scale
the 2D / heat-map / camera terms and the 3D / bones / MANO terms in `training.losses.hamr_loss`).
Items keep the hand's own side; training flips left hands in (`transforms.flip_to_right`).
With `real_augment` (a `common.RealAugment`) the crops are also turned in-plane (2D, 3D, pose[0]
and K with them) and recoloured, deterministically per (seed, epoch, index).

split: "train" or "test" (the labeller's --holdout globs decide), None for every sample.
labels_2d: "landmarks" (the default: keypoints2d are MediaPipe's image landmarks, as above) or
"fit": the landmark fit's 3D keypoints projected through the crop's K, so that the 2D and
heat-map labels follow the hand model's joints (the convention of the synthetic labels and of
the network's own keypoints) instead of MediaPipe's, which sits a few millimetres off them at
the wrist, the thumb's base and the knuckles; the crop is then that projection's box, grown
alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .common import CropJitter, HandCropDataset, HandSample, RealAugment, load_rgb, project

FORMAT = "hamr.teacher/1"
SIDES = {"right": 0, "left": 1}
LABELS_2D = ("landmarks", "fit")


class TeacherFolder(HandCropDataset):
    name = "teacher-folder"

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        crop_jitter: CropJitter | None = None,
        seed: int = 0,
        min_weight: float = 0.0,
        real_augment: RealAugment | None = None,
        labels_2d: str = "landmarks",
    ) -> None:
        super().__init__(crop_jitter, seed, real_augment)
        if labels_2d not in LABELS_2D:
            raise ValueError(f"labels_2d must be one of {LABELS_2D}, got {labels_2d!r}")
        self.labels_2d = labels_2d
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a teacher-labelled folder (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT}")
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        records = []
        with (self.root / "samples.jsonl").open() as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut while the labeller writes
                    break
                if (split is None or rec["split"] == split) and rec["weight_2d"] >= min_weight:
                    records.append(rec)
        self.records = records
        self.split = split

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> HandSample:
        rec = self.records[index]
        image = load_rgb(self.root / "crops" / f"{rec['id']:07d}.jpg")
        K = np.asarray(rec["K"], np.float64)
        keypoints3d = np.asarray(rec["keypoints3d"], np.float64)
        if self.labels_2d == "fit":
            keypoints2d = project(keypoints3d, K)
        else:
            keypoints2d = np.asarray(rec["keypoints2d"], np.float64)
        return HandSample(
            image=image,
            keypoints2d=keypoints2d,
            keypoints2d_vis=np.ones(21),
            side=SIDES[rec["side"]],
            K=K,
            keypoints3d=keypoints3d,
            pose=np.asarray(rec["pose"], np.float64),
        )

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = super().__getitem__(index)  # the crop, its 2D/3D labels, pose (checks the index)
        rec = self.records[index % len(self)]
        item["betas"] = torch.tensor(rec["betas"], dtype=torch.float32)
        item["has_mano"] = torch.tensor(1.0)
        item["has_K"] = torch.tensor(0.0)
        item["weight_2d"] = torch.tensor(float(rec["weight_2d"]))
        item["weight_3d"] = torch.tensor(float(rec["weight_3d"]))
        return item
