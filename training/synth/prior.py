"""Anatomical hand-pose prior for the synthetic data engine (batched, on any device).

A pose is described per digit by (flex1, flex2, flex3, spread, twist) in degrees: flexion of the
three joints towards the palm about the digit's flexion axis, spread of the first joint about the
palm normal (away from the middle finger), and a small twist about the bone (the axes come from
`backend.hand_model.poses.digit_axes`). Three sampling modes are mixed:

- library: one of the named poses (fist, point, pinch, spread, grasp, ...), blended with a second
  one by a random weight, plus per-joint noise;
- coupled random: each finger's MCP flexion drawn freely, PIP following it loosely, DIP = about
  two-thirds of PIP (the tendon coupling of the flexor digitorum profundus), neighbouring fingers
  correlated (the ring and pinky share a flexor);
- uniform within the joint limits (rare: covers odd poses).

Every angle is then clamped to per-joint limits (`LIMITS_DEG`, typical active ranges of motion
from the hand-surgery literature, rounded). Imports torch and the backend only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend.hand_model.poses import DIGIT_JOINTS, DIGITS, NAMED_POSES, digit_axes
from backend.network.rotation import axis_angle_to_matrix, matrix_to_axis_angle

# (min, max) degrees for flex1, flex2, flex3, spread, twist; fingers: MCP, PIP, DIP.
LIMITS_DEG: dict[str, tuple[tuple[float, float], ...]] = {
    "thumb": ((-15, 55), (-10, 65), (-15, 85), (-35, 40), (-10, 10)),
    "index": ((-20, 90), (0, 110), (-5, 80), (-20, 25), (-6, 6)),
    "middle": ((-20, 90), (0, 110), (-5, 80), (-15, 15), (-6, 6)),
    "ring": ((-20, 90), (0, 110), (-5, 80), (-20, 20), (-6, 6)),
    "pinky": ((-20, 90), (0, 110), (-5, 80), (-20, 30), (-8, 8)),
}
# Extra library poses on top of backend.hand_model.poses.NAMED_POSES (flex1-3, spread).
EXTRA_POSES: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "ok": {
        "thumb": (30, 25, 30, -20),
        "index": (55, 60, 35, 0),
        "middle": (10, 10, 5, 0),
        "ring": (10, 10, 5, 5),
        "pinky": (10, 10, 5, 12),
    },
    "thumbs_up": {
        "thumb": (-10, 0, 0, 25),
        "index": (85, 100, 60, 0),
        "middle": (85, 100, 60, 0),
        "ring": (85, 100, 60, 0),
        "pinky": (85, 95, 60, 0),
    },
    "claw": {
        "thumb": (20, 20, 30, 10),
        "index": (10, 80, 60, 5),
        "middle": (10, 85, 60, 0),
        "ring": (10, 85, 60, 5),
        "pinky": (10, 80, 60, 10),
    },
    "three": {
        "thumb": (30, 35, 40, -15),
        "index": (0, 0, 0, 8),
        "middle": (0, 0, 0, 0),
        "ring": (0, 0, 0, 8),
        "pinky": (85, 95, 60, 0),
    },
    "rock": {
        "thumb": (25, 30, 40, -10),
        "index": (0, 0, 0, 5),
        "middle": (85, 100, 60, 0),
        "ring": (85, 100, 60, 0),
        "pinky": (0, 0, 0, 15),
    },
    "call": {
        "thumb": (-10, 0, 0, 30),
        "index": (85, 100, 60, 0),
        "middle": (85, 100, 60, 0),
        "ring": (85, 100, 60, 0),
        "pinky": (0, 0, 0, 20),
    },
    "cup": {
        "thumb": (35, 15, 10, -5),
        "index": (30, 30, 15, -3),
        "middle": (30, 30, 15, 0),
        "ring": (30, 30, 15, 3),
        "pinky": (30, 30, 15, 6),
    },
    "hook": {
        "thumb": (0, 0, 0, 10),
        "index": (0, 90, 60, 0),
        "middle": (0, 95, 60, 0),
        "ring": (0, 95, 60, 0),
        "pinky": (0, 90, 60, 0),
    },
    "tripod": {
        "thumb": (40, 25, 20, -20),
        "index": (50, 40, 20, 0),
        "middle": (50, 45, 20, 0),
        "ring": (60, 70, 40, 0),
        "pinky": (65, 75, 40, 0),
    },
}
LIBRARY = {**NAMED_POSES, **EXTRA_POSES}


def library_table() -> Tensor:
    """(P, 5, 4) degrees: the library poses, digits in `DIGITS` order, missing digits flat."""
    rows = []
    for pose in LIBRARY.values():
        rows.append([list(pose.get(d, (0.0, 0.0, 0.0, 0.0))) for d in DIGITS])
    return torch.tensor(rows, dtype=torch.float32)


def limits_tensor() -> tuple[Tensor, Tensor]:
    """(5, 5) lower and upper limits in degrees (digits x [flex1, flex2, flex3, spread, twist])."""
    lim = torch.tensor([LIMITS_DEG[d] for d in DIGITS], dtype=torch.float32)
    return lim[..., 0], lim[..., 1]


def sample_digit_angles(
    n: int,
    g: torch.Generator,
    device: torch.device | str = "cpu",
    mix: tuple[float, float, float] = (0.55, 0.35, 0.10),
) -> Tensor:
    """(n, 5, 5) degrees [flex1, flex2, flex3, spread, twist] per digit, within the limits."""
    lo, hi = (t.to(device) for t in limits_tensor())
    u = lambda *shape: torch.rand(*shape, generator=g, device=device)  # noqa: E731
    z = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
    mode = torch.multinomial(torch.tensor(mix, device=device), n, replacement=True, generator=g)

    # library: blend two poses, add noise
    lib = library_table().to(device)
    a = lib[torch.randint(len(lib), (n,), generator=g, device=device)]
    b = lib[torch.randint(len(lib), (n,), generator=g, device=device)]
    w = (u(n, 1, 1) * 0.6) * (u(n, 1, 1) < 0.6)  # often a pure library pose
    library = torch.cat([a * (1 - w) + b * w, torch.zeros(n, 5, 1, device=device)], dim=-1)
    library = library + z(n, 5, 5) * torch.tensor([9.0, 9.0, 7.0, 4.0, 3.0], device=device)

    # coupled random: shared flexion drive per hand, ring/pinky coupling, DIP ~ 2/3 PIP
    drive = u(n, 1) * 100 - 10
    flex1 = (drive + z(n, 5) * 25).clamp(-20, 90)
    flex2 = (0.7 * drive + 0.3 * u(n, 5) * 110 + z(n, 5) * 15).clamp(0, 110)
    flex2[:, 4] = 0.5 * flex2[:, 4] + 0.5 * flex2[:, 3]  # pinky follows ring
    flex3 = 0.66 * flex2 + z(n, 5) * 8
    spread = z(n, 5) * 8 + (u(n, 1) - 0.3) * 20
    coupled = torch.stack([flex1, flex2, flex3, spread, z(n, 5) * 3], dim=-1)
    # the thumb moves on its own
    coupled[:, 0] = lo[0] + u(n, 5) * (hi[0] - lo[0])

    uniform = lo + u(n, 5, 5) * (hi - lo)
    table = torch.stack([library, coupled, uniform], dim=0)  # (3, n, 5, 5)
    angles = table[mode, torch.arange(n, device=device)]
    return torch.maximum(torch.minimum(angles, hi), lo)


def angles_to_pose(angles_deg: Tensor, rest_joints: Tensor, side: str = "right") -> Tensor:
    """(n, 5, 5) digit angles -> (n, 15, 3) axis-angle of joints 1..15 (MANO order minus root).

    First joint: R = R_flex @ R_spread @ R_twist; the others flex only.
    """
    n = angles_deg.shape[0]
    rad = torch.deg2rad(angles_deg)
    axes = digit_axes(rest_joints.to(angles_deg), side)
    out = angles_deg.new_zeros(n, 16, 3)
    for k, digit in enumerate(DIGITS):
        flex, spread = (a.to(angles_deg) for a in axes[digit])
        j1, j2, j3 = DIGIT_JOINTS[digit]
        bone = rest_joints[j2] - rest_joints[j1]
        twist = (bone / bone.norm()).to(angles_deg)
        r = (
            axis_angle_to_matrix(flex * rad[:, k, 0:1])
            @ axis_angle_to_matrix(spread * rad[:, k, 3:4])
            @ axis_angle_to_matrix(twist * rad[:, k, 4:5])
        )  # (n, 3, 3)
        out[:, j1] = matrix_to_axis_angle(r)
        out[:, j2] = flex * rad[:, k, 1:2]
        out[:, j3] = flex * rad[:, k, 2:3]
    return out[:, 1:]
