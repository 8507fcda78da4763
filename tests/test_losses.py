"""Training losses: each term is zero (or minimal) at the ground truth, positive away from it, and a
small gradient step lowers it; the closed-form weak camera fit is exact.

References: synthetic labels generated from known cameras and poses, the hand model's own natural
poses (flat, relaxed, fist, ...), and the hard rasteriser for silhouette targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from backend.hand_model.model import HandModel
from backend.hand_model.poses import DIGIT_JOINTS, NAMED_POSES, digit_axes, named_pose
from backend.network import HamrConfig, HamrNet, fit_weak_perspective, weak_project
from backend.network.camera import normalized_to_pixels
from backend.network.rotation import axis_angle_to_matrix
from backend.render import rasterize
from training.losses import (
    LossWeights,
    articulation_loss,
    betas_prior,
    bone_length_loss,
    camera_loss,
    geometric_loss,
    hamr_loss,
    heatmap_keypoints_loss,
    heatmap_loss,
    heatmap_soft_argmax,
    keypoint_heatmaps,
    keypoints2d_loss,
    keypoints3d_loss,
    param_loss,
    pose_prior,
    silhouette_loss,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_step_lowers(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step: float
) -> None:
    """A gradient-descent step of length `step` (in x's units) lowers loss_fn(x)."""
    x = x.detach().clone().requires_grad_(True)
    before = loss_fn(x)
    (grad,) = torch.autograd.grad(before, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    after = loss_fn((x - step * grad / grad.norm()).detach())
    assert after < before


@pytest.fixture(scope="module")
def hand() -> HandModel:
    return HandModel("right")


def pose_keypoints(hand: HandModel, pose: torch.Tensor) -> torch.Tensor:
    """(B, 16, 3) axis-angle -> (B, 21, 3) keypoints of the right open hand model."""
    return hand(pose).keypoints


# ---------------------------------------------------------------- weak camera fit


def test_fit_weak_perspective_recovers_a_known_camera():
    points = torch.randn(4, 21, 3, generator=gen(0)) * 0.05
    cam = torch.tensor([[8.0, 0.01, -0.05], [5.0, -0.1, 0.1], [12.0, 0.0, 0.0], [0.5, 1.0, 2.0]])
    uv = weak_project(points, cam)
    torch.testing.assert_close(fit_weak_perspective(points, uv), cam, atol=1e-5, rtol=1e-5)
    # weights: invariant to their scale; zero weight ignores an outlier entirely
    w = torch.rand(4, 21, generator=gen(1)) + 0.1
    fit = fit_weak_perspective(points, uv, w)
    torch.testing.assert_close(fit_weak_perspective(points, uv, 1000 * w), fit)
    torch.testing.assert_close(fit, cam, atol=1e-5, rtol=1e-5)
    uv_outlier = uv.clone()
    uv_outlier[:, 3] += 5.0
    w[:, 3] = 0
    torch.testing.assert_close(fit_weak_perspective(points, uv_outlier, w), cam, atol=1e-5, rtol=0)


def test_fit_weak_perspective_is_least_squares_and_differentiable():
    points = torch.randn(2, 21, 3, generator=gen(2), dtype=torch.float64) * 0.05
    uv = torch.randn(2, 21, 2, generator=gen(3), dtype=torch.float64) * 0.3
    fit = fit_weak_perspective(points, uv)

    def residual(cam: torch.Tensor) -> torch.Tensor:
        return (weak_project(points, cam) - uv).square().sum()

    cam = fit.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(residual(cam), cam)
    assert grad.abs().max() < 1e-9  # stationary point of the objective
    assert torch.autograd.gradcheck(
        lambda p, q: fit_weak_perspective(p, q), (points.requires_grad_(), uv.requires_grad_())
    )


# ---------------------------------------------------------------- keypoint terms


def test_keypoints3d_loss(hand):
    target = pose_keypoints(hand, torch.randn(2, 16, 3, generator=gen(0)) * 0.3)
    has_3d = torch.tensor([1.0, 1.0])
    # root-relative: a translated prediction is already perfect
    assert keypoints3d_loss(target + torch.tensor([0.1, -0.2, 0.5]), target, has_3d) < 1e-7
    noisy = target + torch.randn(2, 21, 3, generator=gen(1)) * 0.01
    assert keypoints3d_loss(noisy, target, has_3d) > 0.003
    assert_step_lowers(lambda p: keypoints3d_loss(p, target, has_3d), noisy, step=1e-3)
    # a sample without 3D labels counts for nothing, even with NaN labels
    nan_target = target.clone()
    nan_target[1] = math.nan
    mixed = keypoints3d_loss(noisy, nan_target, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(mixed, keypoints3d_loss(noisy[:1], target[:1], has_3d[:1]))


def test_articulation_loss_separates_fingers_from_orientation(hand):
    pose = torch.randn(3, 16, 3, generator=gen(20)) * 0.3
    target = pose_keypoints(hand, pose) + torch.tensor([0.05, -0.1, 0.5])
    rot = axis_angle_to_matrix(pose[:, 0])
    has = torch.ones(3)
    assert articulation_loss(target, rot, target, pose, has) < 1e-7
    # the same fingers under another global orientation (with that orientation predicted): zero,
    # while the root-relative camera-frame term sees a large error
    turned = pose.clone()
    turned[:, 0] = torch.randn(3, 3, generator=gen(21))
    pred = pose_keypoints(hand, turned)
    pred_rot = axis_angle_to_matrix(turned[:, 0])
    assert articulation_loss(pred, pred_rot, target, pose, has) < 1e-6
    assert keypoints3d_loss(pred, target, has) > 0.01
    # other fingers under the right orientation: positive, and it moves the finger joints
    bent = pose.clone()
    bent[:, 1:] += 0.3
    bent_kp = pose_keypoints(hand, bent)
    assert articulation_loss(bent_kp, rot, target, pose, has) > 0.003

    def of_fingers(fingers: torch.Tensor) -> torch.Tensor:
        full = torch.cat([pose[:, :1], fingers], dim=1)
        return articulation_loss(pose_keypoints(hand, full), rot, target, pose, has)

    assert_step_lowers(of_fingers, bent[:, 1:], step=0.05)
    # the predicted orientation gets no gradient from this term
    rot_var = rot.clone().requires_grad_(True)
    assert not articulation_loss(bent_kp, rot_var, target, pose, has).requires_grad
    # samples without MANO labels count for nothing, even with NaN labels
    nan_pose, nan_target = pose.clone(), target.clone()
    nan_pose[2], nan_target[2] = math.nan, math.nan
    mixed = articulation_loss(bent_kp, rot, nan_target, nan_pose, torch.tensor([1.0, 1.0, 0.0]))
    first_two = articulation_loss(bent_kp[:2], rot[:2], target[:2], pose[:2], has[:2])
    torch.testing.assert_close(mixed, first_two)


def test_keypoints2d_loss_respects_visibility():
    target = torch.rand(2, 21, 2, generator=gen(0)) * 2 - 1
    vis = torch.ones(2, 21)
    assert keypoints2d_loss(target, target, vis) == 0
    pred = target.clone()
    pred[:, 3] += 0.5
    assert keypoints2d_loss(pred, target, vis) == pytest.approx(0.5 / 21)
    vis[:, 3] = 0
    assert keypoints2d_loss(pred, target, vis) == 0
    assert_step_lowers(lambda p: keypoints2d_loss(p, target, torch.ones(2, 21)), pred, step=1e-2)


def test_bone_length_loss_is_rigid_invariant(hand):
    target = pose_keypoints(hand, torch.randn(1, 16, 3, generator=gen(4)) * 0.3)
    rot = axis_angle_to_matrix(torch.tensor([0.3, -1.0, 2.0]))
    moved = target @ rot.T + torch.tensor([1.0, 2.0, 3.0])
    has_3d = torch.ones(1)
    assert bone_length_loss(moved, target, has_3d) < 1e-6
    assert bone_length_loss(1.1 * moved, target, has_3d) > 1e-3
    assert_step_lowers(lambda p: bone_length_loss(p, target, has_3d), 1.1 * moved, step=1e-3)


# ---------------------------------------------------------------- geometric constraints


@pytest.mark.parametrize("side", ["right", "left"])
def test_geometric_loss_is_zero_for_natural_poses(side):
    model = HandModel(side)
    rest = model.rest_joints()[0]
    poses = [torch.zeros(16, 3)] + [named_pose(n, rest, side) for n in NAMED_POSES if n != "flat"]
    global_orient = torch.tensor([1.0, -0.5, 2.0])  # any orientation of the whole hand
    poses = torch.stack(poses)
    poses[:, 0] = global_orient
    keypoints = model(poses).keypoints
    for i in range(len(poses)):
        assert geometric_loss(keypoints[i : i + 1], side) == 0


def bent_pose(hand: HandModel, axis_kind: str, degrees: float) -> torch.Tensor:
    """Relaxed pose with the index finger's PIP turned by `degrees` about its flexion axis
    (negative: hyper-extension) or about its spread axis (sideways, out of the finger's plane)."""
    rest = hand.rest_joints()[0]
    pose = named_pose("relaxed", rest, "right")
    flex, spread = digit_axes(rest, "right")["index"]
    axis = flex if axis_kind == "flex" else spread
    _, pip, dip = DIGIT_JOINTS["index"]
    pose[pip] = axis * math.radians(degrees)
    pose[dip] = flex * math.radians(40.0)
    return pose[None]


@pytest.mark.parametrize(("axis_kind", "degrees"), [("flex", -45.0), ("spread", 35.0)])
def test_geometric_loss_penalises_hyperextension_and_twist(hand, axis_kind, degrees):
    assert geometric_loss(pose_keypoints(hand, bent_pose(hand, "flex", 20.0))) == 0
    bad = pose_keypoints(hand, bent_pose(hand, axis_kind, degrees))
    assert geometric_loss(bad) > 0.05
    assert_step_lowers(geometric_loss, bad, step=1e-3)


# ---------------------------------------------------------------- camera


def test_camera_loss(hand):
    keypoints = pose_keypoints(hand, torch.randn(2, 16, 3, generator=gen(5)) * 0.3)
    cam = torch.tensor([[8.0, 0.02, 0.05], [6.0, -0.03, 0.08]])
    uv = weak_project(keypoints, cam)
    vis, valid = torch.ones(2, 21), torch.ones(2)
    assert camera_loss(cam, keypoints, uv, vis, valid) < 1e-10
    off = cam * torch.tensor([1.3, 1.5, 0.5])
    assert camera_loss(off, keypoints, uv, vis, valid) > 0.05
    assert_step_lowers(lambda c: camera_loss(c, keypoints, uv, vis, valid), off, step=1e-2)
    # invalid samples (no 3D label, or too few visible keypoints) are skipped
    assert camera_loss(off, keypoints, uv, vis, torch.zeros(2)) == 0
    assert camera_loss(off, keypoints, uv, torch.zeros(2, 21), valid) == 0


# ---------------------------------------------------------------- heat-maps


def test_keypoint_heatmaps_peak_at_the_keypoint():
    # keypoint on the centre of heat-map pixel (row 10, col 20), and one invisible
    kp = torch.tensor([[[(20.5 / 64) * 2 - 1, (10.5 / 64) * 2 - 1], [0.0, 0.0]]])
    maps = keypoint_heatmaps(kp, size=64, sigma=2.0, visibility=torch.tensor([[1.0, 0.0]]))
    assert maps.shape == (1, 2, 64, 64)
    assert maps[0, 0, 10, 20] == pytest.approx(1.0)
    assert maps[0, 0].argmax() == 10 * 64 + 20
    assert maps[0, 0, 10, 22] == pytest.approx(math.exp(-4 / 8))  # 2 px away, sigma 2
    assert maps[0, 1].abs().max() == 0


def test_heatmap_loss():
    kp = torch.rand(2, 21, 2, generator=gen(6)) * 1.6 - 0.8
    vis = torch.ones(2, 21)
    target = keypoint_heatmaps(kp, visibility=vis)
    assert heatmap_loss([target, target], target, vis) == 0
    shifted = keypoint_heatmaps(kp + 0.05, visibility=vis)
    assert heatmap_loss([shifted], target, vis) > 1e-3
    assert_step_lowers(lambda h: heatmap_loss([h], target, vis), shifted, step=1e-1)
    vis[:, 5] = 0  # a wrong map for an invisible keypoint costs nothing
    wrong = target.clone()
    wrong[:, 5] = 1.0
    assert heatmap_loss([wrong], target, vis) == 0


def test_heatmap_soft_argmax_finds_the_peak_of_a_gaussian_and_the_centre_of_a_flat_map():
    kp = torch.rand(2, 21, 2, generator=gen(7)) * 1.6 - 0.8  # inside the crop, off the border
    found = heatmap_soft_argmax(keypoint_heatmaps(kp))
    assert (found - kp).abs().max() < 2e-3  # 2e-3 of the half-crop: 0.06 heat-map pixels
    # a single hot pixel (row 10, column 40 of 64): its centre, (40.5, 10.5) px -> normalised
    one = torch.zeros(1, 1, 64, 64)
    one[0, 0, 10, 40] = 1.0
    expect = torch.tensor([40.5 / 32 - 1, 10.5 / 32 - 1])
    assert torch.allclose(heatmap_soft_argmax(one, beta=60.0)[0, 0], expect, atol=1e-4)
    # an untrained (flat) map: the crop centre
    assert heatmap_soft_argmax(torch.zeros(1, 3, 64, 64)).abs().max() < 1e-6


def test_heatmap_keypoints_loss():
    kp = torch.rand(2, 21, 2, generator=gen(8)) * 1.6 - 0.8
    vis = torch.ones(2, 21)
    target = keypoint_heatmaps(kp, visibility=vis)
    assert heatmap_keypoints_loss([target, target], kp, vis) < 1e-3
    # a flat map (the all-zero start of the MSE term) is far off and still has a gradient
    flat = torch.zeros_like(target)
    assert heatmap_keypoints_loss([flat], kp, vis) > 0.2
    assert_step_lowers(lambda h: heatmap_keypoints_loss([h], kp, vis), flat, step=1.0)
    shifted = keypoint_heatmaps(kp + 0.05, visibility=vis)
    assert heatmap_keypoints_loss([shifted], kp, vis) == pytest.approx(0.05, abs=2e-3)
    assert_step_lowers(lambda h: heatmap_keypoints_loss([h], kp, vis), shifted, step=1e-1)
    vis[:, 5] = 0  # the map of an invisible keypoint costs nothing
    wrong = target.clone()
    wrong[:, 5] = 0.0
    wrong[:, 5, 0, 0] = 1.0
    assert heatmap_keypoints_loss([wrong], kp, vis) < 1e-3


# ---------------------------------------------------------------- silhouette


def test_silhouette_loss_minimal_at_the_true_camera(hand):
    pose = torch.zeros(1, 16, 3)
    pose[0, 0] = torch.tensor([0.0, 0.0, -math.pi / 2])  # fingers up
    verts = hand(pose).vertices  # (1, V, 3)
    cam = torch.tensor([[8.0, -0.09, 0.09]])
    # ground truth: the hard rasteriser's mask of the same weak projection at crop resolution
    pix = normalized_to_pixels(weak_project(verts, cam), 256)
    mask = rasterize(torch.cat([pix, verts[..., 2:] + 1.0], -1), hand.faces_tensor, 256, 256).mask
    assert 0.1 < mask.float().mean() < 0.5  # the hand fills a good part of the crop
    has_mask = torch.ones(1)

    def loss(c: torch.Tensor) -> torch.Tensor:
        return silhouette_loss(verts, hand.faces_tensor, c, mask.float(), has_mask)

    at_truth = loss(cam)
    off = cam + torch.tensor([[0.0, 0.02, -0.015]])
    assert at_truth < 0.02  # only edge pixels differ (soft edges, area-averaged target)
    assert loss(off) > 3 * at_truth
    assert_step_lowers(loss, off, step=1e-3)
    assert silhouette_loss(verts, hand.faces_tensor, off, mask.float(), torch.zeros(1)) == 0


# ---------------------------------------------------------------- parameters and priors


def test_param_loss_and_priors():
    pose = torch.randn(2, 16, 3, generator=gen(7)) * 0.4
    betas = torch.randn(2, 10, generator=gen(8))
    rot = axis_angle_to_matrix(pose)
    has = torch.ones(2)
    assert param_loss(rot, betas, pose, betas, has) < 1e-12
    off_rot = axis_angle_to_matrix(pose + 0.2)
    assert param_loss(off_rot, betas + 0.5, pose, betas, has) > 0.1
    assert param_loss(off_rot, betas + 0.5, pose, betas, torch.zeros(2)) == 0
    assert_step_lowers(lambda b: param_loss(rot, b, pose, betas, has), betas + 0.5, step=1e-2)

    eye = torch.eye(3).expand(2, 16, 3, 3).clone()
    eye[:, 0] = rot[:, 0]  # the global orientation is not regularised
    assert pose_prior(eye) == 0 and pose_prior(rot) > 0
    assert betas_prior(torch.zeros(2, 10)) == 0 and betas_prior(betas) > 0


# ---------------------------------------------------------------- the sum


def test_hamr_loss_combines_the_weighted_terms():
    torch.manual_seed(0)
    net = HamrNet(HamrConfig.light()).eval()
    b = 2
    with torch.no_grad():
        out = net(torch.rand(b, 3, 256, 256, generator=gen(9)))
    # labels from the prediction itself: every supervised term is (near) zero
    keypoints3d = out.keypoints3d + torch.tensor([0.0, 0.0, 0.6])
    batch = {
        "image": torch.zeros(b, 3, 256, 256),
        "mask": torch.zeros(b, 256, 256),
        "keypoints2d": normalized_to_pixels(out.keypoints2d, 256),
        "keypoints2d_vis": torch.ones(b, 21),
        "keypoints3d": keypoints3d,
        "has_3d": torch.ones(b),
        "has_mask": torch.zeros(b),
        "has_mano": torch.ones(b),
        "pose": out.pose,
        "betas": out.betas,
    }
    weights = LossWeights(heatmaps=0.0, intermediate=0.5)
    total, terms = hamr_loss(out, batch, weights)
    assert "heatmaps" not in terms
    names = (
        "keypoints3d",
        "keypoints2d",
        "bones",
        "camera",
        "articulation",
        "params",
        "silhouette",
    )
    for name in names:
        assert terms[name] < 1e-6, name
    expected = sum(getattr(weights, k) * v for k, v in terms.items())
    torch.testing.assert_close(total, expected)
    assert terms["intermediate"] > 0  # earlier iterations differ from the final one


def test_3d_terms_respect_per_keypoint_validity_and_palm_rooted_labels():
    """STB-like labels: keypoint 0 is not a wrist (invalid); the loss roots at the middle MCP and
    ignores keypoint 0 entirely, so a wild keypoint-0 label changes nothing."""
    from training.losses import bone_length_loss, keypoints3d_loss

    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 21, 3, generator=g) * 0.05
    pred = target + 0.01 * torch.randn(2, 21, 3, generator=g)
    valid = torch.ones(2, 21, dtype=torch.bool)
    valid[:, 0] = False
    has = torch.ones(2)
    base = keypoints3d_loss(pred, target, has, valid)
    wild = target.clone()
    wild[:, 0] += 1.0
    assert torch.allclose(keypoints3d_loss(pred, wild, has, valid), base)
    assert torch.allclose(
        bone_length_loss(pred, wild, has, valid), bone_length_loss(pred, target, has, valid)
    )
    # a global shift of the prediction does not matter (root-relative, middle-MCP root)
    assert torch.allclose(keypoints3d_loss(pred + 0.3, target, has, valid), base, atol=1e-6)
    # all valid: the wrist root as before, and the exact value is the hand-computed L1
    rel = lambda x: x - x[:, :1]  # noqa: E731
    expected = (rel(pred) - rel(target)).abs().mean()
    assert torch.allclose(keypoints3d_loss(pred, target, has), expected)
