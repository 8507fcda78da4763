"""Readable hand poses: per-finger flexion and spread turned into MANO axis-angle (16, 3).

MANO (and smplx) express each joint's rotation in the rest-pose axes, relative to its parent. So a
finger curls in its own plane when all three of its joints rotate about one rest-frame axis: the
axis d x n that turns the finger's rest direction d towards the palm normal n. Axes are computed
from the rest skeleton, so this works for the open model and for official MANO, either side.
Imports torch only (plus the project's constants).
"""

from __future__ import annotations

import torch
from torch import Tensor

# digit -> its three MANO joints, proximal to distal; thumb first as in the 21-keypoint order
DIGIT_JOINTS: dict[str, tuple[int, int, int]] = {
    "thumb": (13, 14, 15),
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "ring": (10, 11, 12),
    "pinky": (7, 8, 9),
}
DIGITS = tuple(DIGIT_JOINTS)

# Named poses: digit -> (flexion of joints 1, 2, 3 in degrees, spread in degrees). Spread turns the
# digit's first joint about the palm normal, positive away from the middle finger (for the thumb:
# away from the palm's side). Missing digits stay flat.
NAMED_POSES: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "flat": {},
    "relaxed": {"thumb": (10, 10, 15, 0), "index": (15, 20, 10, 0), "middle": (20, 25, 12, 0),
                "ring": (25, 28, 14, 0), "pinky": (30, 30, 15, 0)},
    "fist": {"thumb": (25, 35, 45, -10), "index": (80, 95, 60, 0), "middle": (85, 100, 60, 0),
             "ring": (85, 100, 60, 0), "pinky": (85, 95, 60, 0)},
    "point": {"thumb": (25, 35, 40, -10), "index": (0, 0, 0, 0), "middle": (85, 100, 60, 0),
              "ring": (85, 100, 60, 0), "pinky": (85, 95, 60, 0)},
    "pinch": {"thumb": (30, 20, 25, -15), "index": (45, 45, 25, 0), "middle": (20, 25, 10, 0),
              "ring": (25, 30, 12, 0), "pinky": (30, 30, 15, 0)},
    "spread": {"thumb": (0, 0, 0, 15), "index": (0, 0, 0, 10), "middle": (0, 0, 0, 0),
               "ring": (0, 0, 0, 10), "pinky": (0, 0, 0, 18)},
    "victory": {"thumb": (25, 35, 40, -10), "index": (0, 0, 0, 8), "middle": (0, 0, 0, 5),
                "ring": (85, 100, 60, 0), "pinky": (85, 95, 60, 0)},
    "grasp": {"thumb": (20, 15, 20, -20), "index": (40, 50, 30, 0), "middle": (45, 55, 30, 0),
              "ring": (45, 55, 30, 0), "pinky": (50, 55, 30, 0)},
}  # fmt: skip


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def palm_normal(rest_joints: Tensor, side: str) -> Tensor:
    """(3,) unit normal pointing out of the palm (palmar side), from rest joints (16, 3)."""
    along = rest_joints[4] - rest_joints[0]  # wrist -> middle knuckle
    across = rest_joints[1] - rest_joints[7]  # pinky knuckle -> index knuckle
    # mirroring flips the handedness of cross products, hence the side switch
    n = torch.linalg.cross(across, along) if side == "right" else torch.linalg.cross(along, across)
    return _unit(n)


def digit_axes(rest_joints: Tensor, side: str) -> dict[str, tuple[Tensor, Tensor]]:
    """digit -> (flexion axis (3,), spread axis (3,)) in the rest frame, for rest joints (16, 3).

    Flexion axis: d x n (d: the digit's rest direction, n: palm normal), so a positive angle curls
    the digit towards the palm. Spread axis: +-n, signed so a positive angle moves the digit away
    from the middle finger (the thumb away from the index)."""
    n = palm_normal(rest_joints, side)
    middle_dir = _unit(rest_joints[5] - rest_joints[4])
    axes = {}
    for digit, (j1, j2, _) in DIGIT_JOINTS.items():
        d = _unit(rest_joints[j2] - rest_joints[j1])
        flex = _unit(torch.linalg.cross(d, n))
        away = d - middle_dir if digit != "middle" else torch.zeros_like(d)
        if digit == "thumb":
            away = d - _unit(rest_joints[2] - rest_joints[1])
        # rotating about +n moves d along n x d; choose the sign that moves it `away`
        spread = n if (torch.linalg.cross(n, d) * away).sum() >= 0 else -n
        axes[digit] = (flex, spread)
    return axes


def pose_from_angles(
    rest_joints: Tensor, side: str, angles: dict[str, tuple[float, float, float, float]]
) -> Tensor:
    """(16, 3) axis-angle pose from per-digit (flex1, flex2, flex3, spread) angles in degrees."""
    pose = rest_joints.new_zeros(16, 3)
    axes = digit_axes(rest_joints, side)
    for digit, (f1, f2, f3, spread) in angles.items():
        flex, spread_axis = axes[digit]
        j1, j2, j3 = DIGIT_JOINTS[digit]
        rad = torch.deg2rad(rest_joints.new_tensor([f1, f2, f3, spread]))
        # the first joint combines spread and flexion; both axes are in the rest frame
        pose[j1] = _compose(spread_axis * rad[3], flex * rad[0])
        pose[j2] = flex * rad[1]
        pose[j3] = flex * rad[2]
    return pose


def named_pose(name: str, rest_joints: Tensor, side: str) -> Tensor:
    """(16, 3) axis-angle of one of `NAMED_POSES` for a hand with these rest joints (16, 3)."""
    if name not in NAMED_POSES:
        raise ValueError(f"unknown pose {name!r}; known: {', '.join(NAMED_POSES)}")
    return pose_from_angles(rest_joints, side, NAMED_POSES[name])


def _compose(first: Tensor, second: Tensor) -> Tensor:
    """Axis-angle of R(second) @ R(first), via rotation matrices (both (3,))."""
    r = _rodrigues(second) @ _rodrigues(first)
    angle = torch.arccos(((r.trace() - 1) / 2).clamp(-1.0, 1.0))
    if angle < 1e-8:
        return torch.zeros_like(first)
    axis = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return axis / (2 * torch.sin(angle)) * angle


def _rodrigues(aa: Tensor) -> Tensor:
    angle = aa.norm()
    if angle < 1e-12:
        return torch.eye(3, dtype=aa.dtype)
    k = aa / angle
    kx = torch.zeros(3, 3, dtype=aa.dtype)
    kx[0, 1], kx[0, 2], kx[1, 0], kx[1, 2], kx[2, 0], kx[2, 1] = (
        -k[2],
        k[1],
        k[2],
        -k[0],
        -k[1],
        k[0],
    )
    return torch.eye(3, dtype=aa.dtype) + torch.sin(angle) * kx + (1 - torch.cos(angle)) * kx @ kx
