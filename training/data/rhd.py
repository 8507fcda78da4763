"""RHD reader: Rendered Hand Pose dataset (Zimmermann & Brox, "Learning to Estimate 3D Hand Pose
from Single RGB Images", ICCV 2017), release RHD_published_v2.

Expected on disk (ROOT = the unpacked RHD_published_v2 folder, SPLIT = training | evaluation):

    ROOT/SPLIT/color/%05d.png        320x320 RGB renders
    ROOT/SPLIT/mask/%05d.png         8-bit class map: 0 background, 1 person,
                                     2-17 left hand parts, 18-33 right hand parts
    ROOT/SPLIT/anno_SPLIT.pickle     {image index: {'xyz': (42, 3) metres, camera frame,
                                     'uv_vis': (42, 3) (u, v, visible 0/1), 'K': (3, 3)}}

Conventions (checked against the dataset authors' code, github.com/lmb-freiburg/hand3d,
create_binary_db.py and data/BinaryDbReader.py, which read uv_vis[:, 2] == 1 as visibility, take
keypoints 0-20 as the left hand and 21-41 as the right one, and mask classes 2-17 as left, > 17 as
right): within each hand RHD's order is 0 wrist, then thumb, index, middle, ring, little, each from
TIP to MCP (1 thumb tip ... 4 thumb mcp). Converted here to the project's order by reversing each
finger (`RHD_TO_OURS`). The camera frame has OpenCV axes, metres. 2D keypoints are the projection
of xyz through K (so 2D and 3D labels agree exactly); uv_vis supplies visibility only. K is used as
given: whether RHD's K puts pixel centres at integers or at j + 0.5 (the project's convention) is
not documented; the difference is at most half a pixel.

Items: one per (image, hand) whose hand has at least MIN_VISIBLE visible keypoints spanning at
least MIN_BOX_PX pixels; `side` 1 for the left hand (keypoints 0-20), 0 for the right; the mask is
that hand's class range (the visible rendered hand: mask_visible = mask). keypoints2d_vis is RHD's
visibility flag (occluded or out-of-frame keypoints are 0), 3D is valid for all 21 keypoints. Note
that the common RHD evaluation protocol (hand3d) keeps one hand per image, the one with more mask
pixels; this reader keeps every hand that passes the thresholds above.
The annotation file is a pickle: load only files you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from .common import CropJitter, HandCropDataset, HandSample, keypoint_extent, load_rgb

SPLITS = ("training", "evaluation")
MIN_VISIBLE = 10  # visible keypoints a hand needs to become an item
MIN_BOX_PX = 16.0  # longer side of its visible keypoints' box, pixels
# RHD index of each of the project's 21 keypoints: wrist, then each finger reversed (mcp..tip).
RHD_TO_OURS: tuple[int, ...] = (0,) + tuple(1 + 4 * f + 3 - k for f in range(5) for k in range(4))
HAND_OFFSET = {1: 0, 0: 21}  # side -> first of its 21 keypoints in the 42 (left first)
MASK_CLASSES = {1: (2, 17), 0: (18, 33)}  # side -> inclusive range of its hand-part classes


class RHD(HandCropDataset):
    """RHD_published_v2 items (module docstring); `split` is 'training' or 'evaluation'."""

    name = "rhd"

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        crop_jitter: CropJitter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(crop_jitter, seed)
        if split not in SPLITS:
            raise ValueError(f"RHD split must be one of {SPLITS}, got {split!r}")
        self.dir = Path(root) / split
        anno_path = self.dir / f"anno_{split}.pickle"
        if not anno_path.exists():
            raise FileNotFoundError(f"{root} is not an RHD_published_v2 folder (no {anno_path})")
        with open(anno_path, "rb") as f:
            # the official file was written by Python 2: latin1 decodes its numpy arrays
            anno = pickle.load(f, encoding="latin1")
        self.image_ids = np.array(sorted(anno), np.int64)
        xyz = np.stack([np.asarray(anno[i]["xyz"], np.float64) for i in self.image_ids])
        uv_vis = np.stack([np.asarray(anno[i]["uv_vis"], np.float64) for i in self.image_ids])
        self.K = np.stack([np.asarray(anno[i]["K"], np.float64) for i in self.image_ids])
        self.xyz, self.uv, self.vis = {}, {}, {}  # side -> (n, 21, ...) in the project's order
        self.hands: list[tuple[int, int]] = []  # (row in the arrays, side)
        for side in (1, 0):
            sel = np.array(RHD_TO_OURS) + HAND_OFFSET[side]
            self.xyz[side] = xyz[:, sel]  # (n, 21, 3)
            p = np.einsum("nij,nkj->nki", self.K, self.xyz[side])  # (n, 21, 3) K X per point
            self.uv[side] = p[..., :2] / p[..., 2:]  # (n, 21, 2) image pixels
            self.vis[side] = (uv_vis[:, sel, 2] == 1).astype(np.float64)  # (n, 21)
        for row in range(len(self.image_ids)):
            for side in (1, 0):
                uv, vis = self.uv[side][row], self.vis[side][row]
                if vis.sum() >= MIN_VISIBLE and keypoint_extent(uv, vis) >= MIN_BOX_PX:
                    self.hands.append((row, side))

    def __len__(self) -> int:
        return len(self.hands)

    def load(self, index: int) -> HandSample:
        row, side = self.hands[index]
        name = f"{self.image_ids[row]:05d}.png"
        with Image.open(self.dir / "mask" / name) as im:
            classes = np.asarray(im)
        lo, hi = MASK_CLASSES[side]
        return HandSample(
            image=load_rgb(self.dir / "color" / name),
            keypoints2d=self.uv[side][row],
            keypoints2d_vis=self.vis[side][row],
            side=side,
            K=self.K[row],
            keypoints3d=self.xyz[side][row],
            mask=(classes >= lo) & (classes <= hi),
        )
