"""Temporal smoothing of hand tracks: the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012).

The One-Euro filter is a first-order low-pass filter whose cutoff rises with the signal's speed:
at rest it removes jitter (cutoff `min_cutoff`), when the hand moves fast it follows with little
lag (cutoff `min_cutoff + beta * speed`). Per step, with dt the time since the previous sample:

    alpha(fc) = 1 / (1 + tau / dt),  tau = 1 / (2 pi fc)          (Casiez et al., Eq. 2-3)
    dx_hat    = lowpass(dx = (x - x_hat_prev) / dt, alpha(d_cutoff))
    fc        = min_cutoff + beta * |dx_hat|
    x_hat     = lowpass(x, alpha(fc)) = alpha x + (1 - alpha) x_hat_prev

Each quantity is filtered in its own space: translations (metres) as 3-vectors, joint rotations as
unit quaternions (w, x, y, z) with sign continuity (q and -q are one rotation: a sample is negated
when its dot product with the previous output is negative) and renormalised after each step.
The speed |dx_hat| is the Euclidean norm over the last axis: one cutoff per translation vector and
one per joint quaternion (|dq/dt| is half the angular speed in rad/s).

`params_for_strength` maps the single user-facing `--smoothing` strength s in [0, 1] to the
filter parameters (s = 0 switches smoothing off):

    min_cutoff = 10 ** (1 - 2 s) Hz    (10 Hz near s = 0, 1 Hz at 0.5 as Casiez's default, 0.1 at 1)
    beta       = 2 (1 - s) BETA_REF    (BETA_REF: rotation 5 s, translation 20 s/m; 0 at s = 1)
    d_cutoff   = 1 Hz                  (Casiez's recommended value)

Imports numpy only; never torch, bpy or the training package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BETA_REF_ROTATION = 5.0  # s per unit of quaternion speed (|dq/dt|, 1/s) at strength 0.5
BETA_REF_TRANSLATION = 20.0  # s/m at strength 0.5
D_CUTOFF_HZ = 1.0


@dataclass(frozen=True)
class OneEuroParams:
    """Parameters of one One-Euro filter."""

    min_cutoff: float  # Hz, cutoff at rest: lower removes more jitter and lags more when slow
    beta: float  # s per unit of speed: how fast the cutoff rises with speed (less lag when fast)
    d_cutoff: float = D_CUTOFF_HZ  # Hz, cutoff of the low-pass on the speed estimate


def params_for_strength(strength: float) -> tuple[OneEuroParams, OneEuroParams] | None:
    """(rotation params, translation params) for a smoothing strength in [0, 1]; None for 0 (no
    smoothing). Raises ValueError outside [0, 1]."""
    if not (0.0 <= strength <= 1.0):
        raise ValueError(f"smoothing must be between 0 and 1, got {strength}")
    if strength == 0.0:
        return None
    min_cutoff = 10.0 ** (1.0 - 2.0 * strength)
    scale = 2.0 * (1.0 - strength)
    return (
        OneEuroParams(min_cutoff, scale * BETA_REF_ROTATION),
        OneEuroParams(min_cutoff, scale * BETA_REF_TRANSLATION),
    )


def smoothing_factor(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray:
    """alpha = 1 / (1 + tau / dt) with tau = 1 / (2 pi cutoff): the weight of the new sample."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff_hz, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter of an array signal (..., D); the speed is the norm over the last axis."""

    def __init__(self, params: OneEuroParams) -> None:
        self.params = params
        self.x_hat: np.ndarray | None = None  # previous output
        self.dx_hat: np.ndarray | None = None  # previous filtered derivative
        self.t_prev: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter sample x (..., D) taken at time t (seconds, increasing); returns x_hat."""
        x = np.asarray(x, dtype=np.float64)
        if self.x_hat is None or self.t_prev is None:
            self.x_hat, self.dx_hat, self.t_prev = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t_prev
        if dt <= 0:
            raise ValueError(f"sample times must increase, got {t} after {self.t_prev}")
        p = self.params
        dx = (x - self.x_hat) / dt
        a_d = smoothing_factor(p.d_cutoff, dt)
        # lowpass written as prev + alpha (x - prev): a constant signal stays bit-exact
        self.dx_hat = self.dx_hat + a_d * (dx - self.dx_hat)
        speed = np.linalg.norm(self.dx_hat, axis=-1, keepdims=True)
        a = smoothing_factor(p.min_cutoff + p.beta * speed, dt)
        self.x_hat = self.x_hat + a * (x - self.x_hat)
        self.t_prev = t
        return self.x_hat.copy()


class QuaternionFilter:
    """One-Euro filter of unit quaternions (..., 4) with sign continuity and renormalisation."""

    def __init__(self, params: OneEuroParams) -> None:
        self.filter = OneEuroFilter(params)

    def __call__(self, q: np.ndarray, t: float) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        prev = self.filter.x_hat
        if prev is not None:  # q and -q are one rotation: take the one nearer the last output
            q = np.where(np.sum(q * prev, axis=-1, keepdims=True) < 0, -q, q)
        out = self.filter(q, t)
        out /= np.linalg.norm(out, axis=-1, keepdims=True)
        self.filter.x_hat = out.copy()  # keep the state on the unit sphere
        return out


def axis_angle_to_quaternion(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> unit quaternions (..., 4) as (w, x, y, z), w >= 0."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    half = angle / 2
    # sin(a/2)/a, with its Taylor series near 0 (error < 1e-16 for a < 1e-4)
    small = angle < 1e-4
    safe = np.where(small, 1.0, angle)
    k = np.where(small, 0.5 - angle**2 / 48, np.sin(half) / safe)
    return np.concatenate([np.cos(half), rotvec * k], axis=-1)


def quaternion_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) (w, x, y, z), any norm and sign -> axis-angle (..., 3), angle <= pi."""
    quat = np.asarray(quat, dtype=np.float64)
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    quat = np.where(quat[..., :1] < 0, -quat, quat)
    w, xyz = quat[..., :1], quat[..., 1:]
    s = np.linalg.norm(xyz, axis=-1, keepdims=True)
    angle = 2 * np.arctan2(s, w)
    small = s < 1e-8
    # angle / sin(angle/2) = angle / s, which tends to 2 / w as s -> 0
    k = np.where(small, 2.0 / np.maximum(w, 1e-12), angle / np.where(small, 1.0, s))
    return xyz * k


def smooth_track(
    times: np.ndarray, pose: np.ndarray, transl: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth one hand track. times (N,) seconds, increasing; pose (N, 16, 3) axis-angle;
    transl (N, 3) metres. Returns the smoothed (pose, transl), same shapes; a copy of the input
    when strength is 0."""
    params = params_for_strength(strength)
    if params is None:
        return np.array(pose, dtype=np.float64), np.array(transl, dtype=np.float64)
    rot_filter, transl_filter = QuaternionFilter(params[0]), OneEuroFilter(params[1])
    quats = axis_angle_to_quaternion(pose)  # (N, 16, 4)
    out_q = np.stack([rot_filter(q, float(t)) for q, t in zip(quats, times, strict=True)])
    out_t = np.stack([transl_filter(x, float(t)) for x, t in zip(transl, times, strict=True)])
    return quaternion_to_axis_angle(out_q), out_t
