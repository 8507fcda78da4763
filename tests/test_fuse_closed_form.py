"""The closed-form start and the Levenberg-Marquardt refinement of `backend.fuse`.

References independent of the code under test: the hand model's own forward pass (full mesh,
smplx's LBS) for keypoints, `backend.hand_model.poses` for the named poses and the digit axes,
`torch.func.jacfwd` of the torch keypoint layer for the numpy analytic Jacobian, the torch
rotation maps of `backend.network.rotation` and an SVD Kabsch fit for the numpy rotation helpers,
and an objective recomputed here from `HandModel.forward`. Seeded and small (well under 20 s on
one thread).

Accuracy reached (float32, both sides, random shapes beta in [-2, 2], random global rotations
and translations): the closed form puts the model's keypoints on the input within 0.4 mm mean and
2 mm max with the default shape ridge (its shrinkage of the weakly identifiable shape directions is
the error); with the true shape given (or a 1e-9 ridge) within ~0.01 mm mean and 0.2 mm max.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import jacfwd, vmap

from backend.fuse.closed_form import (
    LEVELS,
    digit_frames,
    keypoint_arrays,
    keypoint_layer,
    keypoints_to_mano,
    layer_keypoints,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    so3_exp,
    weighted_quaternion,
    weighted_rotation,
)
from backend.fuse.gauss_newton import keypoints_and_jacobian, objective, refine
from backend.hand_model.constants import MANO_PARENTS
from backend.hand_model.model import HandModel
from backend.hand_model.poses import DIGIT_JOINTS, NAMED_POSES, digit_axes, named_pose
from backend.network.rotation import axis_angle_to_matrix, matrix_to_axis_angle

torch.set_num_threads(1)

SIDES = ("right", "left")
K = torch.tensor([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
# closed form, default ridge: model keypoints vs input keypoints, metres
MEAN_TOL, MAX_TOL = 1e-3, 3e-3


@pytest.fixture(scope="module")
def models() -> dict[str, HandModel]:
    return {side: HandModel(side) for side in SIDES}


def random_rotations(count: int, gen: torch.Generator) -> torch.Tensor:
    """(count, 3) axis-angle of random rotations: uniform axis, angle uniform in [0, pi)."""
    axis = torch.nn.functional.normalize(torch.randn(count, 3, generator=gen), dim=-1)
    return axis * torch.rand(count, 1, generator=gen) * math.pi


def random_hands(model: HandModel, count: int, seed: int, spread: float = 0.3):
    """Random moderate poses (each finger joint's axis-angle ~ N(0, spread^2) per component),
    shapes uniform in [-2, 2], any global rotation, translations around 0.5 m in front."""
    gen = torch.Generator().manual_seed(seed)
    pose = torch.randn(count, 16, 3, generator=gen) * spread
    pose[:, 0] = random_rotations(count, gen)
    betas = torch.rand(count, 10, generator=gen) * 4 - 2
    transl = torch.randn(count, 3, generator=gen) * 0.05 + torch.tensor([0.0, 0.0, 0.5])
    return pose, betas, transl


def keypoint_errors(model: HandModel, result, keypoints: torch.Tensor) -> torch.Tensor:
    """(B, 21) distances between the model's keypoints at result and the input keypoints."""
    out = model(result.pose, result.betas, result.transl)
    return (out.keypoints - keypoints).norm(dim=-1)


def project(points: torch.Tensor) -> torch.Tensor:
    p = points @ K.T
    return p[..., :2] / p[..., 2:]


def test_levels_follow_the_mano_tree():
    for depth, level in enumerate(LEVELS):
        for digit, joint in enumerate(level):
            assert MANO_PARENTS[joint] == (0 if depth == 0 else LEVELS[depth - 1][digit])


@pytest.mark.parametrize("side", SIDES)
def test_keypoint_layer_matches_the_hand_model(models, side):
    model = models[side]
    pose, betas, transl = random_hands(model, 6, seed=1, spread=0.5)
    layer = keypoint_layer(model)
    got = layer_keypoints(layer, axis_angle_to_matrix(pose), betas, transl)
    torch.testing.assert_close(got, model(pose, betas, transl).keypoints, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_digit_frames_are_the_poses_digit_axes(models, side):
    model = models[side]
    betas = torch.rand(3, 10, generator=torch.Generator().manual_seed(2)) * 4 - 2
    rest = model.rest_joints(betas)
    flex, spread = (torch.from_numpy(a).float() for a in digit_frames(rest.double().numpy(), side))
    for b in range(3):
        axes = digit_axes(rest[b], side)
        for d, joint in enumerate(LEVELS[0]):
            digit = next(name for name, joints in DIGIT_JOINTS.items() if joints[0] == joint)
            torch.testing.assert_close(flex[b, d], axes[digit][0], atol=1e-6, rtol=0)
            torch.testing.assert_close(spread[b, d], axes[digit][1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_closed_form_recovers_named_poses(models, side):
    """Every named pose, a random shape each, random global rotation and translation: the
    keypoints come back, and with the shape given the pose itself comes back (the named poses
    have no twist, which is what the closed form assumes)."""
    model = models[side]
    gen = torch.Generator().manual_seed(3)
    names = list(NAMED_POSES)
    betas = torch.rand(len(names), 10, generator=gen) * 4 - 2
    rest = model.rest_joints(betas)
    pose = torch.stack([named_pose(n, rest[i], side) for i, n in enumerate(names)])
    pose[:, 0] = random_rotations(len(names), gen)
    transl = torch.randn(len(names), 3, generator=gen) * 0.1
    keypoints = model(pose, betas, transl).keypoints

    result = keypoints_to_mano(model, keypoints, side)
    err = keypoint_errors(model, result, keypoints)
    assert err.mean() < MEAN_TOL and err.max() < MAX_TOL, (err.mean(), err.max())
    assert (result.betas[:, 0] - betas[:, 0]).abs().max() < 0.1  # the size

    exact = keypoints_to_mano(model, keypoints, side, betas=betas)
    err = keypoint_errors(model, exact, keypoints)
    assert err.mean() < 2e-5 and err.max() < 2e-4, (err.mean(), err.max())
    # rotations, not axis-angle (the root's may wrap at pi)
    rot_err = (axis_angle_to_matrix(exact.pose) - axis_angle_to_matrix(pose)).abs().amax()
    assert rot_err < 2e-3, rot_err


@pytest.mark.parametrize("side", SIDES)
def test_closed_form_recovers_random_poses_and_shapes(models, side):
    model = models[side]
    pose, betas, transl = random_hands(model, 48, seed=4)
    keypoints = model(pose, betas, transl).keypoints
    result = keypoints_to_mano(model, keypoints, side)
    assert torch.isfinite(result.pose).all()
    err = keypoint_errors(model, result, keypoints)
    assert err.mean() < MEAN_TOL and err.max() < MAX_TOL, (err.mean(), err.max())
    assert (result.betas[:, 0] - betas[:, 0]).abs().max() < 0.1

    # with a negligible ridge every shape direction is identifiable from exact keypoints
    loose = keypoints_to_mano(model, keypoints, side, beta_ridge=1e-9)
    assert (loose.betas - betas).abs().max() < 0.3, (loose.betas - betas).abs().amax(0)
    assert (loose.betas - betas).abs().mean() < 0.05
    err = keypoint_errors(model, loose, keypoints)
    assert err.mean() < 5e-5 and err.max() < 5e-4, (err.mean(), err.max())


def test_closed_form_checks_the_side(models):
    with pytest.raises(ValueError, match="left"):
        keypoints_to_mano(models["right"], torch.zeros(1, 21, 3), "left")


def test_closed_form_ignores_missing_keypoints(models):
    model = models["right"]
    pose, betas, transl = random_hands(model, 6, seed=5)
    keypoints = model(pose, betas, transl).keypoints
    broken = keypoints.clone()
    broken[0, 8] = float("nan")  # an index tip
    broken[1, [5, 6, 7, 8]] = float("nan")  # a whole index finger
    broken[2, [0, 1, 5, 9, 13, 17]] = float("nan")  # every palm point
    broken[3] = float("nan")  # everything
    broken[4, 10, 1] = float("inf")
    result = keypoints_to_mano(model, broken, "right")
    for value in (result.pose, result.betas, result.transl, result.rotmats):
        assert torch.isfinite(value).all()
    # the keypoints that are there still match (hands 0, 1 and 4: the palm is intact), a little
    # less closely: fewer lengths fix the shape
    err = keypoint_errors(model, result, keypoints)
    present = torch.isfinite(broken).all(-1)
    for b in (0, 1, 4):
        assert err[b][present[b]].max() < 5e-3, err[b]
    # a mask does what NaN does
    mask = torch.ones(6, 21, dtype=torch.bool)
    mask[0, 8] = False
    masked = keypoints_to_mano(model, keypoints, "right", mask=mask)
    torch.testing.assert_close(masked.pose[0], result.pose[0])


@pytest.mark.parametrize("side", SIDES)
def test_analytic_jacobian_matches_autodiff(models, side):
    """The refinement's numpy keypoints and analytic Jacobian against the torch keypoint layer
    (`layer_keypoints`, itself checked against the hand model's full forward pass above) and
    its forward-mode autodiff, in float64."""
    layer = keypoint_layer(models[side], torch.float64)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 61, generator=gen, dtype=torch.float64) * 0.5
    x[:, 48:58] = torch.rand(3, 10, generator=gen, dtype=torch.float64) * 4 - 2
    x[0, :48] = 0.0  # the identity, where the rotation maps use their series
    x[1, 3:6] = 1e-4  # a joint just inside the series' range

    def reference(xi: torch.Tensor) -> torch.Tensor:
        rotmats = axis_angle_to_matrix(xi[:48].reshape(16, 3))
        return layer_keypoints(layer, rotmats[None], xi[None, 48:58], xi[None, 58:])[0]

    keypoints, jac = keypoints_and_jacobian(keypoint_arrays(models[side]), x.numpy())
    torch.testing.assert_close(torch.from_numpy(keypoints), vmap(reference)(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        torch.from_numpy(jac), vmap(jacfwd(reference))(x), atol=1e-10, rtol=0
    )


def reference_objective(model, pose, betas, transl, uv, xyz, prior, prior_weight):
    """E of `refine` with its defaults (uv_sigma 4 px, Geman-McClure c = 3, xyz_sigma 5 mm,
    scale alignment, betas_weight 0.01), from the hand model's full forward pass."""
    keypoints = model(pose, betas, transl).keypoints
    x2 = ((project(keypoints) - uv) / 4.0).square().sum(-1)
    energy = (x2 / (1 + x2 / 9.0)).sum(-1)
    model_c = keypoints - keypoints.mean(1, keepdim=True)
    target_c = xyz - xyz.mean(1, keepdim=True)
    scale = (model_c * target_c).sum((1, 2)) / model_c.square().sum((1, 2))
    energy = energy + ((scale[:, None, None] * model_c - target_c) / 0.005).square().sum((1, 2))
    energy = energy + prior_weight * (pose - prior).square().sum((1, 2))
    return energy + 0.01 * betas.square().sum(-1)


@pytest.mark.parametrize("side", SIDES)
def test_refinement_never_increases_its_objective(models, side):
    model = models[side]
    pose, betas, transl = random_hands(model, 8, seed=7)
    gen = torch.Generator().manual_seed(8)
    keypoints = model(pose, betas, transl).keypoints
    uv = project(keypoints) + torch.randn(8, 21, 2, generator=gen) * 3
    uv[:, 4] += 60.0  # an outlier landmark on every hand
    xyz = (keypoints - keypoints.mean(1, keepdim=True)) * 1.1
    xyz = xyz + torch.randn(8, 21, 3, generator=gen) * 0.004
    prior = pose + torch.randn(8, 16, 3, generator=gen) * 0.3
    prior_weight = torch.rand(8, generator=gen)
    # poor starts: noisy pose, mean shape, translation off by centimetres
    pose0 = pose + torch.randn(8, 16, 3, generator=gen) * 0.2
    betas0 = torch.zeros(8, 10)
    transl0 = transl + torch.randn(8, 3, generator=gen) * 0.02
    terms = dict(K=K, uv=uv, xyz=xyz, prior_pose=prior, prior_weight=prior_weight)

    result = refine(model, pose0, betas0, transl0, steps=4, **terms)
    assert (result.objective_after <= result.objective_before).all()
    assert (result.objective_after < 0.5 * result.objective_before).all()
    # the reported objectives are the objective, recomputed independently
    before = reference_objective(model, pose0, betas0, transl0, uv, xyz, prior, prior_weight)
    after = reference_objective(
        model, result.pose, result.betas, result.transl, uv, xyz, prior, prior_weight
    )
    torch.testing.assert_close(result.objective_before, before, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(result.objective_after, after, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(
        objective(model, pose0, betas0, transl0, **terms), before, rtol=1e-4, atol=1e-3
    )

    # other kernels, alignments, fixed shape, and a wild start: still never worse
    wild = pose0 + torch.randn(8, 16, 3, generator=gen) * 1.0
    for extra in (
        dict(robust="huber", align="similarity"),
        dict(robust="none", fit_betas=False),
        dict(uv_sigma=1.0, damping=1e-6),
    ):
        result = refine(model, wild, betas0, transl0, steps=3, **terms, **extra)
        assert (result.objective_after <= result.objective_before).all(), extra
        if extra.get("fit_betas") is False:
            assert torch.equal(result.betas, betas0)


def test_refinement_stays_on_good_landmarks_despite_a_poor_prior(models):
    """Exact 2D landmarks, the closed-form start from noisy 3D keypoints, and a random prior
    pose far from the truth with a small weight: the refined hand's keypoints stay on the
    landmarks (2D) and its pose does not run to the prior."""
    model = models["right"]
    pose, betas, transl = random_hands(model, 16, seed=9)
    gen = torch.Generator().manual_seed(10)
    keypoints = model(pose, betas, transl).keypoints
    uv = project(keypoints)
    noisy = keypoints + torch.randn(16, 21, 3, generator=gen) * 0.003
    start = keypoints_to_mano(model, noisy, "right")
    prior = torch.randn(16, 16, 3, generator=gen) * 0.6
    result = refine(
        model, start.pose, start.betas, start.transl, K=K, uv=uv, prior_pose=prior,
        prior_weight=0.01, steps=8,
    )  # fmt: skip
    uv0 = project(model(start.pose, start.betas, start.transl).keypoints)
    uv1 = project(model(result.pose, result.betas, result.transl).keypoints)
    err0 = (uv0 - uv).norm(dim=-1)
    err1 = (uv1 - uv).norm(dim=-1)
    assert err0.mean() > 2.0  # the start is off (noisy 3D keypoints)
    assert err1.mean() < 0.2 and err1.max() < 1.0, (err1.mean(), err1.max())
    # the hand's shape stays near the truth, not the prior: 3D keypoints after removing the
    # centroid and the scale (2D landmarks cannot tell a larger hand further away)
    got = model(result.pose, result.betas, result.transl).keypoints
    got = got - got.mean(1, keepdim=True)
    true = keypoints - keypoints.mean(1, keepdim=True)
    scale = (got * true).sum((1, 2)) / got.square().sum((1, 2))
    err3d = (scale[:, None, None] * got - true).norm(dim=-1)
    assert err3d.mean() < 5e-3, err3d.mean()


def test_refinement_without_data_goes_to_the_prior(models):
    model = models["left"]
    pose, betas, transl = random_hands(model, 4, seed=11)
    prior = pose + 0.2
    result = refine(model, pose, betas, transl, prior_pose=prior, prior_weight=1.0, steps=3)
    torch.testing.assert_close(result.pose, prior, atol=1e-3, rtol=0)
    # zero weight: no pull at all
    still = refine(model, pose, betas, transl, prior_pose=prior, prior_weight=0.0, steps=3)
    torch.testing.assert_close(still.pose, pose, atol=1e-6, rtol=0)


def test_refinement_ignores_missing_landmarks(models):
    model = models["right"]
    pose, betas, transl = random_hands(model, 3, seed=12)
    keypoints = model(pose, betas, transl).keypoints
    uv = project(keypoints)
    xyz = keypoints.clone()
    uv[0, :5] = float("nan")
    uv[1] = float("nan")
    xyz[2] = float("nan")
    prior = pose.clone()
    prior[0, 3] = float("nan")
    result = refine(model, pose + 0.05, betas, transl, K=K, uv=uv, xyz=xyz, prior_pose=prior)
    for value in (result.pose, result.betas, result.transl, result.objective_after):
        assert torch.isfinite(value).all()
    assert (result.objective_after <= result.objective_before).all()


def test_numpy_rotation_helpers_match_torch_and_svd_references():
    """so3_exp against `backend.network.rotation.axis_angle_to_matrix`, quaternion_to_axis_angle
    against its `matrix_to_axis_angle` (at 0, tiny, moderate and near-pi angles), and the
    palm's Horn quaternion against an SVD Kabsch fit (numpy's SVD, reflection fixed)."""
    rng = np.random.default_rng(13)
    aa = rng.normal(0, 1.0, (40, 3))
    aa[0] = 0.0
    aa[1] = [1e-9, 0.0, 0.0]
    aa[2] = [0.0, 2e-4, -1e-4]
    aa[3] = [math.pi - 1e-7, 0.0, 0.0]
    aa[4] = np.array([1.0, 2.0, -2.0]) / 3 * (math.pi - 1e-3)
    rot = so3_exp(aa)
    torch_rot = axis_angle_to_matrix(torch.from_numpy(aa)).numpy()
    np.testing.assert_allclose(rot, torch_rot, atol=1e-12, rtol=0)

    source = rng.normal(0, 0.05, (40, 6, 3))
    source -= source.mean(1, keepdims=True)
    exact = source @ rot.transpose(0, 2, 1)
    weight = rng.uniform(0.5, 2.0, (40, 6))
    quat = weighted_quaternion(source, exact, weight)
    np.testing.assert_allclose(quaternion_to_matrix(quat), rot, atol=1e-12, rtol=0)
    got = torch.from_numpy(quaternion_to_axis_angle(quat))
    want = matrix_to_axis_angle(torch.from_numpy(rot))
    # at pi, r and -r are the same rotation: compare the rotations there
    np.testing.assert_allclose(got[:3].numpy(), aa[:3], atol=1e-15, rtol=0)
    torch.testing.assert_close(got[5:], want[5:], atol=1e-9, rtol=0)
    torch.testing.assert_close(axis_angle_to_matrix(got), torch.from_numpy(rot), atol=1e-9, rtol=0)

    noisy = exact + rng.normal(0, 0.01, exact.shape)
    cov = (noisy * weight[..., None]).transpose(0, 2, 1) @ source
    u, _, vh = np.linalg.svd(cov)
    u[..., 2] *= np.sign(np.linalg.det(u @ vh))[:, None]
    np.testing.assert_allclose(weighted_rotation(source, noisy, weight), u @ vh, atol=1e-10)
    # fewer than 3 points: the identity
    few = weight.copy()
    few[:, 2:] = 0.0
    np.testing.assert_array_equal(weighted_quaternion(source, noisy, few), [[1, 0, 0, 0]] * 40)


def test_refinement_and_closed_form_are_bitwise_repeatable(models):
    """The same input twice (the second from copies elsewhere in memory): the same bits; and a
    hand refined in a batch of 8 equals it refined alone (float32 output)."""
    model = models["right"]
    pose, betas, transl = random_hands(model, 8, seed=14)
    gen = torch.Generator().manual_seed(15)
    keypoints = model(pose, betas, transl).keypoints
    noisy = keypoints + torch.randn(8, 21, 3, generator=gen) * 0.003
    uv = project(keypoints) + torch.randn(8, 21, 2, generator=gen) * 2
    terms = dict(K=K, uv=uv, xyz=noisy, prior_pose=pose + 0.1, prior_weight=0.5, robust="huber")
    runs = []
    for _ in range(2):
        start = keypoints_to_mano(model, noisy.clone(), "right")
        out = refine(model, start.pose.clone(), start.betas.clone(), start.transl.clone(), **terms)
        runs.append((start.pose, start.betas, start.transl, out.pose, out.betas, out.transl))
        terms = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in terms.items()}
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    alone = refine(
        model, runs[0][0][3:4], runs[0][1][3:4], runs[0][2][3:4], K=K, uv=uv[3:4],
        xyz=noisy[3:4], prior_pose=pose[3:4] + 0.1, prior_weight=0.5, robust="huber",
    )  # fmt: skip
    torch.testing.assert_close(alone.pose[0], runs[0][3][3], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone.transl[0], runs[0][5][3], atol=1e-7, rtol=0)


def test_an_empty_batch_gives_empty_results(models):
    """No hands in, no hands out, with the shapes and dtype of a full batch (the torch
    refinement raised on a batch of 0: reshape(0, -1) is ambiguous)."""
    model = models["left"]
    start = keypoints_to_mano(model, torch.zeros(0, 21, 3))
    assert [tuple(v.shape) for v in (start.pose, start.betas, start.transl, start.rotmats)] == [
        (0, 16, 3), (0, 10), (0, 3), (0, 16, 3, 3),
    ]  # fmt: skip
    out = refine(
        model, start.pose, start.betas, start.transl, K=K, uv=torch.zeros(0, 21, 2),
        xyz=torch.zeros(0, 21, 3), prior_pose=start.pose,
    )  # fmt: skip
    assert out.pose.shape == (0, 16, 3) and out.pose.dtype == torch.float32
    assert out.objective_after.shape == (0,) and out.accepted_steps.dtype == torch.int64
