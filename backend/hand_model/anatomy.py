"""Anatomical constraints on 21 hand keypoints: digit planarity and bending direction.

Used by training (`training.losses`, the geometric-constraint loss of HAMR). Imports torch
only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Keypoints of each digit, proximal to distal (FreiHAND order): MCP (CMC for the thumb) ... tip.
DIGIT_KEYPOINTS: dict[str, tuple[int, int, int, int]] = {
    "thumb": (1, 2, 3, 4),
    "index": (5, 6, 7, 8),
    "middle": (9, 10, 11, 12),
    "ring": (13, 14, 15, 16),
    "pinky": (17, 18, 19, 20),
}
FINGERS = ("index", "middle", "ring", "pinky")  # the digits whose bending `geometric_loss` checks
# Allowed non-planarity of a digit's three bones, as |det| of their unit vectors: fingertip vertices
# sit slightly off the joints' plane even in the hand model's own poses (up to 0.12 in its fist).
PLANARITY_MARGIN = 0.15
# Allowed backward (dorsal) bend at the PIP and DIP joints, degrees; real joints reach ~5-10.
BEND_MARGIN_DEG = 10.0


def palm_normal_from_keypoints(keypoints3d: Tensor, side: str = "right") -> Tensor:
    """(B, 3) unit normal out of the palm (palmar side) from 21 keypoints (B, 21, 3):
    across = index MCP - pinky MCP, along = middle MCP - wrist, n = across x along for a right
    hand (along x across for a left one, whose mirror image flips cross products)."""
    across = keypoints3d[:, 5] - keypoints3d[:, 17]  # (B, 3)
    along = keypoints3d[:, 9] - keypoints3d[:, 0]
    n = torch.linalg.cross(across, along) if side == "right" else torch.linalg.cross(along, across)
    return F.normalize(n, dim=-1)


def geometric_loss(
    keypoints3d: Tensor,
    side: str = "right",
    planarity_margin: float = PLANARITY_MARGIN,
    bend_margin_deg: float = BEND_MARGIN_DEG,
) -> Tensor:
    """Anatomical constraints on predicted 3D keypoints (B, 21, 3); scalar, mean over the batch.

    With unit bone vectors b1, b2, b3 of a digit (MCP->PIP, PIP->DIP, DIP->tip; for the thumb
    CMC->MCP, MCP->IP, IP->tip):

    (a) planarity, all five digits: a digit's hinge joints flex about parallel axes, so its bones
        lie in one plane and det[b1, b2, b3] = (b1 x b2) . b3 = 0. Penalty
        relu(|det| - planarity_margin), scale-free (|det| <= 1).
    (b) bending direction, the four fingers: the flexion axis of a finger is a = unit(m x n), m its
        metacarpal (wrist -> MCP) and n the palm normal; then (b_k x b_k+1) . a is the sine of the
        bend at the PIP (k = 1) and DIP (k = 2) joints, positive towards the palm. Penalty
        relu(-sin(bend) - sin(bend_margin)): no backward bend beyond the margin.

    loss = sum over digits and joints of the penalties, averaged over the batch. It is zero for the
    hand model's natural poses (flat, relaxed, fist, ...; see the tests) and grows with
    hyper-extended or out-of-plane fingers. The thumb's bending is left to (a) and to the data: its
    flexion axis is not fixed by the palm."""
    plane_penalty = keypoints3d.new_zeros(keypoints3d.shape[0])  # (B,)
    bend_penalty = keypoints3d.new_zeros(keypoints3d.shape[0])
    normal = palm_normal_from_keypoints(keypoints3d, side)  # (B, 3)
    sin_margin = math.sin(math.radians(bend_margin_deg))
    for digit, (k1, k2, k3, k4) in DIGIT_KEYPOINTS.items():
        points = keypoints3d[:, [k1, k2, k3, k4]]  # (B, 4, 3)
        bones = F.normalize(points[:, 1:] - points[:, :-1], dim=-1)  # (B, 3, 3) b1, b2, b3
        bends = torch.linalg.cross(bones[:, :-1], bones[:, 1:])  # (B, 2, 3) b1 x b2, b2 x b3
        det = (bends[:, 0] * bones[:, 2]).sum(-1)  # (B,) det[b1, b2, b3]
        plane_penalty = plane_penalty + F.relu(det.abs() - planarity_margin)
        if digit in FINGERS:
            metacarpal = keypoints3d[:, k1] - keypoints3d[:, 0]  # (B, 3)
            axis = F.normalize(torch.linalg.cross(metacarpal, normal), dim=-1)  # (B, 3)
            sin_bend = (bends * axis[:, None]).sum(-1)  # (B, 2) PIP, DIP; > 0 towards the palm
            bend_penalty = bend_penalty + F.relu(-sin_bend - sin_margin).sum(-1)
    return (plane_penalty + bend_penalty).mean()
