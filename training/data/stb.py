"""STB reader: Stereo Hand Pose Tracking Benchmark (Zhang et al., "3D Hand Pose Tracking and
Estimation Using Stereo Matching", 2016 / ICIP 2017), the Intel RealSense (SK) colour images.

Expected on disk (ROOT = the unpacked dataset, SEQ = B1Counting, B1Random, ..., B6Random):

    ROOT/images/SEQ/SK_color_%d.png    640x480 RGB, frames 0..1499
    ROOT/labels/SEQ_SK.mat             'handPara' (3, 21, 1500): joints in millimetres in the SK
                                       depth camera's frame

Splits (the common protocol, e.g. hand3d and bihand): 'test' = B1Counting + B1Random (3000 frames),
'train' = B2..B6 x Counting/Random (15000 frames).

Conventions, from the dataset authors' readme (github.com/zhjwustc/icip17_stereo_hand_pose_dataset,
README.md and positionCalc.m) and the readers that follow it (github.com/lmb-freiburg/hand3d
data/BinaryDbReaderSTB.py, github.com/lixiny/bihand bihand/datasets/stb.py, and the STB reader of
github.com/3d-hand-shape/hand-graph-cnn):
- joint order: palm centre (not the wrist), then little, ring, middle, index, thumb, each from MCP
  to TIP (the readme: "palm center, little_mcp, little_pip, little_dip, little_tip, ring_mcp, ...";
  hand3d's convert_kp maps STB 20 to its thumb tip and 17 to its thumb mcp). Converted to the
  project's order by `STB_TO_OURS` (fingers reversed in order, joints kept mcp -> tip).
- SK colour intrinsics fx 607.92271, fy 607.88192, u0 314.78337, v0 236.42484; the depth-colour
  extrinsics rotation vector om = (0.00531, -0.01196, 0.00301) (Rodrigues) and translation
  T = (-24.0381, -0.4563, -1.2326) mm "transform the coordinates relative to color camera to those
  relative to depth camera": X_depth = R X_color + T. The readme's own projection script inverts
  it, X_color = R \\ (X_depth - T), as do bihand and hand-graph-cnn; so does this reader (the labels
  are in the depth frame), then mm -> m. Axes are OpenCV's. 2D keypoints are the projection of
  the colour-frame joints through the colour K.
- Side: every STB hand is a LEFT hand (hand3d: "this dataset only contains left hands"; bihand
  mirrors STB to train its right-hand model; the joint names in those readers end in "_L"), so
  `side` = 1.
- Keypoint 0 is the palm centre, not the wrist. It is kept in keypoints3d[0] (the palm centre, so
  that root-relative evaluations that use the palm can still do so) but flagged out of every
  loss and metric: keypoints3d_valid[0] = 0 and keypoints2d_vis[0] = 0. No wrist is invented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from scipy.spatial.transform import Rotation

from .common import CropJitter, HandCropDataset, HandSample, load_rgb, project

SEQUENCES = {
    "test": ("B1Counting", "B1Random"),
    "train": tuple(f"B{b}{kind}" for b in range(2, 7) for kind in ("Counting", "Random")),
}
SK_COLOR_K = np.array([[607.92271, 0.0, 314.78337], [0.0, 607.88192, 236.42484], [0.0, 0.0, 1.0]])
SK_ROTATION_VECTOR = np.array([0.00531, -0.01196, 0.00301])  # colour -> depth, Rodrigues
SK_TRANSLATION_MM = np.array([-24.0381, -0.4563, -1.2326])  # colour -> depth
STB_SIDE = 1  # left hands only (module docstring)
PALM = 0  # index of the palm centre in STB's order and in ours (it replaces the wrist)
# STB index of each of the project's 21 keypoints: fingers thumb..pinky are STB fingers 4..0.
STB_TO_OURS: tuple[int, ...] = (PALM,) + tuple(
    1 + 4 * (4 - f) + k for f in range(5) for k in range(4)
)


def depth_to_color_mm(joints_depth_mm: np.ndarray) -> np.ndarray:
    """(..., 3) points in the SK depth camera frame (mm) -> (..., 3) colour camera frame (mm):
    X_color = R^T (X_depth - T), the inverse of the readme's X_depth = R X_color + T."""
    R = Rotation.from_rotvec(SK_ROTATION_VECTOR).as_matrix()
    return (joints_depth_mm - SK_TRANSLATION_MM) @ R  # row vectors: (R^T x)^T = x^T R


class STB(HandCropDataset):
    """STB SK colour items (module docstring); `split` is 'train' or 'test'."""

    name = "stb"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop_jitter: CropJitter | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(crop_jitter, seed)
        if split not in SEQUENCES:
            raise ValueError(f"STB split must be one of {tuple(SEQUENCES)}, got {split!r}")
        self.root, self.split = Path(root), split
        joints, self.frames = [], []  # frames: (sequence, frame number) per item
        for seq in SEQUENCES[split]:
            label_path = self.root / "labels" / f"{seq}_SK.mat"
            if not label_path.exists():
                raise FileNotFoundError(f"STB labels missing: {label_path}")
            para = scipy.io.loadmat(label_path)["handPara"]  # (3, 21, n) mm, depth frame
            joints.append(para.transpose(2, 1, 0)[:, STB_TO_OURS].astype(np.float64))
            self.frames += [(seq, i) for i in range(para.shape[2])]
        self.joints = depth_to_color_mm(np.concatenate(joints)) / 1000  # (N, 21, 3) metres

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, index: int) -> HandSample:
        seq, frame = self.frames[index]
        xyz = self.joints[index]
        valid = np.ones(21)
        valid[PALM] = 0.0
        return HandSample(
            image=load_rgb(self.root / "images" / seq / f"SK_color_{frame}.png"),
            keypoints2d=project(xyz, SK_COLOR_K),
            keypoints2d_vis=valid,
            side=STB_SIDE,
            K=SK_COLOR_K,
            keypoints3d=xyz,
            keypoints3d_valid=valid,
        )
