"""The HAMR network, its rotations, weak camera, config and checkpoint format.

References: scipy's Rotation (rotations), hand-computed projections and pinhole geometry
(camera), the hand model's anatomy and `HandModel` itself (the mean initialisation), and the
network's own fp32 outputs only for save/load equality.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy.spatial.transform import Rotation

from backend.hand_model.model import HandModel, hand_model_id
from backend.hand_model.poses import named_pose
from backend.network import (
    CheckpointError,
    HamrConfig,
    HamrNet,
    axis_angle_to_matrix,
    load_checkpoint,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    normalized_to_pixels,
    pixels_to_normalized,
    rotation_6d_to_matrix,
    save_checkpoint,
    weak_project,
    weak_to_full_translation,
)
from backend.network.regressor import decode_params
from training.losses import LossWeights, hamr_loss

OPEN_ID = hand_model_id("open")


@pytest.fixture(scope="module")
def light_net() -> HamrNet:
    torch.manual_seed(0)
    net = HamrNet(HamrConfig.light()).eval()
    # larger final-layer weights than HMR's init, so outputs depend visibly on every weight
    torch.nn.init.normal_(net.regressor.decoder.weight, std=1e-3)
    return net


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def random_rotvecs(n: int, seed: int = 0) -> np.ndarray:
    return Rotation.random(n, random_state=seed).as_rotvec()


# ---------------------------------------------------------------- rotations


def test_axis_angle_to_matrix_matches_scipy():
    rotvecs = np.concatenate(
        [random_rotvecs(50), [[0.0, 0.0, 0.0], [1e-7, -2e-7, 0.0], [0.0, 0.0, math.pi]]]
    )
    ours = axis_angle_to_matrix(torch.tensor(rotvecs)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(rotvecs).as_matrix(), atol=1e-12)


@pytest.mark.parametrize(
    "angle", [0.0, 1e-8, 1e-5, 1e-3, 0.5, 2.0, math.pi - 1e-3, math.pi - 1e-6, math.pi]
)
def test_axis_angle_round_trip_near_0_and_pi(angle: float):
    axes = np.random.default_rng(3).normal(size=(20, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    rotvecs = torch.tensor(axes * angle)  # float64
    back = matrix_to_axis_angle(axis_angle_to_matrix(rotvecs))
    if angle < math.pi - 1e-4:
        torch.testing.assert_close(back, rotvecs, atol=1e-9, rtol=0)
    else:  # r and -r are the same rotation at pi: compare the rotations and the angle
        torch.testing.assert_close(back.norm(dim=1), rotvecs.norm(dim=1), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            axis_angle_to_matrix(back), axis_angle_to_matrix(rotvecs), atol=1e-9, rtol=0
        )


def test_matrix_to_axis_angle_matches_scipy_and_float32():
    rotvecs = random_rotvecs(200, seed=5)
    matrices = Rotation.from_rotvec(rotvecs).as_matrix()
    ours = matrix_to_axis_angle(torch.tensor(matrices)).numpy()
    np.testing.assert_allclose(ours, rotvecs, atol=1e-10)
    ours32 = matrix_to_axis_angle(torch.tensor(matrices, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(ours32, rotvecs, atol=1e-5)


def test_rotation_gradients_are_finite_at_identity():
    aa = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    r = axis_angle_to_matrix(aa)
    (matrix_to_axis_angle(r).sum() + r.sum()).backward()
    assert torch.isfinite(aa.grad).all()
    assert torch.autograd.gradcheck(
        axis_angle_to_matrix, (torch.randn(3, 3).double().requires_grad_(),)
    )


def test_6d_gives_rotations_and_round_trips():
    x = torch.randn(1000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = rotation_6d_to_matrix(x)
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r.transpose(1, 2) @ r, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(1000, dtype=torch.float64))
    # the first column is a1's direction; matrix -> 6D -> matrix is the identity map
    torch.testing.assert_close(r[:, :, 0], x[:, :3] / x[:, :3].norm(dim=1, keepdim=True))
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(r)), r)


# ---------------------------------------------------------------- camera


def test_weak_projection_by_hand():
    points = torch.tensor([[[0.1, -0.2, 5.0], [0.0, 0.0, -3.0]]])
    cam = torch.tensor([[8.0, 0.05, 0.1]])
    expected = torch.tensor([[[8 * 0.15, 8 * -0.1], [8 * 0.05, 8 * 0.1]]])
    torch.testing.assert_close(weak_project(points, cam), expected)


def test_normalised_pixel_convention():
    uv_n = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-1 + 1 / 256, -1 + 1 / 256]])
    pix = normalized_to_pixels(uv_n, 256)
    # corners of the crop, its centre, and the centre of pixel (0, 0)
    torch.testing.assert_close(pix, torch.tensor([[0, 0], [256, 256], [128, 128], [0.5, 0.5]]))
    torch.testing.assert_close(pixels_to_normalized(pix, 256), uv_n)


def test_weak_to_full_translation_matches_pinhole():
    # A hand 2 cm deep seen from ~1.7 m: the pinhole projection with the recovered translation
    # must land where the weak camera maps the points into the image (up to depth effects).
    points = torch.randn(1, 50, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    points[..., 2] *= 0.2
    cam = torch.tensor([[1.2, 0.03, -0.02]])
    box_center, box_size = torch.tensor([[700.0, 400.0]]), torch.tensor([300.0])
    focal, principal = torch.tensor([1000.0]), torch.tensor([[640.0, 360.0]])
    transl = weak_to_full_translation(cam, box_center, box_size, focal, principal)
    cam_pts = points + transl[:, None]
    pinhole = focal * cam_pts[..., :2] / cam_pts[..., 2:] + principal
    weak = box_center + box_size / 2 * weak_project(points, cam)
    assert transl[0, 2] == pytest.approx(2 * 1000 / (1.2 * 300))
    assert (pinhole - weak).abs().max() < 0.01 * box_size  # < 1 % of the box
    # numbers and unbatched points broadcast: a crop seen on its own by a long lens
    centre = torch.tensor([128.0, 128.0])
    own = weak_to_full_translation(cam, centre, 256, 5000.0, centre)
    torch.testing.assert_close(own, torch.tensor([[0.03, -0.02, 2 * 5000 / (1.2 * 256)]]))


def _dlt_system(points: np.ndarray, uv: np.ndarray, K: np.ndarray):
    """The linear system of backend.camera.solve_translation's docstring, written out row by
    row: f (x + Tx) - (u - c)(z + Tz) = 0 for each point and axis -> (A (2N, 3), b (2N,))."""
    rows, rhs = [], []
    for (x, y, z), (u, v) in zip(points, uv, strict=True):
        for axis, (coord, pix) in enumerate(((x, u), (y, v))):
            f, c = K[axis, axis], K[axis, 2]
            row = [0.0, 0.0, -(pix - c)]
            row[axis] = f
            rows.append(row)
            rhs.append((pix - c) * z - f * coord)
    return np.array(rows), np.array(rhs)


def test_solve_translation_is_the_least_squares_solution_and_bitwise_repeatable():
    from backend.camera import intrinsics, solve_translation

    rng = np.random.default_rng(3)
    for _ in range(20):
        points = rng.normal(0, 0.04, (21, 3))
        true_t = np.array([rng.normal(0, 0.1), rng.normal(0, 0.1), rng.uniform(0.3, 2.0)])
        K = intrinsics(640, 480, rng.uniform(300, 1500))
        cam = (points + true_t) @ K.T
        uv = cam[:, :2] / cam[:, 2:]
        noisy = uv + rng.normal(0, 4, uv.shape)
        args = [torch.from_numpy(points), torch.from_numpy(noisy), torch.from_numpy(K)]
        got = solve_translation(*args, torch.zeros(3, dtype=torch.float64)).numpy()
        ref = np.linalg.lstsq(*_dlt_system(points, noisy, K), rcond=None)[0]  # LAPACK, float64
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
        # without noise the hand's own translation comes back
        exact = solve_translation(
            torch.from_numpy(points), torch.from_numpy(uv), torch.from_numpy(K), torch.zeros(3)
        )
        np.testing.assert_allclose(exact.numpy(), true_t, atol=1e-9)
    # float32 in, float32 out; the same values wherever they sit in memory give the same bits
    # (MKL's least-squares solver did not: a fit started from it then drifted between runs)
    p32, uv32, k32 = (torch.tensor(a, dtype=torch.float32) for a in (points, noisy, K))
    results = []
    for offset in range(16):
        copies = []
        for a in (p32, uv32):
            buf = torch.empty(offset + a.numel())
            buf[offset:] = a.flatten()
            copies.append(buf[offset:].view(a.shape))
        results.append(solve_translation(copies[0], copies[1], k32, torch.zeros(3)))
    assert results[0].dtype == torch.float32
    assert all(torch.equal(r, results[0]) for r in results)
    np.testing.assert_allclose(results[0].numpy(), ref, rtol=1e-5, atol=1e-6)
    # ill-posed (every point on one pixel) or behind the camera: the given fallback
    init = torch.tensor([0.1, 0.2, 0.9], dtype=torch.float64)
    one_pixel = torch.full((21, 2), 300.0, dtype=torch.float64)
    assert solve_translation(args[0], one_pixel, args[2], init) is init
    behind = (points - true_t) @ K.T  # the hand mirrored through the camera centre
    uv_behind = torch.from_numpy(behind[:, :2] / behind[:, 2:])
    assert solve_translation(args[0], uv_behind, args[2], init) is init


# ---------------------------------------------------------------- config


def test_config_round_trip_and_strictness():
    for cfg in (HamrConfig.light(), HamrConfig.paper()):
        assert HamrConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    data = HamrConfig.light().to_dict()
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        HamrConfig.from_dict({**data, "colour": 1})
    with pytest.raises(ValueError, match="missing \\['dropout'\\]"):
        HamrConfig.from_dict({k: v for k, v in data.items() if k != "dropout"})
    with pytest.raises(ValueError, match="num_stacks must be int"):
        HamrConfig.from_dict({**data, "num_stacks": "2"})
    with pytest.raises(ValueError, match="heatmap_size must be input_size / 4"):
        HamrConfig(heatmap_size=32)
    with pytest.raises(ValueError, match="hand_model must be one of"):
        HamrConfig(hand_model="blender")
    assert HamrConfig() == HamrConfig.light()


# ---------------------------------------------------------------- network


def check_output_shapes(out, batch: int, cfg: HamrConfig, vertices: int) -> None:
    assert len(out.heatmaps) == cfg.num_stacks
    assert all(h.shape == (batch, 21, 64, 64) for h in out.heatmaps)
    assert out.pose.shape == (batch, 16, 3)
    assert out.rotmats.shape == (batch, 16, 3, 3)
    assert out.betas.shape == (batch, 10)
    assert out.cam.shape == (batch, 3)
    assert out.vertices.shape == (batch, vertices, 3)
    assert out.keypoints3d.shape == (batch, 21, 3)
    assert out.keypoints2d.shape == (batch, 21, 2)
    assert len(out.params_per_iteration) == cfg.regressor_iterations
    assert out.faces.shape[1] == 3
    for t in (out.pose, out.vertices, out.keypoints2d, *out.heatmaps):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_light_output_shapes(light_net, images):
    with torch.no_grad():
        out = light_net(images)
    check_output_shapes(out, 2, light_net.config, light_net.hand_model.num_vertices)
    # pose and rotmats are the same rotations; 2D keypoints are the weak projection
    torch.testing.assert_close(axis_angle_to_matrix(out.pose), out.rotmats, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.keypoints2d, weak_project(out.keypoints3d, out.cam))


def test_head_without_mesh_gives_the_mesh_keypoints(light_net, images):
    # the photo path's head (mesh=False) takes its keypoints from the hand model's keypoint layer:
    # the same 3D and 2D keypoints as the full hand model's, on far-from-rest poses and shapes
    with torch.no_grad():
        heatmaps, feature = light_net.backbone(images)
        raw = light_net.regressor(feature)
        noise = torch.Generator().manual_seed(3)
        params = [p + 0.6 * torch.randn(p.shape, generator=noise) for p in raw]
        full = light_net.head(heatmaps, feature, params)
        lean = light_net.head(heatmaps, feature, params, mesh=False)
    assert lean.vertices is None and full.vertices is not None
    assert float(full.pose.norm(dim=-1)[:, 1:].mean()) > 0.3  # the fingers really are bent
    torch.testing.assert_close(lean.keypoints3d, full.keypoints3d, atol=1e-6, rtol=0)
    torch.testing.assert_close(lean.keypoints2d, full.keypoints2d, atol=1e-6, rtol=0)
    for name in ("pose", "rotmats", "betas", "cam"):
        assert torch.equal(getattr(lean, name), getattr(full, name))
    # only the final iteration is decoded without the mesh, the same numbers as the full head's
    assert len(lean.params_per_iteration) == 1 and len(full.params_per_iteration) == len(raw)
    assert torch.equal(lean.params_per_iteration[0].rotmats, full.params_per_iteration[-1].rotmats)


def test_paper_preset_builds_and_runs():
    cfg = HamrConfig.paper()
    net = HamrNet(cfg).eval()
    groups = ("hourglass", "encoder", "regressor")
    counts = {n: sum(p.numel() for p in getattr(net, n).parameters()) for n in groups}
    assert len(net.hourglass.hourglasses) == 2 and cfg.hourglass_features == 256
    assert cfg.regressor_hidden == 1024 and cfg.regressor_iterations == 3
    # the flattened 4x4x512 encoder map feeds HMR's 1024-wide FC layers
    assert net.regressor.mlp[0].in_features == 512 * 16 + 109
    assert 15e6 < sum(counts.values()) < 25e6
    assert sum(p.numel() for p in HamrNet(HamrConfig.light()).parameters()) < 3e6
    with torch.no_grad():
        out = net(torch.rand(1, 3, 256, 256))
    check_output_shapes(out, 1, cfg, net.hand_model.num_vertices)


def test_mean_initialisation_is_a_centred_palm_facing_hand():
    cfg = HamrConfig.light()
    net = HamrNet(cfg)
    params = decode_params(net.regressor.mean_params[None])
    eye = torch.eye(3).expand(16, 3, 3)
    torch.testing.assert_close(params.rotmats[0].transpose(1, 2) @ params.rotmats[0], eye)
    assert params.betas.abs().max() == 0
    # finger joints: exactly the named pose, computed independently through axis-angle LBS
    hand_model = HandModel("right")
    pose = named_pose(cfg.init_pose, hand_model.rest_joints()[0], "right")
    torch.testing.assert_close(params.rotmats[0, 1:], axis_angle_to_matrix(pose)[1:])
    pose[0] = matrix_to_axis_angle(params.rotmats[0, 0])
    hand = hand_model(pose[None])
    uv = weak_project(hand.vertices, params.cam)[0]  # (V, 2)
    # centred in the crop, longer side spanning init_crop_fill of it
    torch.testing.assert_close(uv.amin(0) + uv.amax(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert (uv.amax(0) - uv.amin(0)).max().item() == pytest.approx(2 * cfg.init_crop_fill)
    kp = weak_project(hand.keypoints, params.cam)[0]
    assert kp[12, 1] < kp[0, 1] - 0.8  # middle fingertip well above the wrist (v down)
    assert kp[4, 0] > kp[20, 0] + 0.5  # right hand, palm to the camera: thumb right of pinky
    kp3 = hand.keypoints[0]
    palm = torch.linalg.cross(kp3[5] - kp3[17], kp3[9] - kp3[0])  # palmar normal, right hand
    assert palm[2] < -0.9 * palm.norm()  # facing the camera (-z)
    # the network's output at the mean (zero corrections) is this mesh
    torch.nn.init.zeros_(net.regressor.decoder.weight)
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 3, 256, 256))
    torch.testing.assert_close(out.vertices, hand.vertices, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = HamrNet(HamrConfig.light()).train()
    b = 2
    g = torch.Generator().manual_seed(2)
    batch = {
        "image": torch.rand(b, 3, 256, 256, generator=g),
        "mask": (torch.rand(b, 256, 256, generator=g) > 0.5).float(),
        "keypoints2d": torch.rand(b, 21, 2, generator=g) * 256,
        "keypoints2d_vis": torch.ones(b, 21),
        "keypoints3d": torch.randn(b, 21, 3, generator=g) * 0.05,
        "has_3d": torch.ones(b),
        "has_mask": torch.ones(b),
        "has_mano": torch.ones(b),
        "pose": torch.randn(b, 16, 3, generator=g) * 0.3,
        "betas": torch.randn(b, 10, generator=g),
    }
    total, terms = hamr_loss(net(batch["image"]), batch, LossWeights(intermediate=1.0))
    assert set(terms) == {f.name for f in dataclasses.fields(LossWeights)}
    total.backward()
    for group in ("hourglass", "encoder", "regressor"):
        for name, p in getattr(net, group).named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{group}.{name}"
        assert sum(p.grad.abs().sum() for p in getattr(net, group).parameters()) > 0


def test_bf16_autocast_keeps_the_mesh_float32(light_net, images):
    with torch.no_grad():
        ref = light_net(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = light_net(images)
    assert out.vertices.dtype == torch.float32 and out.keypoints3d.dtype == torch.float32
    assert torch.isfinite(out.vertices).all()
    assert (out.vertices - ref.vertices).abs().max() < 5e-3  # metres


def test_rejects_wrong_image_shape(light_net):
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        light_net(torch.rand(1, 3, 128, 128))


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_fp32_exact_fp16_close(light_net, images, tmp_path):
    with torch.no_grad():
        ref = light_net(images)
    path = tmp_path / "net.safetensors"
    save_checkpoint(path, light_net, hand_model_id=OPEN_ID, metadata={"steps": 12})
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("hand_model.") for k in keys)  # the hand model is not stored
    loaded, info = load_checkpoint(path)
    assert not loaded.training and info["metadata"] == {"steps": 12}
    assert info["hand_model_id"] == OPEN_ID and info["dtype"] == "float32"
    assert HamrConfig.from_dict(info["config"]) == light_net.config
    with torch.no_grad():
        out = loaded(images)
    for a, b in [
        (out.vertices, ref.vertices),
        (out.cam, ref.cam),
        (out.heatmaps[0], ref.heatmaps[0]),
    ]:
        assert torch.equal(a, b)

    half_path = tmp_path / "half.safetensors"
    save_checkpoint(half_path, light_net, hand_model_id=OPEN_ID, half=True)
    assert half_path.stat().st_size < 0.6 * path.stat().st_size
    loaded, info = load_checkpoint(half_path)
    assert info["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        out = loaded(images)
    assert (out.vertices - ref.vertices).abs().max() < 1e-3  # metres
    assert (out.heatmaps[0] - ref.heatmaps[0]).abs().max() < 1e-3


def test_checkpoint_errors(light_net, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(garbage)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="not a HAMR checkpoint"):
        load_checkpoint(bare)

    good = tmp_path / "good.safetensors"
    save_checkpoint(good, light_net, hand_model_id=OPEN_ID)
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()

    def rewrite(name: str, **changes: str):
        path = tmp_path / name
        save_file(tensors, str(path), metadata={**header, **changes})
        return path

    config = json.loads(header["config"])
    invalid = rewrite("invalid.safetensors", config=json.dumps({**config, "heatmap_size": 32}))
    with pytest.raises(CheckpointError, match="invalid network config.*heatmap_size"):
        load_checkpoint(invalid)
    paper = json.dumps(HamrConfig.paper().to_dict())
    with pytest.raises(CheckpointError, match="do not match its config.*wrong shape"):
        load_checkpoint(rewrite("mismatch.safetensors", config=paper))
    other = "mano-official-0123456789ab"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(rewrite("mano.safetensors", hand_model_id=other))
    message = str(err.value)
    assert other in message and OPEN_ID in message and "retrain" in message
    tensors.pop("regressor.decoder.bias")
    with pytest.raises(CheckpointError, match="missing \\['regressor.decoder.bias'\\]"):
        load_checkpoint(rewrite("short.safetensors"))


@pytest.mark.parametrize("kind", ["torchscript", "onnxruntime"])
def test_frozen_backbone_gives_the_same_outputs(light_net, images, kind):
    """The network's convolutional part in its inference forms (what `HandNetwork(frozen=True)`
    runs): `runner.frozen_backbone` (traced on one crop, frozen, so its conv -> BN pairs are
    folded) and `runner.OnnxBackbone` (exported to ONNX, run by ONNX Runtime), against the
    eager network, with BN statistics and affine terms made far from the identity: the same
    heat-maps, pose and vertices to float rounding, bitwise the same from the first call, at
    the batch it was traced or exported with and at others."""
    import copy

    from torch import nn

    from backend.network.runner import OnnxBackbone, frozen_backbone

    net = copy.deepcopy(light_net).eval()
    gen = torch.Generator().manual_seed(5)
    for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        c = norm.num_features
        norm.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
        norm.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        norm.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
        norm.bias.data.copy_(torch.randn(c, generator=gen) * 0.2)
    frozen = frozen_backbone(net) if kind == "torchscript" else OnnxBackbone.build(net, threads=2)
    assert frozen is not None and frozen is not net.backbone  # the inference form was built
    batch = torch.cat([images, images.flip(-1), images[:1]])  # 5 crops; traced on 1
    for x in (batch[:1], batch):
        with torch.no_grad(), torch.jit.optimized_execution(False):  # as HandNetwork runs it
            a, b, again = net(x), net.head(*frozen(x)), net.head(*frozen(x))
        torch.testing.assert_close(again.vertices, b.vertices, atol=0, rtol=0)  # from call 1
        assert len(b.heatmaps) == len(a.heatmaps) == net.config.num_stacks
        for h_eager, h_frozen in zip(a.heatmaps, b.heatmaps, strict=True):
            torch.testing.assert_close(h_frozen, h_eager, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b.pose, a.pose, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.vertices, a.vertices, atol=1e-5, rtol=0)


def test_hand_network_runs_onnxruntime_when_frozen():
    """`HandNetwork(frozen=True)` (`hamr serve`, `hamr video`) runs ONNX Runtime on a CPU
    (`make setup` installs it), the eager network otherwise; both give the same crops' hands to
    float rounding and the frozen one gives the same bits twice."""
    from backend.network.runner import DEFAULT_CHECKPOINT, HandNetwork

    frozen = HandNetwork(DEFAULT_CHECKPOINT, "cpu", frozen=True)
    eager = HandNetwork(DEFAULT_CHECKPOINT, "cpu")
    assert (frozen.backbone_kind, eager.backbone_kind) == ("onnxruntime", "eager")
    crops = np.random.default_rng(3).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    a, b, again = eager.run_crops(crops), frozen.run_crops(crops), frozen.run_crops(crops)
    assert torch.equal(b.vertices, again.vertices) and torch.equal(b.pose, again.pose)
    torch.testing.assert_close(b.vertices, a.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.pose, a.pose, atol=1e-4, rtol=0)


def test_hand_network_without_onnxruntime_falls_back_to_torchscript(monkeypatch):
    """Where onnxruntime cannot be imported (a setup without it), `HandNetwork(frozen=True)`
    runs the TorchScript-frozen backbone instead, with the same hands to float rounding."""
    import sys

    from backend.network.runner import DEFAULT_CHECKPOINT, HandNetwork

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises
    frozen = HandNetwork(DEFAULT_CHECKPOINT, "cpu", frozen=True)
    assert frozen.backbone_kind == "torchscript"
    crops = np.random.default_rng(4).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    a, b = HandNetwork(DEFAULT_CHECKPOINT, "cpu").run_crops(crops), frozen.run_crops(crops)
    torch.testing.assert_close(b.vertices, a.vertices, atol=1e-5, rtol=0)
