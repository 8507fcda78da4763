"""HAMR's training losses (Zhang et al., ICCV 2019, Sec. 3.3) as pure functions, and their sum.

Terms (each a scalar, averaged over the samples and entries that have the label):
1. 3D keypoints: L1 on root-relative 3D keypoints, metres (`keypoints3d_loss`).
2. 2D keypoints: L1 on normalised crop coordinates, visible keypoints only (`keypoints2d_loss`).
3. Geometric constraints on the predicted 3D keypoints, no label needed (`geometric_loss`):
   finger planarity and bending direction; plus bone-length agreement with the label
   (`bone_length_loss`).
4. Camera: squared error between the predicted weak camera and the one fitted in closed form to
   the label's 3D and 2D keypoints (`camera_loss`).
5. Heat-maps: MSE of every hourglass stack against Gaussian targets (`heatmap_loss`,
   `keypoint_heatmaps`).
6. Silhouette: L1 between the soft silhouette of the predicted mesh and the ground-truth mask at a
   low resolution (`silhouette_loss`).
Plus, where MANO labels exist, the articulation term (`articulation_loss`: 3D keypoints in each
hand's own wrist frame, so finger pose is learnt apart from the global orientation), an optional
parameter loss against MANO labels (`param_loss`), small priors on pose and shape
(`pose_prior`, `betas_prior`), and `hamr_loss`, which combines them with `LossWeights`.

Batch contract (a dict of tensors, B samples): image (B, 3, S, S) in [0, 1]; mask (B, S, S) float;
keypoints2d (B, 21, 2) crop pixels; keypoints2d_vis (B, 21); keypoints3d (B, 21, 3) camera frame,
metres; has_3d, has_mask, has_mano (B,); pose (B, 16, 3) axis-angle and betas (B, 10), valid where
has_mano. Labels where the has_* flag is off may hold anything (zeros, NaN): they are replaced
before use, never multiplied by a zero mask. Optional per-sample label weights weight_2d and
weight_3d (B,) in [0, 1] (teacher-labelled real photos: training/data/teacher_folder.py) scale
each sample's share of the 2D terms (keypoints2d, heatmaps, heatmap_keypoints, camera) and of the
3D terms (keypoints3d, bones, articulation, params); absent, every sample weighs 1. A term whose
label a sample lacks (has_* 0, visibility 0) contributes exactly zero loss and zero gradient
through that sample.

The training package imports the backend, never the other way round; no bpy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.hand_model.anatomy import (  # noqa: F401  (part of this module's API)
    BEND_MARGIN_DEG,
    DIGIT_KEYPOINTS,
    FINGERS,
    PLANARITY_MARGIN,
    geometric_loss,
    palm_normal_from_keypoints,
)
from backend.hand_model.constants import KEYPOINT_PARENTS
from backend.network.camera import (
    fit_weak_perspective,
    normalized_to_pixels,
    pixels_to_normalized,
    weak_project,
)
from backend.network.hamr import HamrOutput
from backend.network.regressor import RegressorParams
from backend.network.rotation import axis_angle_to_matrix
from backend.render import soft_silhouette

SILHOUETTE_SIZE = 64  # side of the silhouettes compared, pixels
# Soft rasteriser sharpness in its normalised units: edges blur over ~sqrt(sigma) * size / 2, here
# ~0.3 px at 64 px (SoftRas's own setting for 64x64 images); wider blurs swell the silhouette of
# 4-pixel-wide fingers.
SILHOUETTE_SIGMA = 1e-4


@dataclass(frozen=True)
class LossWeights:
    """Weight of each term in `hamr_loss` (0 skips the term). Starting points chosen so every term
    is O(1) for an untrained network; the term names are these field names."""

    keypoints3d: float = 100.0  # L1, metres (1 cm mean error -> 1)
    keypoints2d: float = 10.0  # L1, normalised crop units (0.1 = 5 % of the crop -> 1)
    geometric: float = 1.0  # planarity + bending hinges, dimensionless (sines)
    bones: float = 100.0  # L1 on the 20 bone lengths, metres
    camera: float = 1.0  # squared error of (log s, s tx, s ty), dimensionless
    heatmaps: float = 1000.0  # per-pixel MSE of heat-maps peaking at 1 (as in HAMR's code)
    heatmap_keypoints: float = 10.0  # L1 of the heat-maps' soft-argmax, normalised crop units
    silhouette: float = 10.0  # per-pixel L1 between silhouettes in [0, 1]
    articulation: float = 100.0  # L1 of wrist-frame keypoints, metres (1 cm -> 1), has_mano only
    params: float = 1.0  # MSE of rotation-matrix entries + MSE of betas, against MANO labels
    pose_prior: float = 0.001  # mean |R_j - I|_F^2 of the 15 finger joints
    betas_prior: float = 0.001  # mean beta^2
    intermediate: float = 0.0  # weight of params + camera on the regressor's earlier iterations


def _masked_mean(values: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of `values` where `mask` (broadcast to values' shape) is true; 0 if nothing is.
    Masked-out entries never reach the sum, so NaNs there are harmless. `weight` (B,), where
    given, scales each sample's entries (values' first axis) before the sum; the mean still
    divides by the number of entries in the mask, so a sample of weight 0.5 counts half and a
    batch of down-weighted samples gives a smaller loss (not a renormalised one)."""
    mask = mask.expand_as(values)
    if weight is not None:
        values = values * weight.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def keypoints3d_loss(
    pred: Tensor,
    target: Tensor,
    has_3d: Tensor,
    valid: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """L1 between root-relative 3D keypoints: mean over the coordinates of valid keypoints of
    samples with has_3d of |(pred_k - pred_root) - (target_k - target_root)|. The root is the
    wrist, or the middle MCP (keypoint 9) where the label's wrist is not valid (STB labels the
    palm centre instead). pred, target (B, 21, 3) metres; has_3d (B,); valid (B, 21) or None."""
    if valid is None:
        valid = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
    valid = valid.bool() & has_3d.bool()[:, None]  # (B, 21)
    target = torch.where(valid[..., None], target, torch.zeros_like(target))
    root = torch.where(valid[:, :1], 0, 9)  # (B, 1) root keypoint index per sample
    index = root[..., None].expand(-1, 1, 3)
    pred_rel = pred - pred.gather(1, index)  # (B, 21, 3)
    target_rel = target - target.gather(1, index)
    root_ok = valid.gather(1, root)  # the chosen root itself is valid
    return _masked_mean((pred_rel - target_rel).abs(), (valid & root_ok)[..., None], weight)


def articulation_loss(
    pred: Tensor,
    pred_global: Tensor,
    target: Tensor,
    target_pose: Tensor,
    has_mano: Tensor,
    weight: Tensor | None = None,
) -> Tensor:
    """L1 between 3D keypoints expressed in each hand's own wrist frame, metres: mean over the
    coordinates of samples with has_mano of |R_p^T (p_k - p_0) - R_t^T (t_k - t_0)|, where R_p is
    the predicted global orientation (detached: this term trains the fingers, not the orientation)
    and R_t the label's (its pose[:, 0] as a matrix). pred, target (B, 21, 3) in the camera frame;
    pred_global (B, 3, 3); target_pose (B, 16, 3) axis-angle; has_mano (B,).

    Why: the root-relative `keypoints3d_loss` compares hands in the camera frame, so while the
    global orientation is still wrong the cheapest way to lower it is a compact, curled hand
    whatever the image shows. Un-rotating both hands removes that coupling; the term is invariant
    to any rotation applied to a hand together with its orientation."""
    valid = has_mano.bool()  # (B,)
    target = torch.where(valid[:, None, None], target, torch.zeros_like(target))
    target_pose = torch.where(valid[:, None, None], target_pose, torch.zeros_like(target_pose))
    target_rot = axis_angle_to_matrix(target_pose[:, 0])  # (B, 3, 3)
    # row vectors: R^T x for each keypoint x is x @ R
    pred_local = (pred - pred[:, :1]) @ pred_global.detach()  # (B, 21, 3)
    target_local = (target - target[:, :1]) @ target_rot
    return _masked_mean((pred_local - target_local).abs(), valid[:, None, None], weight)


def keypoints2d_loss(
    pred_n: Tensor, target_n: Tensor, visibility: Tensor, weight: Tensor | None = None
) -> Tensor:
    """L1 on normalised crop coordinates, mean over the coordinates of visible keypoints.
    pred_n, target_n (B, 21, 2); visibility (B, 21), > 0 where the label is visible."""
    visible = (visibility > 0)[..., None]  # (B, 21, 1)
    target_n = torch.where(visible, target_n, torch.zeros_like(target_n))
    return _masked_mean((pred_n - target_n).abs(), visible, weight)


def bone_lengths(keypoints3d: Tensor) -> Tensor:
    """(B, 21, 3) -> (B, 20) lengths of the 20 bones of the 21-keypoint skeleton (child - parent,
    KEYPOINT_PARENTS order without the wrist)."""
    parents = list(KEYPOINT_PARENTS[1:])
    return (keypoints3d[:, 1:] - keypoints3d[:, parents]).norm(dim=-1)


def bone_length_loss(
    pred: Tensor,
    target: Tensor,
    has_3d: Tensor,
    valid: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """L1 between predicted and labelled bone lengths (metres), mean over the bones whose two
    keypoints are valid, of samples with has_3d. pred, target (B, 21, 3); has_3d (B,); valid
    (B, 21) or None (all valid)."""
    if valid is None:
        valid = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
    valid = valid.bool() & has_3d.bool()[:, None]  # (B, 21)
    parents = list(KEYPOINT_PARENTS[1:])
    bone_ok = valid[:, 1:] & valid[:, parents]  # (B, 20)
    target = torch.where(valid[..., None], target, torch.zeros_like(target))
    return _masked_mean((bone_lengths(pred) - bone_lengths(target)).abs(), bone_ok, weight)


def camera_loss(
    cam: Tensor,
    points3d: Tensor,
    points2d_n: Tensor,
    visibility: Tensor,
    valid: Tensor,
    weight: Tensor | None = None,
) -> Tensor:
    """Squared error between the predicted camera and the label's closed-form camera.

    cam (B, 3) predicted (s, tx, ty); points3d (B, 21, 3) the label's 3D keypoints expressed in the
    prediction's model frame (camera-rotated, rooted where the prediction's wrist is);
    points2d_n (B, 21, 2) the label's normalised 2D keypoints; visibility (B, 21); valid (B,).
    The target c* = fit_weak_perspective(points3d, points2d_n, visibility) (exact for noise-free
    weak-perspective labels). Both cameras are compared as (log s, s tx, s ty) (scale as a ratio,
    translation as the root's offset in crop units), so the three entries are O(1):
    loss = mean over valid samples of the sum of the three squared differences. Samples with fewer
    than 3 visible keypoints are skipped (the fit is degenerate)."""
    valid = valid.bool() & ((visibility > 0).sum(1) >= 3)  # (B,)
    keep = valid[:, None, None]
    points3d = torch.where(keep, points3d, torch.zeros_like(points3d))
    points2d_n = torch.where(keep, points2d_n, torch.zeros_like(points2d_n))
    target = fit_weak_perspective(points3d, points2d_n, visibility * valid[:, None]).detach()

    def normalised(c: Tensor) -> Tensor:  # (B, 3) -> (B, 3) (log s, s tx, s ty)
        s = c[:, :1].clamp(min=1e-3)
        return torch.cat([s.log(), s * c[:, 1:]], dim=1)

    error = (normalised(cam) - normalised(target)).square().sum(1)  # (B,)
    return _masked_mean(error, valid, weight)


def keypoint_heatmaps(
    keypoints2d_n: Tensor, size: int = 64, sigma: float = 2.0, visibility: Tensor | None = None
) -> Tensor:
    """Gaussian heat-map targets (B, K, size, size) for keypoints (B, K, 2) in normalised crop
    coordinates: exp(-|c - p|^2 / (2 sigma^2)), p = (kp_n + 1) / 2 * size the keypoint in heat-map
    pixels, c the pixel centres (j + 0.5, i + 0.5), sigma in heat-map pixels. Peaks are 1 at a
    keypoint on a pixel centre; maps of keypoints with visibility 0 are all zero."""
    p = normalized_to_pixels(keypoints2d_n, size)  # (B, K, 2) heat-map pixels
    centres = torch.arange(size, device=p.device, dtype=p.dtype) + 0.5  # (size,)
    gx = torch.exp(-(centres - p[..., :1]).square() / (2 * sigma**2))  # (B, K, size) along u
    gy = torch.exp(-(centres - p[..., 1:]).square() / (2 * sigma**2))  # (B, K, size) along v
    maps = gy[..., :, None] * gx[..., None, :]  # (B, K, size, size) rows v, columns u
    if visibility is not None:
        maps = maps * (visibility > 0)[..., None, None].to(maps.dtype)
    return maps


def heatmap_loss(
    heatmaps: list[Tensor], target: Tensor, visibility: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Per-pixel MSE of each stack's heat-maps (B, K, H, W) against `target` (B, K, H, W), over the
    maps of visible keypoints (visibility (B, K) > 0), averaged over the stacks (intermediate
    supervision, Newell et al. 2016)."""
    visible = (visibility > 0)[..., None, None]  # (B, K, 1, 1)
    per_stack = [_masked_mean((h.float() - target).square(), visible, weight) for h in heatmaps]
    return torch.stack(per_stack).mean()


HEATMAP_SOFTARGMAX_BETA = 20.0  # softmax sharpness on heat-map values (peaks near 1, background 0)


def heatmap_soft_argmax(heatmaps: Tensor, beta: float = HEATMAP_SOFTARGMAX_BETA) -> Tensor:
    """(B, K, H, W) heat-maps -> (B, K, 2) keypoints in normalised crop coordinates: the mean pixel
    centre under softmax(beta * heat-map) over each map (integral regression, Sun et al. 2018).
    With beta = 20, a peak of 1 outweighs the whole 64 x 64 background at 0 by e^20 / 4096, and a
    Gaussian target (sigma 2 px) comes back within 0.002 (0.06 heat-map pixels) of its centre: the
    sharpened Gaussian, sigma / sqrt(beta) wide, is sampled on pixel centres, so larger betas snap
    toward the nearest centre."""
    b, k, h, w = heatmaps.shape
    prob = torch.softmax(beta * heatmaps.float().reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
    u = pixels_to_normalized(torch.arange(w, device=prob.device, dtype=prob.dtype) + 0.5, w)
    v = pixels_to_normalized(torch.arange(h, device=prob.device, dtype=prob.dtype) + 0.5, h)
    return torch.stack([(prob.sum(-2) * u).sum(-1), (prob.sum(-1) * v).sum(-1)], dim=-1)


def heatmap_keypoints_loss(
    heatmaps: list[Tensor], keypoints2d_n: Tensor, visibility: Tensor, weight: Tensor | None = None
) -> Tensor:
    """L1 between each stack's heat-map soft-argmax (`heatmap_soft_argmax`) and the 2D keypoints
    (B, K, 2) in normalised crop coordinates, over visible keypoints, averaged over the stacks.
    Unlike the per-pixel MSE, whose all-zero start is a wide plateau, this gives every map a
    gradient toward its keypoint from the first step; the two agree at a Gaussian target."""
    visible = (visibility > 0)[..., None]  # (B, K, 1)
    per_stack = [
        _masked_mean((heatmap_soft_argmax(h) - keypoints2d_n).abs(), visible, weight)
        for h in heatmaps
    ]
    return torch.stack(per_stack).mean()


def mesh_silhouette(
    vertices: Tensor,
    faces: Tensor,
    cam: Tensor,
    size: int = SILHOUETTE_SIZE,
    sigma: float = SILHOUETTE_SIGMA,
) -> Tensor:
    """(B, size, size) soft silhouette in [0, 1] of meshes (B, V, 3) seen by their weak cameras
    (B, 3) in a crop rendered at `size` pixels (SoftRas, backend.render.soft_silhouette). The weak
    camera has no depth ordering to respect, and a silhouette needs none: vertices go in as 2D."""
    verts_pix = normalized_to_pixels(weak_project(vertices, cam), size)  # (B, V, 2)
    return soft_silhouette(verts_pix, faces, size, size, sigma=sigma)


def silhouette_loss(
    vertices: Tensor,
    faces: Tensor,
    cam: Tensor,
    mask: Tensor,
    has_mask: Tensor,
    size: int = SILHOUETTE_SIZE,
    sigma: float = SILHOUETTE_SIGMA,
) -> Tensor:
    """Per-pixel L1 between the predicted mesh's soft silhouette and the ground-truth mask, both at
    size x size, mean over samples with has_mask. vertices (B, V, 3), faces (F, 3), cam (B, 3),
    mask (B, S, S) in [0, 1] at crop resolution (area-averaged down to `size`), has_mask (B,).

    L1 (rather than BCE or IoU) is zero exactly when the silhouettes agree, soft edges included,
    and is bounded for any prediction. Only the samples with a mask are rendered."""
    index = has_mask.bool().nonzero().squeeze(1)  # (M,)
    if index.numel() == 0:
        return vertices.new_zeros(())
    target = F.adaptive_avg_pool2d(mask[index, None].float(), size)[:, 0]  # (M, size, size)
    silhouette = mesh_silhouette(vertices[index].float(), faces, cam[index].float(), size, sigma)
    return (silhouette - target).abs().mean()


def param_loss(
    rotmats: Tensor,
    betas: Tensor,
    target_pose: Tensor,
    target_betas: Tensor,
    has_mano: Tensor,
    weight: Tensor | None = None,
) -> Tensor:
    """MSE between predicted and labelled MANO parameters, over samples with has_mano: mean squared
    difference of the rotation-matrix entries (B, 16, 3, 3) against the label's axis-angle
    (B, 16, 3) turned into matrices, plus mean squared difference of betas (B, 10)."""
    valid = has_mano.bool()  # (B,)
    target_pose = torch.where(valid[:, None, None], target_pose, torch.zeros_like(target_pose))
    target_betas = torch.where(valid[:, None], target_betas, torch.zeros_like(target_betas))
    target_rot = axis_angle_to_matrix(target_pose)  # (B, 16, 3, 3)
    rot_error = (rotmats - target_rot).square().flatten(1).mean(1)  # (B,)
    betas_error = (betas - target_betas).square().mean(1)  # (B,)
    return _masked_mean(rot_error + betas_error, valid, weight)


def pose_prior(rotmats: Tensor) -> Tensor:
    """Mean over the batch and the 15 finger joints of |R_j - I|_F^2 (= 4 (1 - cos angle_j)): a
    weak pull towards the flat hand that keeps unlabelled joints from drifting. The global
    orientation (joint 0) is free. rotmats (B, 16, 3, 3)."""
    eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
    return (rotmats[:, 1:] - eye).square().sum((-2, -1)).mean()


def betas_prior(betas: Tensor) -> Tensor:
    """Mean of beta^2 (B, 10): the shape space is unit-variance, so this is its Gaussian prior."""
    return betas.square().mean()


def hamr_loss(
    output: HamrOutput,
    batch: dict[str, Tensor],
    weights: LossWeights,
    *,
    side: str = "right",
    silhouette_size: int = SILHOUETTE_SIZE,
    silhouette_sigma: float = SILHOUETTE_SIGMA,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of every term with a non-zero weight -> (total, {term: unweighted value}).

    The dict's values are detached scalars for logging; total = sum_k weights.k * terms[k]. The
    camera target is fitted to the label's 3D keypoints moved so that their wrist sits on the
    predicted wrist (the model frame the predicted camera refers to), see `camera_loss`. The
    "intermediate" term applies `param_loss` (where has_mano) and `camera_loss` to every regressor
    iteration before the last."""
    crop_size = batch["image"].shape[-1]
    kp2d_n = pixels_to_normalized(batch["keypoints2d"].float(), crop_size)  # (B, 21, 2)
    vis = batch["keypoints2d_vis"].float()  # (B, 21)
    # keypoints without a label may hold NaN: zero them before the heat-map targets are built
    # from them (a NaN target's gradient is NaN even where the mask drops it)
    kp2d_n = torch.where(vis[..., None] > 0, kp2d_n, torch.zeros_like(kp2d_n))
    has_3d, has_mano = batch["has_3d"].bool(), batch["has_mano"].bool()
    kp3d = batch["keypoints3d"].float()
    kp3d_valid = batch.get("keypoints3d_valid")  # (B, 21) or None: all valid where has_3d
    # per-sample label weights (B,) or None (1): 2D / heat-map / camera terms, 3D / MANO terms
    w2d, w3d = batch.get("weight_2d"), batch.get("weight_3d")
    # the label's keypoints in the prediction's frame: same rotation (camera axes), root moved
    kp3d_model = kp3d - kp3d[:, :1] + output.keypoints3d[:, :1].detach()

    def camera_term(cam: Tensor) -> Tensor:
        return camera_loss(cam, kp3d_model, kp2d_n, vis, has_3d, w2d)

    def params_term(rotmats: Tensor, betas: Tensor) -> Tensor:
        pose, betas_gt = batch["pose"].float(), batch["betas"].float()
        return param_loss(rotmats, betas, pose, betas_gt, has_mano, w3d)

    def intermediate_term(earlier: list[RegressorParams]) -> Tensor:
        zero = output.cam.new_zeros(())
        return sum((params_term(p.rotmats, p.betas) + camera_term(p.cam) for p in earlier), zero)

    compute = {
        "keypoints3d": lambda: keypoints3d_loss(output.keypoints3d, kp3d, has_3d, kp3d_valid, w3d),
        "keypoints2d": lambda: keypoints2d_loss(output.keypoints2d, kp2d_n, vis, w2d),
        "geometric": lambda: geometric_loss(output.keypoints3d, side),
        "bones": lambda: bone_length_loss(output.keypoints3d, kp3d, has_3d, kp3d_valid, w3d),
        "camera": lambda: camera_term(output.cam),
        "heatmaps": lambda: heatmap_loss(
            output.heatmaps,
            keypoint_heatmaps(kp2d_n, output.heatmaps[-1].shape[-1], visibility=vis),
            vis,
            w2d,
        ),
        "heatmap_keypoints": lambda: heatmap_keypoints_loss(output.heatmaps, kp2d_n, vis, w2d),
        "silhouette": lambda: silhouette_loss(
            output.vertices,
            output.faces,
            output.cam,
            batch["mask"],
            batch["has_mask"],
            silhouette_size,
            silhouette_sigma,
        ),
        "articulation": lambda: articulation_loss(
            output.keypoints3d, output.rotmats[:, 0], kp3d, batch["pose"].float(), has_mano, w3d
        ),
        "params": lambda: params_term(output.rotmats, output.betas),
        "pose_prior": lambda: pose_prior(output.rotmats),
        "betas_prior": lambda: betas_prior(output.betas),
        "intermediate": lambda: intermediate_term(output.params_per_iteration[:-1]),
    }
    terms = {f.name: compute[f.name]() for f in fields(weights) if getattr(weights, f.name)}
    total = sum(
        (getattr(weights, name) * value for name, value in terms.items()),
        start=output.cam.new_zeros(()),
    )
    return total, {name: value.detach() for name, value in terms.items()}
