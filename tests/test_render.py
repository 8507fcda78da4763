"""Tests of the pure-PyTorch renderer against hand computations and analytic references."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.camera import project_points
from backend.hand_model.constants import KEYPOINT_FINGER, KEYPOINT_PARENTS
from backend.render import (
    FINGER_COLORS,
    Light,
    composite,
    icosphere,
    interpolate,
    rasterize,
    render_overlay,
    save_png,
    shade,
    soft_silhouette,
    vertex_normals,
)

GOLDEN_SPHERE = Path(__file__).parent / "golden" / "render_sphere.png"
QUAD_FACES = torch.tensor([[0, 1, 2], [0, 2, 3]])


def _pixel_quad(u0: float, v0: float, u1: float, v1: float, z: float = 1.0) -> torch.Tensor:
    """(4, 3) corners of an axis-aligned pixel-space rectangle at depth z, for QUAD_FACES."""
    return torch.tensor([[u0, v0, z], [u1, v0, z], [u1, v1, z], [u0, v1, z]], dtype=torch.float64)


def _sphere_scene(
    size: int, subdivisions: int = 3, centre=(0.0, 0.0, 3.0), focal: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit sphere in front of a centred pinhole: verts_cam (1, V, 3), faces, K (1, 3, 3), pix."""
    verts, faces = icosphere(subdivisions, dtype=torch.float64)
    verts_cam = (verts + torch.tensor(centre, dtype=torch.float64))[None]
    focal = focal if focal is not None else 0.9 * size
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=torch.float64)
    return verts_cam, faces, K[None], _to_pix(verts_cam, K[None])


def _to_pix(verts_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) pixel coordinates plus camera depth, the input of `rasterize`."""
    return torch.cat([project_points(verts_cam, K), verts_cam[..., 2:]], -1)


def _centres_inside(tri_uv: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reference coverage: pixel centres strictly inside a triangle, by solving for barycentrics."""
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    a, b, c = tri_uv.astype(np.float64)
    basis = np.array([b - a, c - a]).T  # (2, 2): columns are the edge vectors
    s, t = np.linalg.solve(basis, np.stack([jj.ravel() - a[0], ii.ravel() - a[1]]))
    return ((s > 0) & (t > 0) & (s + t < 1)).reshape(height, width)


# ---------------------------------------------------------------------------- geometry helpers


def test_icosphere_is_closed_with_outward_winding():
    verts, faces = icosphere(2)
    assert verts.shape == (10 * 4**2 + 2, 3) and faces.shape == (20 * 4**2, 3)
    assert torch.allclose(verts.norm(dim=1), torch.ones(len(verts)), atol=1e-6)
    # Closed and consistently wound: every directed edge once, and its reverse once.
    directed = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()
    assert len(set(map(tuple, directed))) == len(directed)
    assert {(b, a) for a, b in directed} == set(map(tuple, directed))
    tri = verts[faces]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((normal * tri.mean(1)).sum(1) > 0).all()


def test_project_points_by_hand():
    K = torch.tensor([[[100.0, 0.0, 32.0], [0.0, 120.0, 24.0], [0.0, 0.0, 1.0]]])
    points = torch.tensor([[[0.1, -0.2, 2.0], [0.0, 0.0, 5.0]]])
    # u = fx x / z + cx, v = fy y / z + cy
    expected = torch.tensor([[[100 * 0.05 + 32, 120 * -0.1 + 24], [32.0, 24.0]]])
    assert torch.allclose(project_points(points, K), expected)


def test_vertex_normals_of_a_sphere_are_radial():
    verts, faces = icosphere(2)
    normals = vertex_normals(verts[None] * 2.0 + 1.0, faces)[0]
    assert torch.allclose(normals.norm(dim=1), torch.ones(len(verts)), atol=1e-5)
    assert (normals * verts).sum(1).min() > 0.99


# ---------------------------------------------------------------------------- hard raster


@pytest.mark.parametrize("winding", [[0, 1, 2], [0, 2, 1]])
def test_triangle_covers_hand_computed_pixel_centres(winding):
    # Legs on u = 0 and v = 0, hypotenuse u + v = 4 through the centres with i + j = 3. The
    # hypotenuse is a bottom-right edge, so those centres are left out: covered iff i + j <= 2.
    corners = torch.tensor([[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]])
    frags = rasterize(corners[None], torch.tensor([winding]), 6, 6)
    i, j = np.mgrid[:6, :6]
    np.testing.assert_array_equal(frags.mask[0].numpy(), i + j <= 2)
    # The other half of the 4 x 4 square owns the hypotenuse centres (top-left rule).
    other = torch.tensor([[4.0, 4.0, 1.0], [0.0, 4.0, 1.0], [4.0, 0.0, 1.0]])
    frags = rasterize(other[None], torch.tensor([winding]), 6, 6)
    np.testing.assert_array_equal(frags.mask[0].numpy(), (i + j >= 3) & (i < 4) & (j < 4))


def test_pixel_centre_convention():
    # A small triangle around (u, v) = (2.5, 1.5): the centre of row 1, column 2 only.
    corners = torch.tensor([[[2.3, 1.3, 1.0], [2.8, 1.4, 1.0], [2.4, 1.9, 1.0]]])
    frags = rasterize(corners, torch.tensor([[0, 1, 2]]), 4, 5)
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(frags.mask[0], expected)
    assert frags.face_idx[0, 1, 2] == 0 and (frags.face_idx[0][~expected] == -1).all()


def test_triangle_area_matches_reference_coverage():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        uv = torch.rand(3, 2, generator=gen, dtype=torch.float64) * 40 - 4  # partly off-image
        corners = torch.cat([uv, torch.ones(3, 1, dtype=torch.float64)], 1)
        frags = rasterize(corners[None], torch.tensor([[0, 1, 2]]), 32, 32)
        expected = _centres_inside(uv.numpy(), 32, 32)
        np.testing.assert_array_equal(frags.mask[0].numpy(), expected)
    # Fully visible triangle: pixel count within a perimeter of the analytic area.
    uv = np.array([[3.3, 2.1], [28.7, 9.6], [11.2, 30.4]])
    corners = torch.tensor(np.c_[uv, np.ones(3)])[None]
    count = int(rasterize(corners, torch.tensor([[0, 1, 2]]), 32, 32).mask.sum())
    (du1, dv1), (du2, dv2) = uv[1] - uv[0], uv[2] - uv[0]
    area = 0.5 * abs(du1 * dv2 - dv1 * du2)
    perimeter = sum(np.linalg.norm(uv[k] - uv[k - 1]) for k in range(3))
    assert abs(count - area) <= perimeter


def test_square_pixel_count_matches_area():
    u0, v0, u1, v1 = 3.3, 5.8, 20.6, 14.2
    frags = rasterize(_pixel_quad(u0, v0, u1, v1)[None], QUAD_FACES, 24, 24)
    # Columns j with u0 <= j + 0.5 <= u1, rows likewise.
    n_cols = math.floor(u1 - 0.5) - math.ceil(u0 - 0.5) + 1
    n_rows = math.floor(v1 - 0.5) - math.ceil(v0 - 0.5) + 1
    count = int(frags.mask.sum())
    assert count == n_cols * n_rows
    assert abs(count - (u1 - u0) * (v1 - v0)) <= 2 * ((u1 - u0) + (v1 - v0))


def test_shared_edges_are_watertight():
    # A jittered grid whose vertices sit on integer and half-integer positions, so many pixel
    # centres lie exactly on edges: each centre must be covered by exactly one triangle.
    gen = torch.Generator().manual_seed(1)
    n = 6
    grid = torch.stack(torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="xy"), -1)
    uv = grid.reshape(-1, 2).double() * 4.0 - 2.0
    inner = ((grid > 0) & (grid < n)).all(-1).reshape(-1)
    jitter = torch.randint(-2, 3, uv.shape, generator=gen).double() * 0.5
    uv[inner] += jitter[inner]
    idx = torch.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = torch.cat(
        [torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)]
    )
    verts = torch.cat([uv, torch.ones(len(uv), 1, dtype=torch.float64)], 1)[None]
    coverage = sum(rasterize(verts, faces[k : k + 1], 20, 20).mask.int() for k in range(len(faces)))
    assert torch.equal(coverage, torch.ones_like(coverage))
    assert rasterize(verts, faces, 20, 20).mask.all()


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_face_wins(near_first):
    near = _pixel_quad(2.0, 2.0, 12.0, 12.0, z=2.0)
    far = _pixel_quad(6.0, 6.0, 16.0, 16.0, z=3.0)
    verts = torch.cat([near, far] if near_first else [far, near])[None]
    faces = torch.cat([QUAD_FACES, QUAD_FACES + 4])
    near_faces = (0, 1) if near_first else (2, 3)
    frags = rasterize(verts, faces, 18, 18)
    overlap = frags.face_idx[0, 6:12, 6:12]
    assert torch.isin(overlap, torch.tensor(near_faces)).all()
    assert torch.allclose(frags.depth[0, 6:12, 6:12], torch.full((6, 6), 2.0, dtype=torch.float64))
    assert torch.allclose(
        frags.depth[0, 13:16, 13:16], torch.full((3, 3), 3.0, dtype=torch.float64)
    )
    assert torch.isinf(frags.depth[0, 0, 0]) and frags.face_idx[0, 0, 0] == -1


def test_perspective_correct_barycentrics_give_the_ray_plane_intersection():
    verts_cam = torch.tensor([[[-1.0, -0.8, 2.0], [1.2, -0.6, 6.0], [0.1, 1.0, 3.0]]]).double()
    K = torch.tensor([[[40.0, 0.0, 32.0], [0.0, 40.0, 32.0], [0.0, 0.0, 1.0]]]).double()
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(_to_pix(verts_cam, K), faces, 64, 64)
    assert frags.mask.sum() > 200
    # Reference: the ray through each pixel centre, d = K^-1 (u, v, 1), meets the triangle's plane
    # n . X = n . p0 at X = t d with t = (n . p0) / (n . d); its depth is t since d_z = 1.
    p0, p1, p2 = verts_cam[0]
    normal = torch.linalg.cross(p1 - p0, p2 - p0)
    i, j = torch.nonzero(frags.mask[0], as_tuple=True)
    pixel = torch.stack([j + 0.5, i + 0.5, torch.ones_like(i, dtype=torch.float64)], 1)
    ray = pixel @ torch.linalg.inv(K[0]).T
    t = (normal @ p0) / (ray @ normal)
    assert torch.allclose(frags.depth[0, i, j], t, rtol=1e-9)
    points = interpolate(frags, verts_cam, faces)[0, i, j]
    assert torch.allclose(points, t[:, None] * ray, rtol=1e-9, atol=1e-12)
    # Screen-space barycentrics (no 1/z correction) would be far off on this slanted triangle.
    uv = _to_pix(verts_cam, K)[0, :, :2]
    e1, e2 = uv[1] - uv[0], uv[2] - uv[0]
    s, r = torch.linalg.solve(torch.stack([e1, e2], 1), (pixel[:, :2] - uv[0]).T)
    affine_depth = (1 - s - r) * 2.0 + s * 6.0 + r * 3.0
    assert (affine_depth - t).abs().max() > 0.2


def test_interpolate_is_zero_on_background():
    _, faces, _, verts_pix = _sphere_scene(32, subdivisions=1)
    frags = rasterize(verts_pix, faces, 32, 32)
    values = interpolate(frags, torch.ones(1, verts_pix.shape[1], 2, dtype=torch.float64), faces)
    assert torch.equal(values[..., 0] != 0, frags.mask[0][None])
    assert torch.allclose(values[frags.mask], torch.ones(int(frags.mask.sum()), 2).double())


def test_near_plane_and_backface_culling():
    # Camera-frame triangle facing the camera: normal (0, 1, 0) x (1, 0, 0) = (0, 0, -1).
    front = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 1.0, 2.0], [1.0, 0.0, 2.0]]])
    K = torch.tensor([[[10.0, 0.0, 1.0], [0.0, 10.0, 1.0], [0.0, 0.0, 1.0]]])
    pix = _to_pix(front, K)
    facing = torch.tensor([[0, 1, 2]])
    away = torch.tensor([[0, 2, 1]])
    assert rasterize(pix, facing, 8, 8, cull_backfaces=True).mask.any()
    assert not rasterize(pix, away, 8, 8, cull_backfaces=True).mask.any()
    assert torch.equal(rasterize(pix, away, 8, 8).mask, rasterize(pix, facing, 8, 8).mask)
    behind = pix.clone()
    behind[0, 1, 2] = 0.0  # one vertex on the camera plane
    assert not rasterize(behind, facing, 8, 8).mask.any()
    # A closed convex mesh looks the same with and without culling.
    _, faces, _, verts_pix = _sphere_scene(32, subdivisions=2)
    culled = rasterize(verts_pix, faces, 32, 32, cull_backfaces=True)
    full = rasterize(verts_pix, faces, 32, 32)
    assert torch.equal(culled.face_idx, full.face_idx)


def test_chunking_does_not_change_the_result():
    _, faces, _, verts_pix = _sphere_scene(48, subdivisions=2)
    whole = rasterize(verts_pix, faces, 48, 48)
    chunked = rasterize(verts_pix, faces, 48, 48, max_candidates=200)
    assert torch.equal(whole.face_idx, chunked.face_idx)
    assert torch.equal(whole.bary, chunked.bary)
    soft = soft_silhouette(verts_pix, faces, 48, 48, sigma=1e-3)
    soft_chunked = soft_silhouette(verts_pix, faces, 48, 48, sigma=1e-3, max_candidates=500)
    assert torch.allclose(soft, soft_chunked, atol=1e-12)


def test_batch_equals_single_renders():
    scenes = [_sphere_scene(40, 2, centre) for centre in [(0.2, 0.1, 3.0), (-0.4, 0.3, 4.0)]]
    faces = scenes[0][1]
    verts_cam = torch.cat([s[0] for s in scenes])
    verts_pix = torch.cat([s[3] for s in scenes])
    albedo = torch.tensor([[0.8, 0.5, 0.4], [0.3, 0.6, 0.9]]).double()
    frags = rasterize(verts_pix, faces, 40, 40)
    rgb = shade(frags, verts_cam, faces, albedo)
    soft = soft_silhouette(verts_pix, faces, 40, 40, sigma=1e-3)
    for b in range(2):
        single = rasterize(verts_pix[b : b + 1], faces, 40, 40)
        assert torch.equal(single.face_idx[0], frags.face_idx[b])
        assert torch.equal(single.bary[0], frags.bary[b])
        single_rgb = shade(single, verts_cam[b : b + 1], faces, albedo[b : b + 1])
        assert torch.allclose(single_rgb[0], rgb[b])
        single_soft = soft_silhouette(verts_pix[b : b + 1], faces, 40, 40, sigma=1e-3)
        assert torch.allclose(single_soft[0], soft[b], atol=1e-12)


# ---------------------------------------------------------------------------- shading


def test_flat_square_shading_matches_the_lighting_equations():
    # A camera-facing square at z = 2 (normal (0, 0, -1)), one light, Lambert + Blinn-Phong.
    verts_cam = torch.tensor([[[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]]]).double()
    faces = torch.tensor([[0, 3, 2], [0, 2, 1]])  # counter-clockwise seen from the camera
    K = torch.tensor([[[8.0, 0.0, 8.0], [0.0, 8.0, 8.0], [0.0, 0.0, 1.0]]]).double()
    direction = np.array([0.3, -0.4, 1.0])
    albedo = np.array([0.6, 0.5, 0.4])
    light = Light(direction=tuple(direction), color=(0.9, 0.8, 0.7))
    frags = rasterize(_to_pix(verts_cam, K), faces, 16, 16)
    rgb = shade(
        frags,
        verts_cam,
        faces,
        torch.from_numpy(albedo[None]),
        [light],
        ambient=0.2,
        shininess=10.0,
    )[0].numpy()
    mask = frags.mask[0].numpy()
    assert mask[4:12, 4:12].all() and not mask[:3].any()
    # Reference per pixel: X the ray hit at z = 2, v = -X / |X|, l = -d / |d|, h = (l + v) / |.|.
    i, j = np.nonzero(mask)
    hit = np.stack([(j + 0.5 - 8) / 8 * 2, (i + 0.5 - 8) / 8 * 2, np.full(i.shape, 2.0)], 1)
    view = -hit / np.linalg.norm(hit, axis=1, keepdims=True)
    to_light = -direction / np.linalg.norm(direction)
    normal = np.array([0.0, 0.0, -1.0])
    half = to_light + view
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    n_dot_l = normal @ to_light
    expected = albedo * (0.2 + np.array(light.color) * n_dot_l)
    expected = (
        expected + 0.15 * np.array(light.color) * np.clip(half @ normal, 0, None)[:, None] ** 10
    )
    np.testing.assert_allclose(rgb[i, j], np.clip(expected, 0, 1), atol=1e-9)
    assert (rgb[~mask] == 0).all()


def test_composite_blends_with_alpha():
    rgb = torch.full((1, 2, 2, 3), 0.8)
    alpha = torch.tensor([[[1.0, 0.0], [0.5, 0.25]]])
    out = composite(rgb, alpha, (0.0, 0.2, 0.4))
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.8, 0.8, 0.8]))
    assert torch.allclose(out[0, 0, 1], torch.tensor([0.0, 0.2, 0.4]))
    assert torch.allclose(out[0, 1, 0], torch.tensor([0.4, 0.5, 0.6]))
    assert torch.equal(composite(rgb, alpha > 0.3, (0.0, 0.0, 0.0))[0, 1, 1], torch.zeros(3))


def _render_golden_sphere() -> np.ndarray:
    verts_cam, faces, _, verts_pix = _sphere_scene(64, subdivisions=3, centre=(0.1, -0.05, 3.2))
    frags = rasterize(verts_pix.float(), faces, 64, 64)
    # Per-vertex albedo varying over the sphere exercises the interpolation.
    albedo = (0.55 + 0.4 * icosphere(3)[0])[None].clamp(0, 1)
    lights = [Light((0.5, 0.7, 1.0), (0.8, 0.8, 0.8)), Light((-1.0, 0.0, 0.3), (0.2, 0.2, 0.3))]
    rgb = shade(frags, verts_cam.float(), faces, albedo, lights, specular=0.3, shininess=20.0)
    image = composite(rgb, frags.mask, (0.1, 0.12, 0.15))[0]
    return (image * 255).round().to(torch.uint8).numpy()


def test_golden_sphere():
    image = _render_golden_sphere()
    if os.environ.get("HAMR_UPDATE_GOLDEN") == "1":
        save_png(GOLDEN_SPHERE, image)
    golden = np.asarray(Image.open(GOLDEN_SPHERE).convert("RGB"))
    diff = np.abs(image.astype(np.int16) - golden.astype(np.int16))
    assert diff.mean() < 2.0 and diff.max() <= 48, (diff.mean(), diff.max())


# ---------------------------------------------------------------------------- soft silhouette


def test_soft_silhouette_tends_to_the_hard_mask():
    _, faces, _, verts_pix = _sphere_scene(48, subdivisions=2, centre=(0.13, -0.07, 3.0))
    hard = rasterize(verts_pix, faces, 48, 48).mask.double()
    errors = []
    for sigma in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        soft = soft_silhouette(verts_pix, faces, 48, 48, sigma=sigma)
        assert soft.min() >= 0 and soft.max() <= 1
        errors.append(float((soft - hard).abs().mean()))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 2e-3 and errors[0] > 10 * errors[-1], errors


def test_soft_silhouette_gradcheck():
    verts = torch.tensor([[[1.3, 1.1], [6.2, 1.9], [5.7, 6.4], [1.8, 5.6]]], dtype=torch.float64)
    verts.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: soft_silhouette(v, QUAD_FACES, 8, 8, sigma=2e-2, cutoff=1e-12),
        (verts,),
        eps=1e-6,
        atol=1e-6,
    )


def test_soft_silhouette_gradient_moves_a_square_to_its_target():
    target = rasterize(_pixel_quad(12.0, 10.0, 24.0, 22.0)[None], QUAD_FACES, 32, 32).mask.double()
    verts = _pixel_quad(5.0, 4.0, 17.0, 16.0)[None, :, :2].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([verts], lr=0.5)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = (soft_silhouette(verts, QUAD_FACES, 32, 32, sigma=3e-3) - target).square().mean()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses
    centre = verts.detach()[0].mean(0)
    assert (centre - torch.tensor([18.0, 16.0], dtype=torch.float64)).norm() < 3.0


# ---------------------------------------------------------------------------- overlay


def _overlay_scene():
    gen = np.random.default_rng(0)
    image = gen.integers(0, 256, (120, 140, 3), dtype=np.uint8)
    verts, faces = icosphere(3)
    verts_cam = verts.numpy() * 0.1 + np.array([-0.25, 0.0, 1.0])
    K = np.array([[150.0, 0.0, 70.0], [0.0, 150.0, 60.0], [0.0, 0.0, 1.0]])
    # Five fingers fanning up from a wrist on the right, keypoints 8 pixels apart.
    keypoints = np.zeros((21, 2))
    keypoints[0] = (100.0, 100.0)
    for k in range(1, 21):
        finger, joint = KEYPOINT_FINGER[k], (k - 1) % 4 + 1
        angle = math.radians(-150 + 30 * (finger - 1))
        keypoints[k] = keypoints[0] + 8.0 * joint * np.array([math.cos(angle), math.sin(angle)])
    return image, verts_cam, faces.numpy(), K, keypoints


def _distance_to_skeleton(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) distance from each pixel centre to the nearest bone segment or keypoint."""
    centres = np.stack(np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5), -1)
    dist = np.full((height, width), np.inf)
    for k, parent in enumerate(KEYPOINT_PARENTS):
        a = keypoints[max(parent, 0)]
        b = keypoints[k]
        ab = b - a
        t = np.clip(((centres - a) @ ab) / max(ab @ ab, 1e-12), 0, 1)
        dist = np.minimum(dist, np.linalg.norm(centres - a - t[..., None] * ab, axis=-1))
    return dist


def test_overlay_blends_only_on_the_mesh():
    image, verts_cam, faces, K, _ = _overlay_scene()
    out = render_overlay(image, verts_cam, faces, K, alpha=0.6)
    assert out.shape == image.shape and out.dtype == np.uint8
    verts_pix = _to_pix(torch.tensor(verts_cam)[None], torch.tensor(K)[None])
    mask = rasterize(verts_pix, torch.tensor(faces), 120, 140).mask[0].numpy()
    # Away from the mesh (one pixel of slack for partial coverage) the photo is untouched.
    shifts = [np.roll(mask, (di, dj), axis=(0, 1)) for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    near_mesh, interior = np.any(shifts, axis=0), np.all(shifts, axis=0)
    np.testing.assert_array_equal(out[~near_mesh], image[~near_mesh])
    assert (out != image).any(-1)[mask].mean() > 0.95
    # Fully covered pixels: out = 0.4 image + 0.6 shaded, with shaded in [0, 255].
    photo = image[interior].astype(float)
    assert (
        (out[interior] >= np.floor(0.4 * photo)) & (out[interior] <= np.ceil(0.4 * photo + 153))
    ).all()


def test_overlay_draws_the_skeleton_near_the_keypoints():
    image, _, faces, K, keypoints = _overlay_scene()
    out = render_overlay(image, [], faces, K, keypoints)
    far = _distance_to_skeleton(keypoints, 120, 140) > 4.0
    np.testing.assert_array_equal(out[far], image[far])
    # The dot's fill colour shows within a pixel of each keypoint.
    for k, (u, v) in enumerate(keypoints):
        around = out[int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2].astype(int)
        error = np.abs(around - FINGER_COLORS[KEYPOINT_FINGER[k]]).max(-1).min()
        assert error <= 30, (k, error)


def test_overlay_several_hands():
    image, verts_cam, faces, K, keypoints = _overlay_scene()
    second = verts_cam + np.array([0.15, -0.1, 0.2])
    both = render_overlay(image, [verts_cam, second], faces, K, [keypoints, keypoints - 20])
    first_only = render_overlay(image, verts_cam, faces, K, keypoints)
    assert both.shape == image.shape
    assert ((both != first_only).any(-1)).sum() > 100


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    verts_cam, faces, _, verts_pix = _sphere_scene(64, subdivisions=3)
    verts_cam, verts_pix = verts_cam.float(), verts_pix.float()
    frags = rasterize(verts_pix, faces, 64, 64)
    frags_gpu = rasterize(verts_pix.cuda(), faces.cuda(), 64, 64)
    assert (frags_gpu.face_idx.cpu() == frags.face_idx).float().mean() > 0.999
    albedo = torch.tensor([[0.7, 0.6, 0.5]])
    rgb = shade(frags, verts_cam, faces, albedo)
    rgb_gpu = shade(frags_gpu, verts_cam.cuda(), faces.cuda(), albedo.cuda())
    assert (rgb_gpu.cpu() - rgb).abs().mean() < 1e-3
    soft = soft_silhouette(verts_pix, faces, 64, 64)
    soft_gpu = soft_silhouette(verts_pix.cuda(), faces.cuda(), 64, 64)
    assert torch.allclose(soft_gpu.cpu(), soft, atol=1e-4)
