"""Joint orders, names and kinematic tree shared by every part of the project.

One place for the conventions of DESIGN.md: the 16 MANO joints in MANO order, the 21 keypoints in
FreiHAND/OpenPose order, and the map between them. Pure Python; imports nothing heavy, so the
Blender extension can copy these values from the backend's rig data instead of importing it.
"""

from __future__ import annotations

# The 16 MANO joints, MANO order: wrist, index1-3, middle1-3, pinky1-3, ring1-3, thumb1-3.
MANO_JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)  # fmt: skip
NUM_JOINTS = 16
NUM_BETAS = 10
NUM_POSE_CORRECTIVES = 135  # 15 non-root joints x 9 entries of (R - I)

# Parent of each MANO joint (-1 for the root); MANO's kintree_table[0].
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# Fingertips appended after the 16 joints, in this order (thumb first, as FreiHAND numbers them).
TIP_NAMES: tuple[str, ...] = ("thumb4", "index4", "middle4", "ring4", "pinky4")
# The MANO joint that each fingertip hangs from (its distal segment's joint).
TIP_PARENTS: tuple[int, ...] = (15, 3, 6, 12, 9)
# Fingertip vertex ids of the official MANO mesh (FreiHAND's choice), thumb..pinky.
OFFICIAL_MANO_TIP_VERTEX_IDS: tuple[int, ...] = (744, 320, 443, 555, 672)

# 21 keypoints, FreiHAND/OpenPose order: wrist, thumb1-4, index1-4, middle1-4, ring1-4, pinky1-4.
KEYPOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb1", "thumb2", "thumb3", "thumb4",
    "index1", "index2", "index3", "index4",
    "middle1", "middle2", "middle3", "middle4",
    "ring1", "ring2", "ring3", "ring4",
    "pinky1", "pinky2", "pinky3", "pinky4",
)  # fmt: skip
NUM_KEYPOINTS = 21
# Index into concat(16 MANO joints, 5 tips) for each of the 21 keypoints.
KEYPOINTS_FROM_JOINTS_AND_TIPS: tuple[int, ...] = (
    0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20,
)  # fmt: skip
# Parent of each keypoint in the 21-keypoint skeleton (for drawing bones), -1 for the wrist.
KEYPOINT_PARENTS: tuple[int, ...] = (
    -1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19,
)  # fmt: skip
# Finger of each keypoint (0 wrist, 1 thumb, 2 index, 3 middle, 4 ring, 5 pinky): colours, masks.
KEYPOINT_FINGER: tuple[int, ...] = (0,) + tuple(f for f in range(1, 6) for _ in range(4))

SIDES = ("right", "left")


def check_side(side: str) -> str:
    """Return `side` if it is 'right' or 'left', else raise ValueError with a clear message."""
    if side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    return side
