"""Evaluation metrics for hand mesh recovery (FreiHAND protocol and common 3D/2D PCK).

- PA-MPJPE / PA-MPVPE: mean Euclidean error (m) of keypoints / vertices after a similarity
  Procrustes alignment (scale, rotation, translation) of the prediction to the ground truth.
- F@5mm / F@15mm: F-score of the aligned vertex sets (FreiHAND, Zimmermann et al. 2019):
  precision = share of predicted vertices within d of some ground-truth vertex, recall the
  converse, F = 2PR / (P + R).
- 3D PCK AUC 20-50 mm: root-relative keypoints (wrist subtracted), no alignment, the area under
  the PCK curve for thresholds 20..50 mm, normalised to [0, 1] (Zimmermann & Brox 2017).
- 2D PCK: share of visible keypoints within a threshold of the ground truth, in crop pixels
  (thresholds as fractions of the crop side: 0.05, 0.1, 0.2 of 256 px).
Pure torch; imports nothing from the project.
"""

from __future__ import annotations

import torch
from torch import Tensor


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """Similarity-align pred (B, N, 3) to gt (B, N, 3) (Umeyama 1991); returns aligned pred."""
    mu_p, mu_g = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)
    p, g = pred - mu_p, gt - mu_g
    cov = g.transpose(1, 2) @ p  # (B, 3, 3)
    u, s, vt = torch.linalg.svd(cov)
    d = torch.ones_like(s)
    d[:, -1] = torch.sign(torch.det(u @ vt))  # no reflections
    rot = u @ torch.diag_embed(d) @ vt  # (B, 3, 3) rotation taking p to g
    scale = (s * d).sum(1) / p.pow(2).sum(dim=(1, 2)).clamp(min=1e-12)
    return scale[:, None, None] * p @ rot.transpose(1, 2) + mu_g


def pa_error(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) mean per-point error (m) after Procrustes alignment."""
    return (procrustes_align(pred, gt) - gt).norm(dim=-1).mean(dim=1)


def f_score(pred: Tensor, gt: Tensor, threshold: float) -> Tensor:
    """(B,) F-score of point sets pred (B, N, 3) and gt (B, M, 3) at `threshold` metres."""
    d = torch.cdist(pred, gt)  # (B, N, M)
    precision = (d.amin(dim=2) < threshold).float().mean(dim=1)
    recall = (d.amin(dim=1) < threshold).float().mean(dim=1)
    return 2 * precision * recall / (precision + recall).clamp(min=1e-12)


def pck_auc_3d(pred: Tensor, gt: Tensor, lo: float = 0.020, hi: float = 0.050,
               steps: int = 31) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Root-relative 3D PCK: (per-threshold PCK (steps,), normalised AUC ()) over the batch."""
    err = ((pred - pred[:, :1]) - (gt - gt[:, :1])).norm(dim=-1)[:, 1:]  # (B, 20) wrist excluded
    thresholds = torch.linspace(lo, hi, steps, device=pred.device)
    pck = (err[None] <= thresholds[:, None, None]).float().mean(dim=(1, 2))
    auc = torch.trapezoid(pck, thresholds) / (hi - lo)
    return pck, auc


def pck_2d(pred: Tensor, gt: Tensor, visible: Tensor, threshold_px: float) -> Tensor:
    """() share of visible keypoints with 2D error below `threshold_px` (pred, gt (B, 21, 2))."""
    hit = ((pred - gt).norm(dim=-1) <= threshold_px).float()
    return (hit * visible).sum() / visible.sum().clamp(min=1)
