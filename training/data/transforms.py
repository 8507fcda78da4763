"""Batch transforms shared by training and evaluation: left hands become right hands.

The network sees right hands only (DESIGN.md): a left-hand item is mirrored left-right, image and
labels together, exactly as inference flips a left crop in. Works on collated batches (leading
batch axis) with the item contract of the readers and the synthetic engine.
Imports torch and the backend only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend.hand_model.model import mirror_points, mirror_pose


def flip_to_right(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return a new batch where every item with side == 1 is mirrored into a right hand.

    image/mask (B, ..., H, W) flip along W; keypoints2d u -> W - u (pixel centres j + 0.5 map to
    W - j - 0.5, as the flip maps pixel j to W - 1 - j); 3D points x -> -x; pose (x, y, z) ->
    (x, -y, -z); K's principal point cx -> W - cx; weak camera tx -> -tx. `side` keeps the
    original side so that results can be mirrored back."""
    if "side" not in batch:
        return dict(batch)
    left = batch["side"].bool()
    if not left.any():
        return dict(batch)
    out = dict(batch)
    width = batch["image"].shape[-1]

    def where(flipped: Tensor, key: str) -> Tensor:
        m = left.view(-1, *([1] * (flipped.dim() - 1)))
        return torch.where(m, flipped, batch[key])

    for key in ("image", "mask", "mask_visible"):
        if key in batch:
            out[key] = where(batch[key].flip(-1), key)
    if "keypoints2d" in batch:
        kp = batch["keypoints2d"].clone()
        kp[..., 0] = width - kp[..., 0]
        out["keypoints2d"] = where(kp, "keypoints2d")
    for key in ("keypoints3d", "vertices", "transl"):
        if key in batch:
            out[key] = where(mirror_points(batch[key]), key)
    if "pose" in batch:
        out["pose"] = where(mirror_pose(batch["pose"]), "pose")
    if "K" in batch:
        k = batch["K"].clone()
        k[..., 0, 2] = width - k[..., 0, 2]
        out["K"] = where(k, "K")
    if "cam_weak" in batch:
        cam = batch["cam_weak"].clone()
        cam[..., 1] = -cam[..., 1]
        out["cam_weak"] = where(cam, "cam_weak")
    return out
