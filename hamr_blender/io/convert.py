"""Frames, rotations and the camera: every geometric conversion between the backend and Blender.

Frames (DESIGN.md "Conventions"):

- the *model frame* is the hand model's own frame. The backend's predictions place the posed hand
  in the OpenCV camera frame by a pure translation (``vertices_cam = vertices_model + transl``),
  so the model frame has the OpenCV camera axes: x right, y down, z forward (into the picture);
- the *Blender frame* is Blender's Z-up world: ``MODEL_TO_BLENDER`` maps model x -> +X (right),
  model y (down) -> -Z, model z (forward, away from the camera) -> +Y. It is a proper rotation
  (-90 degrees about X), so handedness and mesh winding are kept. The rig's mesh and bones
  are built in this frame and the rig objects carry no rotation, so a point p of the model frame
  sits at ``location + MODEL_TO_BLENDER @ p`` in the world;
- the *Blender camera frame* looks down its local -Z with +Y up: the OpenCV camera frame maps to
  it by ``OPENCV_TO_BLENDER_CAMERA = diag(1, -1, -1)``. `opencv_camera_to_blender` is the one
  function that turns an OpenCV camera (K, image size, camera placement) into Blender's camera
  settings; everything that builds or checks a camera goes through it.

Rotations: MANO's pose is axis-angle per joint, relative to its parent, in the model frame. A pose
bone's rotation acts in the bone's rest frame (``Bone.matrix_local``, rotation ``C`` in armature
space), so the model-frame rotation R of a joint becomes the pose-bone rotation
``C^T (M R M^T) C`` with M = MODEL_TO_BLENDER (`bone_local_rotations`). With every bone's head at
its joint, this reproduces MANO's linear blend skinning exactly (proof in docs of `rig.py`).

Pure numpy (no bpy, no torch): importable and testable anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Model frame (OpenCV axes) -> Blender world frame (Z up): x -> X, y -> -Z, z -> Y.
MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
BLENDER_TO_MODEL = MODEL_TO_BLENDER.T
# OpenCV camera frame (x right, y down, z forward) -> Blender camera frame (x right, y up, -z fwd).
OPENCV_TO_BLENDER_CAMERA = np.diag([1.0, -1.0, -1.0])
# Sensor width given to every aligned camera; the lens is scaled to it, so only the ratio matters.
SENSOR_WIDTH_MM = 36.0


# ------------------------------------------------------------------------------ frames
def model_to_blender(points: np.ndarray) -> np.ndarray:
    """(..., 3) points or directions in the model frame -> the Blender frame (rotation only)."""
    return np.asarray(points, dtype=np.float64) @ MODEL_TO_BLENDER.T


def blender_to_model(points: np.ndarray) -> np.ndarray:
    """(..., 3) points or directions in the Blender frame -> the model frame (inverse)."""
    return np.asarray(points, dtype=np.float64) @ MODEL_TO_BLENDER


# ------------------------------------------------------------------------------ rotations
def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle (axis times angle, radians) -> (..., 3, 3) rotation matrices.

    Rodrigues: R = I + sin(t)/t [r]x + (1 - cos t)/t^2 [r]x^2 with t = |r|; Taylor series near 0.
    """
    r = np.asarray(axis_angle, dtype=np.float64)
    t2 = np.sum(r * r, axis=-1)[..., None, None]  # (..., 1, 1)
    small = t2 < 1e-12
    t = np.sqrt(np.where(small, 1.0, t2))
    a = np.where(small, 1.0 - t2 / 6.0, np.sin(t) / t)
    b = np.where(small, 0.5 - t2 / 24.0, (1.0 - np.cos(t)) / np.where(small, 1.0, t2))
    x, y, z = r[..., 0], r[..., 1], r[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(r.shape[:-1] + (3, 3))
    return np.eye(3) + a * k + b * (k @ k)


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z), Blender's order.

    Shepperd's method: divide by the largest of 4w^2, 4x^2, 4y^2, 4z^2, exact near every angle.
    The sign is whatever the chosen branch gives (q and -q are the same rotation).
    """
    m = np.asarray(matrix, dtype=np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cand = np.stack(
        [
            1.0 + m00 + m11 + m22,  # 4 w^2
            1.0 + m00 - m11 - m22,  # 4 x^2
            1.0 - m00 + m11 - m22,  # 4 y^2
            1.0 - m00 - m11 + m22,  # 4 z^2
        ],
        axis=-1,
    )
    best = np.argmax(cand, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, best[..., None], -1)[..., 0], 1e-30))  # 2|q_i|
    d21, d02, d10 = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    s21, s02, s10 = (
        m[..., 2, 1] + m[..., 1, 2],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 1, 0] + m[..., 0, 1],
    )
    options = np.stack(
        [
            np.stack([s * s, d21, d02, d10], -1),
            np.stack([d21, s * s, s10, s02], -1),
            np.stack([d02, s10, s * s, s21], -1),
            np.stack([d10, s02, s21, s * s], -1),
        ],
        axis=-2,
    )  # (..., 4 branches, 4): each row is 2 s q
    q = np.take_along_axis(options, best[..., None, None], -2)[..., 0, :] / (2.0 * s[..., None])
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices."""
    q = np.asarray(quaternion, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def quaternion_continuity(quaternions: np.ndarray) -> np.ndarray:
    """(N, ..., 4) quaternion tracks over N frames -> the same rotations with signs chosen so that
    the first frame's w is non-negative (Blender shows a w < 0 quaternion as a turn of more than
    180 degrees: index2 at 260 instead of 100) and consecutive quaternions have a non-negative
    dot product (no 360-degree swings when Blender interpolates between keys). Flips q_0 when
    w_0 < 0, then q_i when q_i . q_{i-1} < 0, frame by frame."""
    q = np.array(quaternions, dtype=np.float64, copy=True)
    if len(q):
        q[0][q[0][..., 0] < 0.0] *= -1.0
    for i in range(1, len(q)):
        flip = np.sum(q[i] * q[i - 1], axis=-1) < 0.0
        q[i][flip] *= -1.0
    return q


def canonical_quaternion(quaternions: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z) -> the same rotations with w >= 0 (the shorter way)."""
    q = np.array(quaternions, dtype=np.float64, copy=True)
    q[q[..., 0] < 0.0] *= -1.0
    return q


def matrix_to_euler_xyz(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) Euler angles (x, y, z), radians, in Blender's
    'XYZ' order: R = Rz(z) Ry(y) Rx(x) (x applied first). y in [-pi/2, pi/2]; at gimbal lock
    (|y| = pi/2) x takes the whole turn about the free axis and z = 0."""
    m = np.asarray(matrix, dtype=np.float64)
    sy = np.clip(-m[..., 2, 0], -1.0, 1.0)
    y = np.arcsin(sy)
    cy = np.hypot(m[..., 0, 0], m[..., 1, 0])
    lock = cy < 1e-9
    x = np.where(
        lock, np.arctan2(-m[..., 1, 2], m[..., 1, 1]), np.arctan2(m[..., 2, 1], m[..., 2, 2])
    )
    z = np.where(lock, 0.0, np.arctan2(m[..., 1, 0], m[..., 0, 0]))
    return np.stack([x, y, z], axis=-1)


def euler_continuity(eulers: np.ndarray) -> np.ndarray:
    """(N, ..., 3) XYZ Euler tracks over N frames -> the same rotations as the Euler triples
    nearest the previous frame's: each frame picks, of its two triples (x, y, z) and
    (x + pi, pi - y, z + pi), each angle moved by whole turns to lie within pi of the previous
    one, the one closer to the previous frame (Blender's Euler.make_compatible does the same),
    so F-curves never jump by a turn between keys."""
    e = np.array(eulers, dtype=np.float64, copy=True)
    two_pi = 2.0 * np.pi
    for i in range(1, len(e)):
        prev = e[i - 1]
        alt = e[i] + np.array([np.pi, 0.0, np.pi])
        alt[..., 1] = np.pi - e[i][..., 1]
        best, best_d = None, None
        for cand in (e[i], alt):
            cand = cand - two_pi * np.round((cand - prev) / two_pi)
            d = np.sum(np.abs(cand - prev), axis=-1)
            if best is None:
                best, best_d = cand, d
            else:
                take = d < best_d
                best = np.where(take[..., None], cand, best)
                best_d = np.minimum(d, best_d)
        e[i] = best
    return e


def bone_local_rotations(
    pose_axis_angle: np.ndarray, bone_rest_rotations: np.ndarray
) -> np.ndarray:
    """MANO pose -> pose-bone quaternions that reproduce it.

    pose_axis_angle (..., 16, 3): model-frame axis-angle per joint, relative to its parent.
    bone_rest_rotations (16, 3, 3): each bone's rest rotation C in armature space (the 3x3 of
    ``Bone.matrix_local``), the armature being in the Blender frame.
    Returns (..., 16, 4) quaternions (w, x, y, z) for ``PoseBone.rotation_quaternion``:
    ``R_bone = C^T (M R M^T) C``, M = MODEL_TO_BLENDER.
    """
    r_model = axis_angle_to_matrix(pose_axis_angle)  # (..., 16, 3, 3)
    c = np.asarray(bone_rest_rotations, dtype=np.float64)  # (16, 3, 3)
    a = MODEL_TO_BLENDER.T @ c  # (16, 3, 3): bone axes in the model frame
    r_bone = np.swapaxes(a, -1, -2) @ r_model @ a  # (..., 16, 3, 3)
    return matrix_to_quaternion(r_bone)


# Quaternion monomials the corrective drivers use, in this order.
QUAT_MONOMIALS = ("w*w", "x*x", "y*y", "z*z", "w*x", "w*y", "w*z", "x*y", "x*z", "y*z")


def _rotation_monomial_coefficients() -> np.ndarray:
    """(3, 3, 10): R(q)[a, b] * |q|^2 as coefficients of QUAT_MONOMIALS (homogeneous form)."""
    c = np.zeros((3, 3, 10))
    ww, xx, yy, zz, wx, wy, wz, xy, xz, yz = range(10)
    c[0, 0, [ww, xx, yy, zz]] = [1, 1, -1, -1]
    c[1, 1, [ww, xx, yy, zz]] = [1, -1, 1, -1]
    c[2, 2, [ww, xx, yy, zz]] = [1, -1, -1, 1]
    c[0, 1, [xy, wz]] = [2, -2]
    c[1, 0, [xy, wz]] = [2, 2]
    c[0, 2, [xz, wy]] = [2, 2]
    c[2, 0, [xz, wy]] = [2, -2]
    c[1, 2, [yz, wx]] = [2, -2]
    c[2, 1, [yz, wx]] = [2, 2]
    return c


def corrective_driver_expressions(bone_rest_rotation: np.ndarray) -> list[str]:
    """The 9 driver expressions of one joint's pose correctives, row-major over (R - I).

    MANO's pose feature of joint j is (R_j - I) flattened row-major, R_j its model-frame rotation
    relative to the parent. In Blender, R_j = A R_bone A^T with A = M^T C (see
    `bone_local_rotations`) and R_bone = R(q) of the bone's local quaternion q = (w, x, y, z).
    Each entry is a quadratic form in q divided by |q|^2 (so a non-normalised quaternion still
    gives a rotation), minus 1 on the diagonal. The expressions use only + - * / and the driver
    variables w, x, y, z: Blender evaluates them without Python ("simple expressions"), so they
    run even when auto-run of Python scripts is off.
    """
    a = MODEL_TO_BLENDER.T @ np.asarray(bone_rest_rotation, dtype=np.float64)  # (3, 3)
    coef = _rotation_monomial_coefficients()  # (3, 3, 10) over R_bone entries
    # entry (r, c) of A R_bone A^T = sum_ab A[r, a] A[c, b] R_bone[a, b]
    model = np.einsum("ra,cb,abk->rck", a, a, coef)  # (3, 3, 10)
    exprs = []
    for r in range(3):
        for col in range(3):
            terms = [
                f"{model[r, col, k]:+.9f}*{QUAT_MONOMIALS[k]}"
                for k in range(10)
                if abs(model[r, col, k]) > 1e-9
            ]
            num = "".join(terms) if terms else "0"
            expr = f"({num})/(w*w+x*x+y*y+z*z)"
            if r == col:
                expr += "-1"
            exprs.append(expr)
    return exprs


# ------------------------------------------------------------------------------ camera
@dataclass(frozen=True)
class BlenderCamera:
    """Blender camera settings equivalent to an OpenCV pinhole camera.

    lens_mm / sensor_width_mm with sensor_fit 'HORIZONTAL': the focal length is measured against
    the image width whatever the aspect ratio (so it never depends on Blender's AUTO fit rule).
    shift_x and shift_y are, as Blender defines them for a horizontal fit, fractions of the image
    *width*. matrix_world (4, 4) places the camera object in the Blender world.
    """

    lens_mm: float
    sensor_width_mm: float
    sensor_fit: str
    shift_x: float
    shift_y: float
    resolution_x: int
    resolution_y: int
    matrix_world: tuple[tuple[float, ...], ...]


def camera_rotation_world() -> np.ndarray:
    """(3, 3) world rotation of a Blender camera object whose OpenCV frame has the model-frame
    axes: R = MODEL_TO_BLENDER @ OPENCV_TO_BLENDER_CAMERA^T (a camera looking along world +Y,
    up +Z: Euler (90, 0, 0) degrees)."""
    return MODEL_TO_BLENDER @ OPENCV_TO_BLENDER_CAMERA.T


def opencv_camera_to_blender(
    K: np.ndarray,
    width: int,
    height: int,
    camera_location_world: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 0.0),
    sensor_width_mm: float = SENSOR_WIDTH_MM,
) -> BlenderCamera:
    """THE OpenCV -> Blender camera conversion.

    K (3, 3): pinhole intrinsics in image pixels (DESIGN.md: origin at the top-left corner of the
    top-left pixel, v down); width, height: the image size in pixels. The camera's OpenCV frame is
    the model frame translated to ``camera_location_world`` (Blender world, metres): its axes map
    to the world by MODEL_TO_BLENDER and to the Blender camera object's local axes by
    OPENCV_TO_BLENDER_CAMERA = diag(1, -1, -1).

    Blender's view plane (horizontal fit, square pixels) projects a camera-local point (X, Y, Z),
    depth d = -Z, to the pixel u = f X / d + W/2 - shift_x W (from the left) and
    v = H/2 + shift_y W - f Y / d (from the top), with f = lens / sensor_width * W. Matching
    u = fx x/z + cx and v = fy y/z + cy (x = X, y = -Y, z = d) gives:

        lens = fx * sensor_width / W,  shift_x = (W/2 - cx) / W,  shift_y = (cy - H/2) / W.

    Raises ValueError for a skewed K, non-square pixels (fx != fy beyond 0.1 %) or a bad size.
    """
    k = np.asarray(K, dtype=np.float64)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise ValueError(f"K must be a finite 3x3 matrix, got shape {k.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if fx <= 0 or fy <= 0:
        raise ValueError(f"K has a non-positive focal length ({fx}, {fy})")
    if abs(k[0, 1]) > 1e-9 * fx or np.any(np.abs(k[2] - (0, 0, 1)) > 1e-9):
        raise ValueError("K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew)")
    if abs(fx - fy) > 1e-3 * fx:
        raise ValueError(f"non-square pixels (fx={fx}, fy={fy}) are not supported")
    world = np.eye(4)
    world[:3, :3] = camera_rotation_world()
    world[:3, 3] = np.asarray(camera_location_world, dtype=np.float64)
    return BlenderCamera(
        lens_mm=float(fx * sensor_width_mm / width),
        sensor_width_mm=float(sensor_width_mm),
        sensor_fit="HORIZONTAL",
        shift_x=float((width / 2 - cx) / width),
        shift_y=float((cy - height / 2) / width),
        resolution_x=int(width),
        resolution_y=int(height),
        matrix_world=tuple(tuple(float(v) for v in row) for row in world),
    )


def fit_intrinsics(
    K: np.ndarray, width: int, height: int, frame_width: int, frame_height: int
) -> np.ndarray:
    """(3, 3) the intrinsics that show a width x height photo, taken with K, inside a frame of
    frame_width x frame_height pixels (the scene's render size) as Blender's camera background
    'FIT' shows it: scaled by s = min(frame_w / w, frame_h / h), centred. A point at photo pixel
    (u, v) lands on frame pixel (s u + ox, s v + oy), ox = (frame_w - s w) / 2 (oy likewise),
    so K' = [[s fx, 0, s cx + ox], [0, s fy, s cy + oy], [0, 0, 1]]."""
    if min(width, height, frame_width, frame_height) < 1:
        raise ValueError(
            f"image and frame sizes must be positive, got {width}x{height}, "
            f"{frame_width}x{frame_height}"
        )
    s = min(frame_width / width, frame_height / height)
    k = np.asarray(K, dtype=np.float64)
    out = k.copy()
    out[0, 0], out[1, 1] = s * k[0, 0], s * k[1, 1]
    out[0, 2] = s * k[0, 2] + (frame_width - s * width) / 2.0
    out[1, 2] = s * k[1, 2] + (frame_height - s * height) / 2.0
    return out


def blender_camera_to_K(cam: BlenderCamera) -> np.ndarray:
    """Inverse of `opencv_camera_to_blender` for the intrinsics: BlenderCamera -> (3, 3) K."""
    if cam.sensor_fit != "HORIZONTAL":
        raise ValueError("only sensor_fit 'HORIZONTAL' cameras are converted")
    w, h = cam.resolution_x, cam.resolution_y
    f = cam.lens_mm / cam.sensor_width_mm * w
    return np.array(
        [[f, 0.0, w / 2 - cam.shift_x * w], [0.0, f, h / 2 + cam.shift_y * w], [0.0, 0.0, 1.0]]
    )


def project_blender_camera(cam: BlenderCamera, points_world: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 2) image pixels (u right, v down) through a BlenderCamera,
    computed from Blender's own view-plane definition (see `opencv_camera_to_blender`)."""
    m = np.asarray(cam.matrix_world)
    local = (np.asarray(points_world, dtype=np.float64) - m[:3, 3]) @ m[:3, :3]  # (N, 3)
    w, h = cam.resolution_x, cam.resolution_y
    f = cam.lens_mm / cam.sensor_width_mm * w
    d = -local[:, 2]
    u = f * local[:, 0] / d + w / 2 - cam.shift_x * w
    v = h / 2 + cam.shift_y * w - f * local[:, 1] / d
    return np.stack([u, v], axis=-1)


def camera_location_for_hand(hand_location_world: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """World position of the camera whose OpenCV frame sees the hand model's origin at `transl`
    (camera frame) when the hand's rig object sits at `hand_location_world`."""
    return np.asarray(hand_location_world, dtype=np.float64) - model_to_blender(transl)


# ------------------------------------------------------------------------------ time
# Video frame i is shown from time i / video_fps (frame 0 at the scene's start frame), so its
# pose belongs at scene frame start + i * scene_fps / video_fps: a fractional frame when the
# rates differ. Keys go there exactly (Blender keys and evaluates at sub-frames), so no video
# frame is dropped or doubled; at a whole scene frame Blender interpolates between the two
# nearest keys, and the clip behind the camera shows the video frame whose key is nearest
# (`clip_offset_expression`).


def _check_rates(video_fps: float, scene_fps: float) -> None:
    if not (video_fps > 0 and scene_fps > 0):
        raise ValueError(f"frame rates must be positive (video {video_fps}, scene {scene_fps})")


def scene_frame(index: int, video_fps: float, scene_fps: float, frame_start: int) -> int:
    """The whole scene frame nearest video frame `index`'s time:
    start + round(index * scene_fps / video_fps)."""
    _check_rates(video_fps, scene_fps)
    return int(frame_start + round(index * scene_fps / video_fps))


def scene_frame_times(
    indices: np.ndarray, video_fps: float, scene_fps: float, frame_start: int
) -> np.ndarray:
    """(N,) video frame indices -> (N,) scene frames (float) at their times:
    start + index * scene_fps / video_fps."""
    _check_rates(video_fps, scene_fps)
    return frame_start + np.asarray(indices, dtype=np.float64) * (scene_fps / video_fps)


def clip_frame_at(
    frame: int, video_fps: float, scene_fps: float, frame_start: int, last_index: int
) -> int:
    """The video frame (0-based) to show at whole scene frame `frame`: the one whose time is
    nearest the scene frame's, floor((frame - start) * video_fps / scene_fps + 1/2), held
    within [0, last_index] (the clip's last frame stays up until the take's last scene frame)."""
    _check_rates(video_fps, scene_fps)
    index = int(np.floor((frame - frame_start) * video_fps / scene_fps + 0.5))
    return min(max(index, 0), int(last_index))


def clip_offset_expression(
    video_fps: float, scene_fps: float, frame_start: int, last_index: int
) -> str:
    """A driver expression for ``MovieClip.frame_offset`` that makes a clip whose
    ``frame_start`` is the scene's start show `clip_frame_at(frame)` at each scene frame.

    Blender shows the clip's 0-based frame ``frame - clip.frame_start + clip.frame_offset``
    at scene frame ``frame`` (movieclip.cc: one clip frame per scene frame, whatever the clip's
    rate), so the offset is clip_frame_at(frame) - (frame - start). Only `frame`, numbers,
    floor, min and max: a simple expression, which Blender evaluates without Python auto-run."""
    _check_rates(video_fps, scene_fps)
    ratio = float(video_fps) / float(scene_fps)
    index = f"min(max(floor((frame - {frame_start}) * {ratio!r} + 0.5), 0), {int(last_index)})"
    return f"{index} - (frame - {frame_start})"


def scene_rate(fps: float) -> tuple[int, float]:
    """Blender's (render.fps, render.fps_base) for a frame rate: fps = round(rate) (at least 1)
    and fps_base = fps / rate, so fps / fps_base is the rate (29.97 -> (30, 1.001))."""
    if not fps > 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    whole = max(1, int(round(fps)))
    return whole, whole / float(fps)


# ------------------------------------------------------------------------------ rig anatomy
# MANO joint indices of each digit, proximal to distal (backend.hand_model.poses.DIGIT_JOINTS).
DIGIT_JOINTS: dict[str, tuple[int, int, int]] = {
    "thumb": (13, 14, 15),
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "ring": (10, 11, 12),
    "pinky": (7, 8, 9),
}
# Active ranges of motion, degrees, (min, max) of flex1, flex2, flex3, spread, twist per digit:
# the hand model's anatomy as the synthetic data engine samples it (training/synth/prior.py
# LIMITS_DEG, typical ranges from the hand-surgery literature; a test pins the copy).
LIMITS_DEG: dict[str, tuple[tuple[float, float], ...]] = {
    "thumb": ((-15, 55), (-10, 65), (-15, 85), (-35, 40), (-10, 10)),
    "index": ((-20, 90), (0, 110), (-5, 80), (-20, 25), (-6, 6)),
    "middle": ((-20, 90), (0, 110), (-5, 80), (-15, 15), (-6, 6)),
    "ring": ((-20, 90), (0, 110), (-5, 80), (-20, 20), (-6, 6)),
    "pinky": ((-20, 90), (0, 110), (-5, 80), (-20, 30), (-8, 8)),
}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def palm_normal(joints: np.ndarray, side: str) -> np.ndarray:
    """(3,) unit normal out of the palm for rest joints (16, 3) in MANO order, as the backend
    defines it (backend.hand_model.poses.palm_normal): (index1 - pinky1) x (middle1 - wrist) for
    a right hand, the other way round for a left one (a mirror image flips cross products)."""
    j = np.asarray(joints, dtype=np.float64)
    along, across = j[4] - j[0], j[1] - j[7]
    return _unit(np.cross(across, along) if side == "right" else np.cross(along, across))


def digit_axes(joints: np.ndarray, side: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """digit -> (flexion axis (3,), spread axis (3,)) for rest joints (16, 3), in their frame, as
    the backend's named poses and pose prior use them (backend.hand_model.poses.digit_axes):
    flexion d x n (d the digit's first bone, n the palm normal; a positive angle curls towards
    the palm), spread +-n (positive away from the middle finger; the thumb away from the index)."""
    j = np.asarray(joints, dtype=np.float64)
    n = palm_normal(j, side)
    middle_dir = _unit(j[5] - j[4])
    out = {}
    for digit, (j1, j2, _) in DIGIT_JOINTS.items():
        d = _unit(j[j2] - j[j1])
        flex = _unit(np.cross(d, n))
        away = d - middle_dir if digit != "middle" else np.zeros(3)
        if digit == "thumb":
            away = d - _unit(j[2] - j[1])
        spread = n if float(np.dot(np.cross(n, d), away)) >= 0 else -n
        out[digit] = (flex, spread)
    return out


def hand_uv(vertices: np.ndarray, faces: np.ndarray, side: str) -> np.ndarray:
    """(F, 3, 2) per-corner UVs of the hand mesh (rest vertices (V, 3) in the model frame, where
    the flat hand lies in the x-z plane with its back towards +y): the back of the hand and the
    palm projected onto the hand's plane, side by side (back in u < 0.5, palm in u > 0.5), fingers
    up (v), aspect kept. A face goes to the island its normal faces; each island is mirrored if
    needed so that its faces keep their winding (no island is seen from behind), which also
    makes a left hand's layout the mirror image of the right's."""
    p = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if side == "left":
        p = p * np.array([-1.0, 1.0, 1.0])
    normal = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
    if side == "left":  # mirrored positions: the winding's normals point the other way
        normal = -normal
    back = normal[:, 1] >= 0.0  # (F,)
    along, across = p[:, 0], p[:, 2]  # fingers along +x
    margin = 0.02
    scale = min((1 - 2 * margin) / np.ptp(along), (0.5 - 2 * margin) / np.ptp(across))
    uv = np.empty(f.shape + (2,))
    uv[..., 1] = (margin + (along - along.min()) * scale)[f]
    uv[..., 0] = (margin + (across - across.min()) * scale)[f]
    uv[~back, :, 0] += 0.5
    for island, (lo, hi) in ((back, (0.0, 0.5)), (~back, (0.5, 1.0))):
        e1, e2 = uv[island, 1] - uv[island, 0], uv[island, 2] - uv[island, 0]
        if np.sum(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0:  # seen from behind: mirror
            uv[island, :, 0] = lo + hi - uv[island, :, 0]
    return uv
