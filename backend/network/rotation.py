"""Rotation representations for the network: 6D (Zhou et al. 2019), matrices, axis-angle.

The regressor predicts each joint's rotation as 6 numbers (the first two columns of the matrix,
continuous, unlike axis-angle or quaternions); Gram-Schmidt turns them into a rotation matrix that
the hand layer consumes directly. Axis-angle is only needed for the JSON outputs and for labels, so
the matrix -> axis-angle map goes through a quaternion picked by Shepperd's rule, which stays exact
near 0 and near pi where the naive arccos / sin formulas break down.

Pure functions on tensors with any leading batch shape (...). Imports torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this angle (radians) the Rodrigues and log-map coefficients use their Taylor series.
_SMALL_ANGLE = 1e-3


def rotation_6d_to_matrix(x: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3) rotation matrices by Gram-Schmidt (Zhou et al., CVPR 2019, Eq. 16).

    The 6 numbers are two 3-vectors a1 = x[..., :3], a2 = x[..., 3:], taken as the first two
    *columns* of the matrix: b1 = a1 / |a1|, b2 = unit(a2 - (b1 . a2) b1), b3 = b1 x b2,
    R = [b1 b2 b3]. The result is orthonormal with det +1 for any input with a1, a2 not parallel.
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)  # (..., 3)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)  # (..., 3)
    b3 = torch.linalg.cross(b1, b2, dim=-1)  # (..., 3)
    return torch.stack([b1, b2, b3], dim=-1)  # (..., 3, 3) columns b1, b2, b3


def matrix_to_rotation_6d(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, the inverse of `rotation_6d_to_matrix`."""
    return torch.cat([matrix[..., :, 0], matrix[..., :, 1]], dim=-1)


def _skew(v: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix [v]_x, so that [v]_x w = v x w."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """(..., 3) axis-angle (axis times angle in radians) -> (..., 3, 3) rotation matrices.

    Rodrigues: R = I + A [r]_x + B [r]_x^2 with theta = |r|, A = sin(theta) / theta and
    B = (1 - cos(theta)) / theta^2; near theta = 0 A and B use their Taylor series, so the map and
    its gradient are finite at the identity.
    """
    theta2 = axis_angle.square().sum(-1)  # (...,)
    small = theta2 < _SMALL_ANGLE**2
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()  # safe where small
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta.square())
    k = _skew(axis_angle)  # (..., 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

    Shepperd's rule: each of the four components can be read from the diagonal as
    2|q_i| = sqrt(1 +- m00 +- m11 +- m22); the other three follow from off-diagonal sums and
    differences divided by the largest one, which is at least 1/2, so no division is ill-conditioned
    anywhere on SO(3) (in particular not at 180 degrees, where w = 0).
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # (..., 4) 4 q_i^2 for i = w, x, y, z
    four_q2 = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    # (..., 4) 2 |q_i|; the floor keeps sqrt's gradient finite for the rows not picked below
    two_q = four_q2.clamp(min=1e-12).sqrt()
    d21, d02, d10 = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    s10, s02, s21 = (
        m[..., 1, 0] + m[..., 0, 1],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 2, 1] + m[..., 1, 2],
    )
    # Row i holds 4 q_i * (w, x, y, z); dividing by 2 * (2 |q_i|) gives q up to a sign.
    candidates = torch.stack(
        [
            torch.stack([four_q2[..., 0], d21, d02, d10], -1),
            torch.stack([d21, four_q2[..., 1], s10, s02], -1),
            torch.stack([d02, s10, four_q2[..., 2], s21], -1),
            torch.stack([d10, s02, s21, four_q2[..., 3]], -1),
        ],
        dim=-2,
    )  # (..., 4, 4)
    candidates = candidates / (2.0 * two_q.clamp(min=0.1))[..., None]
    best = two_q.argmax(-1)  # (...,) the best-conditioned row
    q = candidates.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)  # (..., 4) canonical sign w >= 0


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3) axis-angle with angle in [0, pi].

    angle = 2 atan2(|v|, w) (accurate at every angle, unlike arccos(w)), and r = v * angle / |v|,
    where near 0 angle / |v| comes from the series sin(angle / 2) / angle = 1/2 - angle^2 / 48.
    """
    q = torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)
    w, v = q[..., 0], q[..., 1:]
    half = torch.atan2(v.norm(dim=-1), w)  # (...,) in [0, pi/2]
    angle = 2.0 * half
    small = angle.abs() < _SMALL_ANGLE
    safe_angle = torch.where(small, torch.ones_like(angle), angle)
    sin_half_over_angle = torch.where(
        small, 0.5 - angle.square() / 48.0, torch.sin(half) / safe_angle
    )
    return v / sin_half_over_angle[..., None]


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle, angle in [0, pi], robust at 0 and pi.

    At exactly pi, r and -r are the same rotation; either may be returned."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))
