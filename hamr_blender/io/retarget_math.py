"""Pose transfer between two hand rigs: the geometry of retargeting, batched over frames (bpy-free).

Frames and notation. Every matrix is 4x4 (or its 3x3 rotation) in one armature's own space
(Blender's ``Bone.matrix_local`` R for the rest, ``PoseBone.matrix`` P for the pose, the local
``PoseBone.matrix_basis`` B); an unconstrained bone's pose is P = P_parent R_parent^-1 R B.

1. *The hand frame* H (`hand_frame`): origin at the wrist, y from the wrist to the middle
   knuckle, x across the knuckles towards the index (orthogonalised), z = x cross y. It is built
   from four joint positions, the same way on both rigs, so the two frames correspond
   anatomically whatever the rigs' axes, rolls, sizes or object transforms.
2. *Rest compensation* (`roll_offsets`): a bone's canonical frame has y = the bone's direction and
   z = the hand's z projected off that direction (the bone's "back" side: for a bone flexed at
   rest it is the palm normal flexed with it). Q = canonical^T R_bone, both in the hand frame, is
   the bone's roll about its own axis relative to that canonical frame (a rotation about y).
3. *Transfer* (`transfer_rotations`): the source bone's posed orientation in its posed hand frame,
   F = H_S^T P_S, gives the target's G = F Q_S^T Q_T: the target bone's canonical frame equals
   the source bone's posed canonical frame. So the target bone points exactly as the source bone
   does in the hand frame (whatever its rest curl) and twists as it does (whatever its roll);
   bone lengths never enter, so proportions only move the fingertips, not the directions.
   In armature space, D = H_T G.
4. *Local rotations* (`solve_chain`): the target's pose-bone rotation that gives D, root to tips:
   B = X^T D with X = P_parent R_parent^-1 R (columns normalised). A bone's parent pose is the
   computed pose of its nearest posed ancestor times the ancestor-to-parent relation measured on
   the rig as it is (bones in between, such as Rigify's finger MCH bones, keep their current
   pose), or, for a bone with no posed ancestor, the parent's current pose moved rigidly with the
   wrist (identity when the wrist is not transferred).
5. *Fingertip reach* (`reach_fingertips`, optional): the transferred rotations give each target
   fingertip where the target's own proportions put it. To put it where the source's is (scaled
   by hand length), every bone of the finger gets a small extra turn (damped least squares IK
   from the transferred pose); `contact_weights` says which fingers touch the thumb, so that
   they follow a thumb that cannot reach.

Pure numpy; imports `convert` for quaternions. Shapes: N frames, B bones, J joints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import convert


class RetargetError(ValueError):
    """The rigs cannot be retargeted (degenerate hand, bad data); the message is for the user."""


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n < 1e-12, 1.0, n)


def orthonormal(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) matrices with scale (unit columns' lengths) removed: each column normalised.
    Bone matrices are rotation x per-axis scale, so this gives their rotation."""
    m = np.asarray(m, dtype=np.float64)
    return m / np.linalg.norm(m, axis=-2, keepdims=True)


def hand_frame(
    wrist: np.ndarray, index1: np.ndarray, middle1: np.ndarray, pinky1: np.ndarray
) -> np.ndarray:
    """(..., 4, 4) hand frame from joint positions (..., 3): origin at the wrist; y towards the
    middle knuckle; x towards the index knuckle from the pinky's, made orthogonal to y; z = x × y.

    Raises RetargetError when the knuckles are (nearly) collinear with the wrist."""
    y = _unit(np.asarray(middle1, dtype=np.float64) - wrist)
    across = np.asarray(index1, dtype=np.float64) - pinky1
    x = across - np.sum(across * y, axis=-1, keepdims=True) * y
    if np.any(np.linalg.norm(x, axis=-1) < 1e-9 * (1.0 + np.linalg.norm(across, axis=-1))):
        raise RetargetError("the hand's knuckles are in line with its wrist: no hand frame")
    x = _unit(x)
    z = np.cross(x, y)
    out = np.zeros(np.shape(y)[:-1] + (4, 4))
    out[..., :3, 0], out[..., :3, 1], out[..., :3, 2] = x, y, z
    out[..., :3, 3] = wrist
    out[..., 3, 3] = 1.0
    return out


def roll_offsets(bone_rot_in_hand: np.ndarray) -> np.ndarray:
    """(J, 3, 3) rest rotations of bones expressed in their hand frame -> (J, 3, 3) Q =
    canonical^T R: each bone's roll about its own y axis relative to its canonical frame
    (y = bone direction, z = the hand's z made orthogonal to y; the hand's x where the bone
    points along the hand's z)."""
    r = orthonormal(bone_rot_in_hand)
    y = r[..., :, 1]
    ref = np.broadcast_to(np.array([0.0, 0.0, 1.0]), y.shape).copy()
    along = np.abs(np.sum(ref * y, axis=-1)) > 0.99
    ref[along] = np.array([1.0, 0.0, 0.0])
    z = _unit(ref - np.sum(ref * y, axis=-1, keepdims=True) * y)
    x = np.cross(y, z)
    canonical = np.stack([x, y, z], axis=-1)  # columns
    return np.swapaxes(canonical, -1, -2) @ r


def transfer_rotations(
    source_hand: np.ndarray,
    source_bones: np.ndarray,
    source_offsets: np.ndarray,
    target_offsets: np.ndarray,
    target_hand: np.ndarray,
) -> np.ndarray:
    """Target bones' armature-space rotations D (N, J, 3, 3) (step 3 of the module docstring).

    source_hand (N, 3, 3): the source's posed hand-frame rotation H_S per frame;
    source_bones (N, J, 3, 3): the source bones' posed rotations P_S (armature space);
    source_offsets, target_offsets (J, 3, 3): `roll_offsets` of the two rigs at rest;
    target_hand (N, 3, 3) or (3, 3): the target's posed hand-frame rotation H_T."""
    h_s = orthonormal(source_hand)[:, None]  # (N, 1, 3, 3)
    f = np.swapaxes(h_s, -1, -2) @ orthonormal(source_bones)  # (N, J, 3, 3) F = H_S^T P_S
    g = f @ np.swapaxes(source_offsets, -1, -2) @ target_offsets  # G = F Q_S^T Q_T
    h_t = orthonormal(np.broadcast_to(target_hand, (len(f), 3, 3)))[:, None]
    return h_t @ g  # D = H_T G


def forward_kinematics(rest: np.ndarray, parents: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Posed bone matrices P (N, B, 4, 4) of an unconstrained armature.

    rest (B, 4, 4): Bone.matrix_local; parents (B,): index of each bone's parent in this list
    (-1: root), parents before children; basis (N, B, 4, 4): PoseBone.matrix_basis per frame.
    P = P_parent R_parent^-1 R B (root: P = R B)."""
    rest = np.asarray(rest, dtype=np.float64)
    posed = np.empty(np.shape(basis), dtype=np.float64)
    for b, p in enumerate(parents):
        if p < 0:
            posed[:, b] = rest[b] @ basis[:, b]
        else:
            if p >= b:
                raise RetargetError("bones must come after their parents")
            posed[:, b] = posed[:, p] @ (np.linalg.inv(rest[p]) @ rest[b]) @ basis[:, b]
    return posed


@dataclass
class TargetChain:
    """The target bones that get posed, root to tips, and how each hangs from the others.

    rest (B, 4, 4): each bone's Bone.matrix_local; parent_rest (B, 4, 4): its parent's (identity
    for a root); anchor (B,): index in this list of the nearest posed ancestor, -1 if none;
    anchor_to_parent (B, 4, 4): P_anchor^-1 P_parent measured on the rig as it is (used when
    anchor >= 0); parent_now (B, 4, 4): the parent's current pose P_parent (identity for a root;
    used when anchor < 0); basis_loc (B, 3): current PoseBone.location, kept unless a location is
    asked for."""

    names: list[str]
    rest: np.ndarray
    parent_rest: np.ndarray
    anchor: np.ndarray
    anchor_to_parent: np.ndarray
    parent_now: np.ndarray
    basis_loc: np.ndarray


def solve_chain(
    chain: TargetChain,
    desired_rot: np.ndarray,
    desired_loc: np.ndarray | None = None,
    hand_motion: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local pose rotations (N, B, 3, 3) and locations (N, B, 3) that give each bone of `chain`
    the armature-space rotation desired_rot (N, B, 3, 3) (step 4 of the module docstring).

    desired_loc (N, B, 3) with NaN where the bone keeps its location: head positions asked for
    (the wrist, when the hand is placed). hand_motion (N, 4, 4): the rigid motion of the hand
    (new wrist pose times its current inverse) applied to the parents of bones without a posed
    ancestor; None: identity."""
    n, count = desired_rot.shape[:2]
    posed = np.zeros((n, count, 4, 4))
    basis_rot = np.zeros((n, count, 3, 3))
    basis_loc = np.zeros((n, count, 3))
    for b in range(count):
        a = int(chain.anchor[b])
        if a >= 0:
            if a >= b:
                raise RetargetError("posed bones must come after their posed ancestors")
            parent = posed[:, a] @ chain.anchor_to_parent[b]
        elif hand_motion is not None:
            parent = hand_motion @ chain.parent_now[b]
        else:
            parent = np.broadcast_to(chain.parent_now[b], (n, 4, 4))
        x = parent @ (np.linalg.inv(chain.parent_rest[b]) @ chain.rest[b])  # (N, 4, 4)
        x3 = x[:, :3, :3]
        rot = np.swapaxes(orthonormal(x3), -1, -2) @ orthonormal(desired_rot[:, b])
        loc = np.broadcast_to(chain.basis_loc[b], (n, 3)).copy()
        if desired_loc is not None:
            want = desired_loc[:, b]
            rows = ~np.isnan(want).any(axis=-1)
            if rows.any():  # head = x3 @ loc + x_t
                delta = want[rows] - x[rows, :3, 3]
                loc[rows] = np.linalg.solve(x3[rows], delta[..., None])[..., 0]
        basis = np.zeros((n, 4, 4))
        basis[:, :3, :3], basis[:, :3, 3], basis[:, 3, 3] = rot, loc, 1.0
        posed[:, b] = x @ basis
        basis_rot[:, b], basis_loc[:, b] = rot, loc
    return basis_rot, basis_loc


def continuous_quaternions(rot: np.ndarray) -> np.ndarray:
    """(N, B, 3, 3) rotations -> (N, B, 4) quaternions (w, x, y, z) with signs kept continuous
    over the N frames (and w >= 0 on the first frame)."""
    q = convert.matrix_to_quaternion(rot)
    q[0][q[0, :, 0] < 0] *= -1.0
    return convert.quaternion_continuity(q)


def angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(...) angle in degrees between vectors (..., 3)."""
    c = np.sum(_unit(u) * _unit(v), axis=-1)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def hand_length(wrist: np.ndarray, middle1: np.ndarray, middle_lengths) -> float:
    """A rig's hand length at rest: wrist to middle knuckle plus the middle finger's three bones
    (wrist to the middle fingertip along the straight finger)."""
    return float(np.linalg.norm(np.asarray(middle1) - wrist) + np.sum(middle_lengths))


def chain_tips(rot: np.ndarray, base: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Tips (N, F, 3) of F finger chains posed with armature-space rotations rot (N, F, K, 3, 3):
    base (N, F, 3) the first bone's head, segments (F, K, 3) each bone's vector to the next
    bone's head (the last: to its tail) in the bone's own rest frame."""
    return base + np.sum(rot @ segments[None, ..., None], axis=2)[..., 0]


def _exp(w: np.ndarray) -> np.ndarray:
    return convert.axis_angle_to_matrix(w)


def _log(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 3) axis-angle vectors (angle in [0, pi])."""
    q = convert.matrix_to_quaternion(r)
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    return q[..., 1:] * np.where(s < 1e-12, 2.0, angle / np.maximum(s, 1e-12))


REACH = 0.99  # a chain reaches out to this share of its length (see `reach_fingertips`)


def reach_fingertips(
    rot: np.ndarray,
    base: np.ndarray,
    segments: np.ndarray,
    goal: np.ndarray,
    sigma: float,
    iterations: int = 12,
    max_step: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Bend finger chains so that their tips reach `goal`, turning the bones as little as needed.

    rot (N, F, K, 3, 3): each bone's armature-space rotation (the direction transfer's result);
    base (N, F, 3), segments (F, K, 3): as in `chain_tips`; goal (N, F, 3): the tips wanted;
    sigma: the tip distance that weighs as much as one radian of bone turn (small: the tips win).
    Each bone gets a turn in armature space (R_k' = exp(w_k) R_k), found by damped least squares
    from the transferred pose: each iteration's turns d minimise |tip + J d - goal|^2 / sigma^2
    + |d|^2 (a 3K x 3K solve per frame and finger, batched; at most max_step radians per bone,
    as the linearisation holds only for small turns), so the bones turn little and share the
    turn. A goal out of reach is first moved onto the reachable shell (REACH of the chain's
    length, the straight chain being singular, or as far as the transferred pose already
    reaches), so the chain straightens towards it. Returns the
    new rotations (N, F, K, 3, 3) and each bone's turn in degrees (N, F, K)."""
    rot = np.asarray(rot, dtype=np.float64)
    n, f, k = rot.shape[:3]
    # a goal out of reach is first brought onto the reachable shell (just inside it: the
    # straight chain is a singular point of the solve)
    lengths = np.linalg.norm(segments, axis=-1)  # (F, K)
    # (or as far as the transferred pose already reaches, which may be straighter)
    start = np.linalg.norm(chain_tips(rot, base, segments) - base, axis=-1)  # (N, F)
    outer = np.maximum(REACH * lengths.sum(-1), start)[..., None]
    inner = np.maximum(0.0, 2.0 * lengths.max(-1) - lengths.sum(-1))
    inner = np.minimum(inner / REACH, start)[..., None]
    offset = goal - base
    dist = np.linalg.norm(offset, axis=-1, keepdims=True)
    goal = base + offset * np.clip(dist, inner, outer) / np.maximum(dist, 1e-12)
    cur = rot.copy()
    eye = np.eye(3 * k)
    for _ in range(iterations):
        v = (cur @ segments[None, ..., None])[..., 0]  # (N, F, K, 3) posed segments
        tip = base + v.sum(axis=2)
        # a small turn d of bone k (cur -> exp(d) cur) moves the tip by d x v_k = -[v_k]x d
        jac = np.zeros((n, f, 3, k, 3))
        jac[..., 0, :, 1], jac[..., 0, :, 2] = v[..., 2], -v[..., 1]
        jac[..., 1, :, 0], jac[..., 1, :, 2] = -v[..., 2], v[..., 0]
        jac[..., 2, :, 0], jac[..., 2, :, 1] = v[..., 1], -v[..., 0]
        jac = jac.reshape(n, f, 3, 3 * k)
        jt = np.swapaxes(jac, -1, -2)
        lhs = jt @ jac / sigma**2 + eye
        rhs = (jt @ (goal - tip)[..., None])[..., 0] / sigma**2
        step = np.linalg.solve(lhs, rhs[..., None])[..., 0].reshape(n, f, k, 3)
        size = np.linalg.norm(step, axis=-1, keepdims=True)  # a step of at most max_step
        cur = _exp(step * np.minimum(1.0, max_step / np.maximum(size, 1e-12))) @ cur
    w = _log(cur @ np.swapaxes(rot, -1, -2))  # the turns made
    return cur, np.degrees(np.linalg.norm(w, axis=-1))


CONTACT_RANGE = 0.06  # hand lengths: tips this far apart count about one third as touching


def contact_weights(tips: np.ndarray, thumb: int, length: float) -> np.ndarray:
    """(N, F) how much each fingertip touches the thumb's tip: exp(-(d / CONTACT_RANGE)^2)
    with d the distance in hand lengths (1 touching, 0 far apart; 0 for the thumb itself).
    tips (N, F, 3), the thumb's index in F, the hand's length."""
    d = np.linalg.norm(tips - tips[:, thumb : thumb + 1], axis=-1) / length
    out = np.exp(-((d / CONTACT_RANGE) ** 2))
    out[:, thumb] = 0.0
    return out
