"""Deterministic generator of the embedded open hand model (MANO parameterisation and layout).

MANO itself cannot ship, so the project builds its own right hand from anthropometric data and
mirrors it into a left hand. Run it with ``python -m backend.hand_model.generate --out DIR``; the
committed copy in ``backend/assets/open_hand`` is checked against a fresh run by the tests.

Pipeline (each step a pure function below):

1. ``build_skeleton``: joint centres, fingertips, bone frames and cross-section radii from
   ``HandParams`` (segment lengths as fractions of hand length, Buchholz et al. 1992; breadths and
   thicknesses from the ANSUR II / Greiner 1991 ranges; see ``docs/hand_model.md``).
2. ``hand_sdf``: an implicit surface, the smooth union of a rounded palm slab, a wrist stub,
   thenar and hypothenar pads, dorsal knuckle bumps, and elliptic round-cone phalanges; each
   finger is blended into the palm on its own (this makes the webs) and fingers are joined with
   a hard union.
3. Marching cubes on a 1.2 mm grid, quadric decimation to ``TARGET_FACES`` triangles, then a few
   rounds of tangential relaxation with projection back onto the implicit surface.
4. Rigging: smooth LBS weights (soft nearest bone, then diffusion on the mesh), a joint regressor
   whose rows reproduce the designed joint centres exactly, fingertip vertices.
5. Shape space: a family of plausible hands (``sample_params``) is mapped onto the template's
   topology through the skeleton and projected onto each variant's own surface; PCA of the
   displacements gives 10 shape directions scaled to unit variance (beta ~ N(0, I)).
6. Pose correctives: the 135 slots are zeros (documented in docs/hand_model.md).

Imports numpy, scipy, scikit-image and fast-simplification only (never torch, never bpy).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .constants import (
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    NUM_BETAS,
    NUM_JOINTS,
    NUM_POSE_CORRECTIVES,
    TIP_NAMES,
)

GENERATOR_VERSION = 1
GRID_SPACING_M = 0.0012
TARGET_FACES = 4600
FAMILY_SIZE = 400
FAMILY_SEED = 20191027  # ICCV 2019 opening day; any fixed value works
FINGERS = ("index", "middle", "ring", "pinky")  # the four long fingers, radial to ulnar
# MANO joint index of (finger)1 for each finger, and of thumb1.
FINGER_BASE_JOINT = {"index": 1, "middle": 4, "pinky": 7, "ring": 10, "thumb": 13}
TIP_ORDER = ("thumb", "index", "middle", "ring", "pinky")  # order of TIP_NAMES


@dataclass(frozen=True)
class HandParams:
    """Anthropometric parameters of one right hand. Scales are relative to the nominal adult hand.

    Nominal values (documented with sources in docs/hand_model.md) live in the module constants
    below; each field here scales one group of them, so that a family of hands is a set of scales.
    """

    size: float = 1.0  # overall isotropic scale (hand length 18.5 cm at 1.0)
    palm_width: float = 1.0  # knuckle spacing and palm breadth
    palm_length: float = 1.0  # wrist-to-knuckle distances
    finger_length: float = 1.0  # all phalanges, thumb included
    # per-digit phalanx length on top of finger_length: thumb, index, middle, ring, pinky
    digit_length: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    finger_girth: float = 1.0  # finger and thumb breadth and thickness
    fingertip_taper: float = 1.0  # tip radius relative to the DIP radius
    palm_thickness: float = 1.0  # dorsal-palmar thickness of the palm
    pads: float = 1.0  # thenar and hypothenar fullness


# ---- nominal anthropometry (metres, right hand; x distal, y dorsal, z ulnar; palm faces -y) ----
HAND_LENGTH = 0.185
# Finger segment lengths as fractions of hand length (Buchholz et al. 1992, Table 2).
PHALANX_FRACTIONS = {
    "thumb": (0.251, 0.196, 0.158),  # metacarpal (thumb1-thumb2), proximal, distal
    "index": (0.265, 0.143, 0.097),  # proximal, middle, distal
    "middle": (0.277, 0.170, 0.108),
    "ring": (0.259, 0.165, 0.107),
    "pinky": (0.206, 0.117, 0.093),
}
# MCP joint centres: x as a fraction of hand length, z (ulnar) as a fraction of palm breadth, y (m).
MCP_X_FRACTION = {"index": 0.425, "middle": 0.440, "ring": 0.420, "pinky": 0.385}
PALM_BREADTH = 0.086
MCP_Z_FRACTION = {"index": -0.330, "middle": -0.090, "ring": 0.145, "pinky": 0.350}
MCP_Y = {"index": -0.002, "middle": 0.0, "ring": -0.001, "pinky": -0.004}
# Rest spread of each finger in the palm plane (degrees, positive towards the pinky side).
SPREAD_DEG = {"index": -7.0, "middle": 0.0, "ring": 7.0, "pinky": 15.0}
# Half-breadths at MCP, PIP, DIP and near the tip (m); thickness = breadth * DEPTH_RATIO.
HALF_BREADTH = {
    "index": (0.0100, 0.0094, 0.0082, 0.0072),
    "middle": (0.0102, 0.0096, 0.0084, 0.0074),
    "ring": (0.0096, 0.0090, 0.0079, 0.0070),
    "pinky": (0.0086, 0.0080, 0.0071, 0.0063),
    "thumb": (0.0135, 0.0115, 0.0108, 0.0090),  # CMC (thenar core), MCP, IP, tip
}
DEPTH_RATIO = 0.88
THUMB_DEPTH_RATIO = 0.82
# Thumb: CMC joint centre (m) and, per segment, (angle from the x axis towards the radial side in
# degrees, palmar tilt as a y slope); the thumb rests abducted in the palm plane as in MANO's rest.
THUMB_CMC = (0.022, -0.010, -0.020)
THUMB_SEGMENTS = ((42.0, -0.15), (32.0, -0.08), (25.0, -0.05))
THUMB_ROLL_DEG = 65.0  # the thumb nail faces radially: its cross-section is rolled about its axis
PALM_HALF_THICKNESS = 0.014  # at the palm centre; thinner towards the ulnar edge and the knuckles
PALM_CENTRE_Y = -0.004
PALM_ROUNDING = 0.009
# wrist stub: axis start a, end b, half-breadth, half-thickness, end-cap radius
WRIST_STUB = ((-0.030, -0.002, 0.0), (0.008, -0.002, 0.0005), 0.027, 0.017, 0.012)


@dataclass
class Segment:
    """One bone-aligned primitive: an elliptic round cone from `a` to `b` in the frame (u, v, w)."""

    joint: int  # MANO joint whose rotation moves this segment (its LBS owner)
    a: np.ndarray  # (3,) start point
    b: np.ndarray  # (3,) end point
    rw: tuple[float, float]  # half-breadth at a, b (along v)
    rd: tuple[float, float]  # half-thickness at a, b (along w)
    frame: np.ndarray  # (3, 3) rows u (a->b), v (lateral), w (dorsal, nail side)
    name: str = ""


@dataclass
class Skeleton:
    """Rest-pose skeleton of one hand: joints, fingertips and the segments that carry the flesh."""

    joints: np.ndarray  # (16, 3) MANO order
    tips: np.ndarray  # (5, 3) thumb..pinky fingertip surface points
    segments: list[Segment] = field(default_factory=list)  # phalanges and thumb (LBS bones)
    # wrist stub and metacarpals, all moved by joint 0
    palm_segments: list[Segment] = field(default_factory=list)
    params: HandParams = field(default_factory=HandParams)


# ------------------------------------------------------------------------------- skeleton


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _frame(u: np.ndarray, up: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """(3, 3) rows u, v, w: w is `up` made orthogonal to u, rolled about u; v = w x u."""
    u = _unit(u)
    w = _unit(up - np.dot(up, u) * u)
    v = np.cross(w, u)
    if roll_deg:
        r = np.deg2rad(roll_deg)
        w, v = np.cos(r) * w + np.sin(r) * v, np.cos(r) * v - np.sin(r) * w
    return np.stack([u, v, w])


def build_skeleton(p: HandParams) -> Skeleton:
    """Joints (16, 3), fingertips (5, 3) and flesh segments of the right hand described by `p`."""
    s = p.size
    length = HAND_LENGTH * s
    joints = np.zeros((NUM_JOINTS, 3))
    tips = np.zeros((5, 3))
    segments: list[Segment] = []
    palm_segments: list[Segment] = []
    up = np.array([0.0, 1.0, 0.0])
    girth = s * p.finger_girth
    for fi, finger in enumerate(FINGERS):
        base = FINGER_BASE_JOINT[finger]
        mcp = np.array(
            [
                MCP_X_FRACTION[finger] * length * p.palm_length,
                MCP_Y[finger] * s,
                MCP_Z_FRACTION[finger] * PALM_BREADTH * s * p.palm_width,
            ]
        )
        ang = np.deg2rad(SPREAD_DEG[finger])
        u = np.array([np.cos(ang), 0.0, np.sin(ang)])
        frame = _frame(u, up)
        scale = p.finger_length * p.digit_length[1 + fi] * length
        lens = np.array(PHALANX_FRACTIONS[finger]) * scale
        hb = np.array(HALF_BREADTH[finger]) * girth
        hb[3] = hb[2] + (hb[3] - hb[2]) * p.fingertip_taper
        pts = [mcp, mcp + lens[0] * u, mcp + (lens[0] + lens[1]) * u]
        tip = mcp + lens.sum() * u
        joints[base : base + 3] = pts
        tips[TIP_ORDER.index(finger)] = tip
        # the last cone ends one tip radius short of the tip so its rounded cap reaches the tip
        ends = [pts[1], pts[2], tip - hb[3] * u]
        for k in range(3):
            segments.append(
                Segment(
                    joint=base + k,
                    a=pts[k],
                    b=ends[k],
                    rw=(hb[k], hb[k + 1]),
                    rd=(hb[k] * DEPTH_RATIO, hb[k + 1] * DEPTH_RATIO),
                    frame=frame,
                    name=f"{finger}{k + 1}",
                )
            )
        palm_segments.append(
            Segment(0, np.zeros(3), mcp, (hb[0], hb[0]), (hb[0], hb[0]), _frame(mcp, up), finger)
        )
    # thumb: CMC (thumb1), MCP (thumb2), IP (thumb3), tip
    cmc = np.array(THUMB_CMC) * s * np.array([p.palm_length, 1.0, p.palm_width])
    hb = np.array(HALF_BREADTH["thumb"]) * girth
    hb[3] = hb[2] + (hb[3] - hb[2]) * p.fingertip_taper
    lens = np.array(PHALANX_FRACTIONS["thumb"]) * length * p.finger_length * p.digit_length[0]
    pts = [cmc]
    dirs = []
    for (ang_deg, tilt), seg_len in zip(THUMB_SEGMENTS, lens, strict=True):
        ang = np.deg2rad(ang_deg)
        d = _unit(np.array([np.cos(ang), tilt, -np.sin(ang)]))
        dirs.append(d)
        pts.append(pts[-1] + seg_len * d)
    joints[13:16] = pts[:3]
    tips[0] = pts[3]
    ends = [pts[1], pts[2], pts[3] - hb[3] * dirs[2]]
    for k in range(3):
        frame = _frame(dirs[k], up, roll_deg=-THUMB_ROLL_DEG)
        segments.append(
            Segment(
                joint=13 + k,
                a=pts[k],
                b=ends[k],
                rw=(hb[k], hb[k + 1]),
                rd=(hb[k] * THUMB_DEPTH_RATIO, hb[k + 1] * THUMB_DEPTH_RATIO),
                frame=frame,
                name=f"thumb{k + 1}",
            )
        )
    palm_segments.append(
        Segment(
            0, np.zeros(3), cmc, (0.012 * s,) * 2, (0.012 * s,) * 2, _frame(cmc, up), "thumb_carpal"
        )
    )
    a, b, rw, rd, _ = WRIST_STUB
    palm_segments.append(
        Segment(
            0,
            np.array(a) * s,
            np.array(b) * s,
            (rw * s,) * 2,
            (rd * s,) * 2,
            _frame(np.array(b) - np.array(a), up),
            "wrist",
        )
    )
    return Skeleton(joints, tips, segments, palm_segments, p)


# ---------------------------------------------------------------------------------- SDF


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (blend radius k, metres)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _cone_sdf(pts: np.ndarray, seg: Segment, cap: float | None = None) -> np.ndarray:
    """Approximate signed distance (N,) to an elliptic round cone; exact for a round capsule."""
    rel = pts - seg.a
    loc = rel @ seg.frame.T  # (N, 3) coordinates along u, v, w
    length = np.linalg.norm(seg.b - seg.a)
    t = np.clip(loc[:, 0] / length, 0.0, 1.0)
    rw = seg.rw[0] + (seg.rw[1] - seg.rw[0]) * t
    rd = seg.rd[0] + (seg.rd[1] - seg.rd[0]) * t
    ru = rw if cap is None else np.full_like(rw, cap)
    du = loc[:, 0] - t * length
    q = np.sqrt((du / ru) ** 2 + (loc[:, 1] / rw) ** 2 + (loc[:, 2] / rd) ** 2)
    return (q - 1.0) * np.minimum(np.minimum(rw, rd), ru)


def _polygon_sdf(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (N,) from 2D points (N, 2) to a closed polygon (M, 2); negative inside."""
    d2 = np.full(len(p), np.inf)
    inside = np.zeros(len(p), dtype=bool)
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        e = b - a
        w = p - a
        t = np.clip((w @ e) / (e @ e), 0.0, 1.0)
        d2 = np.minimum(d2, np.sum((w - t[:, None] * e) ** 2, axis=1))
        # even-odd crossing test along +x
        cond = (a[1] > p[:, 1]) != (b[1] > p[:, 1])
        x_cross = a[0] + (p[:, 1] - a[1]) * e[0] / np.where(e[1] == 0, 1e-12, e[1])
        inside ^= cond & (p[:, 0] < x_cross)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def _palm_outline(sk: Skeleton) -> np.ndarray:
    """Inner palm polygon in the (x, z) plane, counter-clockwise seen from the back of the hand."""
    s, pw = sk.params.size, sk.params.palm_width
    mcp = {f: sk.joints[FINGER_BASE_JOINT[f]] for f in FINGERS}
    front = 0.004 * s
    pts = [
        (0.012 * s, -0.021 * s * pw),
        (0.040 * s, -0.027 * s * pw),
        (mcp["index"][0] - 0.004 * s, mcp["index"][2] - 0.002 * s),
        (mcp["index"][0] + front, mcp["index"][2]),
        (mcp["middle"][0] + front, mcp["middle"][2]),
        (mcp["ring"][0] + front, mcp["ring"][2]),
        (mcp["pinky"][0] + 0.002 * s, mcp["pinky"][2] + 0.001 * s),
        (mcp["pinky"][0] - 0.008 * s, mcp["pinky"][2] + 0.001 * s),
        (0.012 * s, 0.022 * s * pw),
    ]
    return np.array(pts)


def hand_sdf(sk: Skeleton, pts: np.ndarray) -> np.ndarray:
    """Signed distance (N,) of points (N, 3) to the hand surface (negative inside), metres."""
    p = sk.params
    s = p.size
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    # palm: rounded extrusion of the outline, thinner towards the ulnar edge and the knuckles
    d2 = _polygon_sdf(np.stack([x, z], axis=1), _palm_outline(sk))
    ulnar = np.clip((z / (s * p.palm_width) + 0.02) / 0.05, 0.0, 1.0)
    distal = np.clip((x / s - 0.03) / 0.05, 0.0, 1.0)
    half = (PALM_HALF_THICKNESS * p.palm_thickness * s) * (1 - 0.3 * ulnar) * (1 - 0.25 * distal)
    r = PALM_ROUNDING * s
    dy = np.abs(y - PALM_CENTRE_Y * s) - np.maximum(half - r, 0.2 * r)
    q = np.stack([d2, dy], axis=1)
    palm = np.minimum(np.max(q, axis=1), 0.0) + np.linalg.norm(np.maximum(q, 0.0), axis=1) - r
    # wrist stub with a flattened rounded end
    wrist = next(g for g in sk.palm_segments if g.name == "wrist")
    body = _smin(palm, _cone_sdf(pts, wrist, cap=WRIST_STUB[4] * s), 0.015 * s)
    # thenar and hypothenar pads (palmar side), dorsal knuckle bumps
    pad = p.pads
    thenar_axis = sk.joints[14] - sk.joints[13]
    thenar = Segment(
        0,
        sk.joints[13] + np.array([0.002, -0.004, 0.004]) * s,
        sk.joints[13] + 0.55 * thenar_axis + np.array([0, -0.003, 0.003]) * s,
        (0.014 * s * pad, 0.011 * s * pad),
        (0.011 * s * pad, 0.009 * s * pad),
        _frame(thenar_axis, np.array([0.0, 1.0, 0.0])),
    )
    body = _smin(body, _cone_sdf(pts, thenar), 0.012 * s)
    hypo_a = np.array([0.020, -0.012, 0.021]) * s * np.array([1, 1, p.palm_width])
    hypo_b = np.array([0.062, -0.010, 0.026]) * s * np.array([p.palm_length, 1, p.palm_width])
    hypothenar = Segment(
        0,
        hypo_a,
        hypo_b,
        (0.010 * s,) * 2,
        (0.008 * s * pad,) * 2,
        _frame(hypo_b - hypo_a, np.array([0.0, 1.0, 0.0])),
    )
    body = _smin(body, _cone_sdf(pts, hypothenar), 0.012 * s)
    for f in FINGERS:
        c = sk.joints[FINGER_BASE_JOINT[f]] + np.array([-0.003, 0.0055, 0.0]) * s
        knuckle = np.linalg.norm(pts - c, axis=1) - 0.0078 * s * p.finger_girth
        body = _smin(body, knuckle, 0.006 * s)
    # each digit blends into the body on its own; digits meet each other with a hard union
    out = np.full(len(pts), np.inf)
    for digit in ("thumb",) + FINGERS:
        segs = [g for g in sk.segments if g.name.startswith(digit)]
        d = _cone_sdf(pts, segs[0])
        for g in segs[1:]:
            d = _smin(d, _cone_sdf(pts, g), 0.003 * s)
        web = 0.016 * s if digit == "thumb" else 0.007 * s
        out = np.minimum(out, _smin(body, d, web))
    return out


def sdf_gradient(sk: Skeleton, pts: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central-difference gradient (N, 3) of `hand_sdf`."""
    g = np.zeros_like(pts)
    for i in range(3):
        dp = np.zeros(3)
        dp[i] = eps
        g[:, i] = (hand_sdf(sk, pts + dp) - hand_sdf(sk, pts - dp)) / (2 * eps)
    return g


def project_to_surface(sk: Skeleton, pts: np.ndarray, iters: int = 4) -> np.ndarray:
    """Newton steps along the SDF gradient onto the zero level set; (N, 3) -> (N, 3)."""
    for _ in range(iters):
        d = hand_sdf(sk, pts)
        g = sdf_gradient(sk, pts)
        pts = pts - (d / np.maximum(np.sum(g * g, axis=1), 1e-12))[:, None] * g
    return pts


# ------------------------------------------------------------------------------------ mesh


def edges_of(faces: np.ndarray) -> np.ndarray:
    """Directed half-edges (3F, 2) of a triangle list."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def vertex_neighbours(faces: np.ndarray, n: int):
    """Sparse (n, n) row-normalised adjacency (uniform Laplacian averaging operator)."""
    import scipy.sparse as sp

    e = edges_of(faces)
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    deg = np.asarray(a.sum(axis=1)).ravel()
    return sp.diags(1.0 / deg) @ a


def vertex_normals_np(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3)."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return _unit(n)


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    """Signed volume (m^3) enclosed by a closed triangle mesh; positive when faces point outward."""
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


def build_template_mesh(sk: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-oriented triangle mesh (V, 3), (F, 3) of the hand's implicit surface."""
    import fast_simplification
    from skimage.measure import marching_cubes

    lo = np.array([-0.05, -0.035, -0.10])
    hi = np.array([0.20, 0.025, 0.055])
    h = GRID_SPACING_M
    axes = [np.arange(lo[i], hi[i] + h, h) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    vol = hand_sdf(sk, grid).reshape(len(axes[0]), len(axes[1]), len(axes[2]))
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(h, h, h), method="lewiner")
    verts = verts + lo
    verts, faces = fast_simplification.simplify(
        verts.astype(np.float64), faces.astype(np.int64), target_count=TARGET_FACES, agg=7.0
    )
    verts, faces = _remove_unused(verts, faces)
    if signed_volume(verts, faces) < 0:
        faces = faces[:, [0, 2, 1]]
    # tangential relaxation: even out the triangles, then pull back onto the surface
    avg = vertex_neighbours(faces, len(verts))
    for _ in range(6):
        n = vertex_normals_np(verts, faces)
        lap = avg @ verts - verts
        lap -= np.sum(lap * n, axis=1, keepdims=True) * n
        verts = project_to_surface(sk, verts + 0.5 * lap, iters=2)
    return verts, faces.astype(np.int64)


def _remove_unused(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(f)
    remap = np.full(len(v), -1)
    remap[used] = np.arange(len(used))
    return v[used], remap[f]


def mesh_check(v: np.ndarray, f: np.ndarray) -> dict:
    """Topology facts: closed (every edge in exactly two faces, opposite directions), Euler char."""
    e = edges_of(f)
    key = e[:, 0] * len(v) + e[:, 1]
    rev = e[:, 1] * len(v) + e[:, 0]
    uniq, counts = np.unique(key, return_counts=True)
    oriented = bool(np.all(counts == 1) and np.all(np.isin(rev, key)))
    n_edges = len(e) // 2
    return {
        "vertices": len(v),
        "faces": len(f),
        "closed_and_oriented": oriented,
        "euler": len(v) - n_edges + len(f),
        "volume_m3": signed_volume(v, f),
        "degenerate_faces": int(
            np.sum(
                np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
                < 1e-12
            )
        ),
    }


# ----------------------------------------------------------------------------------- rigging


def _segment_distance(pts: np.ndarray, seg: Segment) -> np.ndarray:
    """Euclidean distance (N,) from points to the segment a-b."""
    e = seg.b - seg.a
    t = np.clip(((pts - seg.a) @ e) / (e @ e), 0.0, 1.0)
    return np.linalg.norm(pts - seg.a - t[:, None] * e, axis=1)


def bone_affinity(
    sk: Skeleton, verts: np.ndarray, faces: np.ndarray, tau: float = 0.0015, smooth_iters: int = 8
) -> np.ndarray:
    """Soft assignment (V, S) of vertices to all segments (palm segments first, then digits).

    Softmax of minus the distance to each segment (temperature `tau` metres), then diffused on the
    mesh by `smooth_iters` rounds of neighbour averaging, which keeps rows summing to one.
    """
    segs = sk.palm_segments + sk.segments
    d = np.stack([_segment_distance(verts, g) for g in segs], axis=1)
    w = np.exp(-(d - d.min(axis=1, keepdims=True)) / tau)
    w /= w.sum(axis=1, keepdims=True)
    avg = vertex_neighbours(faces, len(verts))
    for _ in range(smooth_iters):
        w = 0.5 * w + 0.5 * (avg @ w)
    return w


def lbs_weights(sk: Skeleton, affinity: np.ndarray, min_weight: float = 1e-3) -> np.ndarray:
    """(V, 16) normalised skinning weights: affinities summed per owning joint, tiny ones cut."""
    segs = sk.palm_segments + sk.segments
    w = np.zeros((len(affinity), NUM_JOINTS))
    for i, g in enumerate(segs):
        w[:, g.joint] += affinity[:, i]
    w[w < min_weight] = 0.0
    return w / w.sum(axis=1, keepdims=True)


def joint_regressor(sk: Skeleton, verts: np.ndarray) -> np.ndarray:
    """(16, V) regressor whose rows are near-uniform averages of a ring of vertices around each
    joint, corrected by the minimum-norm change that reproduces the designed joint centre exactly.
    """
    reg = np.zeros((NUM_JOINTS, len(verts)))
    for j in range(NUM_JOINTS):
        centre = sk.joints[j]
        if j == 0:
            frame, rw, rd, slab = np.eye(3), 0.035, 0.025, 0.004
        else:
            child = next(g for g in sk.segments if g.joint == j)
            parent_dir = centre - sk.joints[MANO_PARENTS[j]]
            n = _unit(_unit(child.b - child.a) + _unit(parent_dir))
            frame = _frame(n, child.frame[2])
            big = j == 13  # thumb1 sits inside the thenar
            rw = 0.020 if big else 1.3 * child.rw[0]
            rd = 0.020 if big else 1.8 * child.rd[0]
            slab = 0.004 * sk.params.size
        loc = (verts - centre) @ frame.T
        ring = (loc[:, 1] / rw) ** 2 + (loc[:, 2] / rd) ** 2 < 1.0
        # widen the slab until it holds a full ring (decimation leaves flat regions sparse)
        for grow in (1.0, 1.5, 2.0, 2.5):
            idx = np.nonzero(ring & (np.abs(loc[:, 0]) < grow * slab))[0]
            if len(idx) >= 12:
                break
        else:
            raise RuntimeError(f"joint {MANO_JOINT_NAMES[j]}: only {len(idx)} vertices around it")
        a = np.vstack([verts[idx].T, np.ones(len(idx))])  # (4, n) constraints: position, sum 1
        b = np.append(centre, 1.0)
        u = np.full(len(idx), 1.0 / len(idx))
        lam = np.linalg.solve(a @ a.T, b - a @ u)
        reg[j, idx] = u + a.T @ lam
    return reg


def fingertip_vertices(sk: Skeleton, verts: np.ndarray) -> np.ndarray:
    """(5,) vertex ids, thumb..pinky: the vertex nearest each designed fingertip point."""
    return np.array([int(np.argmin(np.linalg.norm(verts - t, axis=1))) for t in sk.tips])


def nail_mask(sk: Skeleton, verts: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """(V,) bool: dorsal vertices of the distal phalanges (where a nail texture goes)."""
    mask = np.zeros(len(verts), dtype=bool)
    n_palm = len(sk.palm_segments)
    for i, g in enumerate(sk.segments):
        if not g.name.endswith("3"):
            continue
        loc = (verts - g.a) @ g.frame.T
        length = np.linalg.norm(g.b - g.a)
        owned = affinity[:, n_palm + i] > 0.5
        mask |= owned & (loc[:, 0] > 0.25 * length) & (loc[:, 2] > 0.45 * g.rd[1])
    return mask


# ------------------------------------------------------------------------------ shape space


def sample_params(rng: np.random.Generator) -> HandParams:
    """One plausible adult hand; spreads follow the variations listed in docs/hand_model.md."""
    return HandParams(
        size=float(rng.normal(1.0, 0.055)),
        palm_width=float(rng.normal(1.0, 0.045)),
        palm_length=float(rng.normal(1.0, 0.035)),
        finger_length=float(rng.normal(1.0, 0.04)),
        digit_length=tuple(float(x) for x in rng.normal(1.0, 0.025, size=5)),
        finger_girth=float(rng.normal(1.0, 0.07)),
        fingertip_taper=float(rng.normal(1.0, 0.15)),
        palm_thickness=float(rng.normal(1.0, 0.08)),
        pads=float(rng.normal(1.0, 0.12)),
    )


def map_to_variant(
    base: Skeleton, var: Skeleton, verts: np.ndarray, affinity: np.ndarray
) -> np.ndarray:
    """Carry template vertices (V, 3) onto a variant hand: per segment, express each vertex in the
    segment's frame, stretch along the bone and across by the radius ratio, blend by `affinity`,
    then project onto the variant's own surface."""
    out = np.zeros_like(verts)
    for i, (g0, g1) in enumerate(
        zip(base.palm_segments + base.segments, var.palm_segments + var.segments, strict=True)
    ):
        loc = (verts - g0.a) @ g0.frame.T
        l0, l1 = np.linalg.norm(g0.b - g0.a), np.linalg.norm(g1.b - g1.a)
        t = np.clip(loc[:, 0] / l0, 0.0, 1.0)
        rw0 = g0.rw[0] + (g0.rw[1] - g0.rw[0]) * t
        rw1 = g1.rw[0] + (g1.rw[1] - g1.rw[0]) * t
        rd0 = g0.rd[0] + (g0.rd[1] - g0.rd[0]) * t
        rd1 = g1.rd[0] + (g1.rd[1] - g1.rd[0]) * t
        along = t * l1 + (loc[:, 0] - t * l0) * (rw1 / rw0)
        new = np.stack([along, loc[:, 1] * rw1 / rw0, loc[:, 2] * rd1 / rd0], axis=1)
        out += affinity[:, i : i + 1] * (g1.a + new @ g1.frame)
    return project_to_surface(var, out, iters=4)


def shape_space(
    base: Skeleton,
    verts: np.ndarray,
    affinity: np.ndarray,
    n: int = FAMILY_SIZE,
    seed: int = FAMILY_SEED,
) -> tuple[np.ndarray, dict]:
    """PCA of the family's displacements from the nominal hand.

    Returns shapedirs (V, 3, 10), scaled so that beta ~ N(0, I) spans the family, and a report of
    what each direction does (explained variance, the parameter it follows most, size change).
    """
    rng = np.random.default_rng(seed)
    params = [sample_params(rng) for _ in range(n)]
    disp = np.stack(
        [(map_to_variant(base, build_skeleton(p), verts, affinity) - verts).ravel() for p in params]
    )
    _, sv, vt = np.linalg.svd(disp, full_matrices=False)
    var = sv**2 / n
    comps = vt[:NUM_BETAS] * np.sqrt(var[:NUM_BETAS])[:, None]  # (10, 3V)
    scores = disp @ vt[:NUM_BETAS].T  # (n, 10)
    names, table = _param_table(params)
    report = {"explained_variance_ratio": (var[:NUM_BETAS] / var.sum()).round(4).tolist()}
    meaning = []
    for k in range(NUM_BETAS):
        corr = np.array([np.corrcoef(scores[:, k], table[:, c])[0, 1] for c in range(len(names))])
        c = int(np.argmax(np.abs(corr)))
        if corr[c] < 0:  # fix the sign: +beta_k follows its strongest parameter upwards
            comps[k] *= -1
            corr *= -1
        order = np.argsort(-np.abs(corr))[:3]
        meaning.append({names[o]: round(float(corr[o]), 2) for o in order})
    report["strongest_parameter_correlations"] = meaning
    shapedirs = comps.T.reshape(len(verts), 3, NUM_BETAS)
    return shapedirs, report


def _param_table(params: list[HandParams]) -> tuple[list[str], np.ndarray]:
    names, cols = [], []
    for f in dataclasses.fields(HandParams):
        vals = np.array([getattr(p, f.name) for p in params], dtype=float)
        if vals.ndim == 1:
            names.append(f.name)
            cols.append(vals)
        else:
            for i, digit in enumerate(TIP_ORDER):
                names.append(f"{digit}_length")
                cols.append(vals[:, i])
    return names, np.stack(cols, axis=1)


# ------------------------------------------------------------------------------- assemble


def mirror_to_left(right: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The left model as the right one mirrored through the x = 0 plane (x -> -x).

    With M = diag(-1, 1, 1): vertices and shape directions get M; a pose corrective column that
    multiplies entry (a, b) of (R - I) gets M and the sign m_a * m_b (since R_left = M R M); faces
    are re-oriented so that they still point outward.
    """
    m = np.array([-1.0, 1.0, 1.0])
    left = dict(right)
    left["v_template"] = right["v_template"] * m
    left["shapedirs"] = right["shapedirs"] * m[None, :, None]
    ab_sign = np.tile(np.outer(m, m).ravel(), NUM_POSE_CORRECTIVES // 9)  # (135,)
    left["posedirs"] = right["posedirs"] * m[None, :, None] * ab_sign[None, None, :]
    left["f"] = right["f"][:, [0, 2, 1]].copy()
    return left


def generate(log=print) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Build the right and left open hand models and a metadata report. Deterministic."""
    sk = build_skeleton(HandParams())
    log("meshing the implicit surface ...")
    verts, faces = build_template_mesh(sk)
    check = mesh_check(verts, faces)
    log(f"mesh: {check}")
    if not check["closed_and_oriented"] or check["euler"] != 2:
        raise RuntimeError(f"generated mesh is not a closed oriented sphere-like surface: {check}")
    affinity = bone_affinity(sk, verts, faces)
    weights = lbs_weights(sk, affinity)
    regressor = joint_regressor(sk, verts)
    tips = fingertip_vertices(sk, verts)
    log(f"shape space from {FAMILY_SIZE} variants ...")
    shapedirs, shape_report = shape_space(sk, verts, affinity)
    kintree = np.array(
        [[(p if p >= 0 else 4294967295) for p in MANO_PARENTS], list(range(NUM_JOINTS))],
        dtype=np.int64,
    )
    right = {
        "v_template": verts,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((len(verts), 3, NUM_POSE_CORRECTIVES)),
        "J_regressor": regressor,
        "kintree_table": kintree,
        "weights": weights,
        "f": faces,
        # no pose PCA is learned: identity components and a flat mean (use_pca=False is the norm)
        "hands_components": np.eye(45),
        "hands_mean": np.zeros(45),
        "tip_vertex_ids": tips,
        "nail_mask": nail_mask(sk, verts, affinity),
    }
    left = mirror_to_left(right)
    meta = {
        "name": "open_hand",
        "generator_version": GENERATOR_VERSION,
        "mesh": check,
        "joints_rest_m": np.round(sk.joints, 6).tolist(),
        "fingertips_rest_m": np.round(verts[tips], 6).tolist(),
        "wrist_to_middle_tip_m": round(float(np.linalg.norm(verts[tips[2]] - sk.joints[0])), 4),
        "shape_space": shape_report,
        "joint_names": list(MANO_JOINT_NAMES),
        "tip_names": list(TIP_NAMES),
    }
    return right, left, meta


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """Short hash of the arrays (rounded to 1e-9 so that platform float noise cannot change it)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.asarray(arrays[k])
        a = np.round(a, 9) if a.dtype.kind == "f" else a
        h.update(k.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def write(out_dir: Path, right: dict, left: dict, meta: dict) -> None:
    """Write MANO_RIGHT.npz, MANO_LEFT.npz (smplx-loadable) and metadata.json to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, id=f"open_hand-v{GENERATOR_VERSION}-{content_hash(right)}")
    for side, arrays in (("RIGHT", right), ("LEFT", left)):
        np.savez_compressed(out_dir / f"MANO_{side}.npz", **arrays)
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "assets" / "open_hand")
    args = ap.parse_args(argv)
    right, left, meta = generate()
    write(args.out, right, left, meta)
    print(
        f"wrote {args.out}: {meta['mesh']['vertices']} vertices, "
        f"wrist-to-middle-tip {meta['wrist_to_middle_tip_m']} m"
    )


if __name__ == "__main__":
    main()
