"""The synthetic training-data engine: random hands rendered into 256x256 crops with exact labels.

One call to `SyntheticHands.sample(n, generator)` makes a batch on the engine's device (a GPU
trains without waiting on a CPU):

1. shape β ~ N(0, I) (clipped to +-3) and a pose from the anatomical prior (`prior.py`);
2. a viewpoint: uniform rotations mixed with palm-, back-, side- and egocentric views, plus an
   in-plane roll; a virtual 640x480 camera with a random field of view (35-80 deg); the hand at
   0.25-1.0 m, anywhere in the central part of the frame;
3. the crop as inference computes it (`backend.crop`): the hand's tight box -> a square crop of
   side CROP_SCALE x the longer side, jittered in scale and position like a detector's box;
4. rendering with the project's rasteriser: skin tones, palm tint, nails, blotches, three random
   lights and specular highlights over procedural or user backgrounds; occluders; blur, noise,
   colour jitter and JPEG artefacts;
5. labels: 21 2D keypoints (crop pixels), 21 3D keypoints and vertices (camera frame, metres), the
   full silhouette mask and the visible mask, θ (global orientation in the camera frame), β, the
   crop's K and the virtual image's K, the crop box, the weak-perspective camera fitted to the
   labels, and per-keypoint self-occlusion flags.

Left hands: a left sample is the exact mirror image (x -> -x in the camera frame) of a right-hand
configuration; the mirrored right model equals the left model (tested in the hand-model tests), and
θ uses the mirror rule (x, y, z) -> (x, -y, -z). Imports torch and backend only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from backend.camera import project_points
from backend.crop import CROP_SCALE, CROP_SIZE, crop_intrinsics, crop_to_box, square_crop
from backend.hand_model.model import HandModel, load_hand_arrays, mirror_points, mirror_pose
from backend.network.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from backend.render import composite, rasterize, shade

from .appearance import (
    ImageFolderBackgrounds,
    camera_effects,
    occluders,
    procedural_backgrounds,
    sample_lights,
    sample_skin,
    test_backgrounds,
)
from .prior import angles_to_pose, sample_digit_angles

VIRTUAL_IMAGE = (640, 480)  # width, height of the virtual full image the crop is taken from


@dataclass
class SynthConfig:
    """Knobs of the synthetic engine (defaults are what the shipped checkpoint was trained on)."""

    image_size: int = CROP_SIZE  # crop side in pixels
    left_fraction: float = 0.5  # share of left hands
    beta_std: float = 1.0  # β ~ N(0, beta_std^2), clipped to +-3
    fov_deg: tuple[float, float] = (35.0, 80.0)  # horizontal field of view of the virtual camera
    distance_m: tuple[float, float] = (0.25, 1.0)  # hand centre depth, log-uniform
    # viewpoint mixture: uniform rotation, palm, back, side, egocentric
    view_mix: tuple[float, float, float, float, float] = (0.35, 0.15, 0.15, 0.1, 0.25)
    view_jitter_deg: float = 25.0  # perturbation around the canonical views
    crop_scale_jitter: tuple[float, float] = (0.9, 1.15)  # x CROP_SCALE
    crop_shift: float = 0.08  # crop centre jitter, fraction of the crop side
    occluder_prob: float = 0.3
    background_dir: str | None = None  # the user's images, mixed with procedural backgrounds
    user_background_fraction: float = 0.5  # share of user images when background_dir is set
    camera_effects: bool = True
    hand_model: str = "open"
    # "train" and "test" use disjoint skin-tone bands and background families (appearance.py);
    # "all" uses everything
    split: str = "train"


def _canonical_views(device) -> Tensor:
    """(4, 3, 3) model-to-camera rotations: palm, back, side (thumb side), egocentric.

    Model frame: x distal, y dorsal, z ulnar; camera: x right, y down, z forward."""
    s = 1 / math.sqrt(0.5**2 + 0.85**2)
    cols = [
        ((0, -1, 0), (0, 0, 1), (-1, 0, 0)),  # palm faces the camera, fingers up
        ((0, -1, 0), (0, 0, -1), (1, 0, 0)),  # back of the hand faces the camera
        ((0, -1, 0), (-1, 0, 0), (0, 0, -1)),  # thumb side towards the camera
        ((0, -0.5 * s, 0.85 * s), (0, -0.85 * s, -0.5 * s), (1, 0, 0)),  # first-person view
    ]
    return torch.tensor(cols, dtype=torch.float32, device=device).transpose(1, 2)


def sample_orientations(n: int, g: torch.Generator, cfg: SynthConfig, device) -> Tensor:
    """(n, 3, 3) global rotations of a right hand, model frame -> camera frame."""
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    mode = torch.multinomial(
        torch.tensor(cfg.view_mix, device=device), n, replacement=True, generator=g
    )
    q = torch.randn(n, 4, generator=g, device=device)
    uniform = _quat_to_matrix(q / q.norm(dim=1, keepdim=True))
    base = _canonical_views(device)[(mode - 1).clamp(min=0)]
    jitter = axis_angle_to_matrix(
        torch.randn(n, 3, generator=g, device=device) * math.radians(cfg.view_jitter_deg)
    )
    # in-plane roll: any angle half the time, upright-ish otherwise; egocentric stays upright
    roll = torch.where(u(n) < 0.5, (u(n) * 2 - 1) * math.pi, (u(n) * 2 - 1) * math.pi / 4)
    roll = torch.where(mode == 4, (u(n) * 2 - 1) * math.pi / 6, roll)
    z = torch.zeros(n, 3, device=device)
    z[:, 2] = roll
    canonical = axis_angle_to_matrix(z) @ jitter @ base
    return torch.where((mode == 0)[:, None, None], uniform, canonical)


def _quat_to_matrix(q: Tensor) -> Tensor:
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def forearm_mesh(
    rings: int = 8, segments: int = 16, length: float = 0.24, device="cpu"
) -> tuple[Tensor, Tensor]:
    """A closed tapered tube (V, 3), (F, 3) along -x from the wrist, in the right model's rest
    frame: elliptic cross-sections 5.4 x 3.6 cm at the wrist growing to 7 x 5.6 cm."""
    t = torch.linspace(0.0, 1.0, rings, device=device)[:, None]
    ang = torch.linspace(0, 2 * math.pi, segments + 1, device=device)[:-1][None]
    half_w = 0.027 + 0.008 * t
    half_d = 0.018 + 0.010 * t
    x = (-0.01 - length * t).expand(rings, segments)
    ring = torch.stack([x, -0.002 + half_d * torch.sin(ang), half_w * torch.cos(ang)], dim=-1)
    verts = torch.cat(
        [ring.reshape(-1, 3), ring[0].mean(0, keepdim=True), ring[-1].mean(0, keepdim=True)]
    )
    faces = []
    for r in range(rings - 1):
        for k in range(segments):
            a, b = r * segments + k, r * segments + (k + 1) % segments
            faces += [(a, a + segments, b), (b, a + segments, b + segments)]
    cap0, cap1 = rings * segments, rings * segments + 1
    for k in range(segments):
        faces += [(cap0, k, (k + 1) % segments)]
        last = (rings - 1) * segments
        faces += [(cap1, last + (k + 1) % segments, last + k)]
    return verts, torch.tensor(faces, dtype=torch.long, device=device)


class SyntheticHands:
    """Batched synthetic sample generator (see the module docstring)."""

    def __init__(self, cfg: SynthConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg or SynthConfig()
        self.device = torch.device(device)
        self.model = HandModel("right", source=self.cfg.hand_model).to(self.device)
        arrays = load_hand_arrays(self.cfg.hand_model, "right")
        self.faces = torch.as_tensor(arrays["f"], device=self.device)
        self.rest_joints = self.model.rest_joints()[0].detach()
        rest = self.model.mano.v_template.detach()
        self.rest_verts = rest
        # how palmar each vertex is: its rest normal against the palm normal (-y), smoothed
        from backend.render import vertex_normals

        normals = vertex_normals(rest[None], self.faces)[0]
        self.palm_weight = ((-normals[:, 1]) * 1.5).clamp(0, 1)
        nail = arrays.get("nail_mask")
        self.nail_mask = (
            torch.as_tensor(nail, device=self.device)
            if nail is not None
            else torch.zeros(len(rest), dtype=torch.bool, device=self.device)
        )
        # redness near knuckle joints and fingertips
        centres = torch.cat(
            [self.rest_joints[[1, 4, 7, 10, 13, 14]], rest[self.model.tip_vertex_ids]]
        )
        d = torch.cdist(rest, centres).amin(dim=1)
        self.redness = torch.exp(-((d / 0.012) ** 2))
        self.arm_verts, arm_faces = forearm_mesh(device=self.device)
        self.scene_faces = torch.cat([self.faces, arm_faces + len(rest)])
        self.user_backgrounds = (
            ImageFolderBackgrounds(self.cfg.background_dir) if self.cfg.background_dir else None
        )

    @torch.no_grad()
    def sample(self, n: int, g: torch.Generator) -> dict[str, Tensor]:
        """A batch of n samples (dict of tensors on the engine's device; see `LABEL_FIELDS`)."""
        cfg, dev = self.cfg, self.device
        u = lambda *s: torch.rand(*s, generator=g, device=dev)  # noqa: E731
        size = cfg.image_size

        # 1. shape and pose (right hand; left samples are mirrored at the end)
        betas = (torch.randn(n, 10, generator=g, device=dev) * cfg.beta_std).clamp(-3, 3)
        finger_pose = angles_to_pose(sample_digit_angles(n, g, dev), self.rest_joints, "right")
        rot = sample_orientations(n, g, cfg, dev)
        global_aa = matrix_to_axis_angle(rot)
        pose = torch.cat([global_aa[:, None], finger_pose], dim=1)  # (n, 16, 3)
        out = self.model(pose, betas)
        verts, kp3d = out.vertices, out.keypoints  # model output, no translation

        # 2. virtual camera and placement
        width, height = VIRTUAL_IMAGE
        fov = torch.deg2rad(cfg.fov_deg[0] + u(n) * (cfg.fov_deg[1] - cfg.fov_deg[0]))
        focal = (width / 2) / torch.tan(fov / 2)
        k_full = torch.zeros(n, 3, 3, device=dev)
        k_full[:, 0, 0] = k_full[:, 1, 1] = focal
        k_full[:, 0, 2], k_full[:, 1, 2], k_full[:, 2, 2] = width / 2, height / 2, 1.0
        lo, hi = (math.log(x) for x in cfg.distance_m)
        depth = torch.exp(lo + u(n) * (hi - lo))
        # hand centre in the central 70% of the frame, back-projected to its depth
        px = width * (0.15 + 0.7 * u(n))
        py = height * (0.15 + 0.7 * u(n))
        centre = torch.stack(
            [(px - width / 2) / focal * depth, (py - height / 2) / focal * depth, depth], dim=1
        )
        transl = centre - verts.mean(dim=1)
        verts_cam = verts + transl[:, None]
        # forearm: rigid with the root, bent at the wrist by up to ~35 deg, not part of the hand
        bend = torch.randn(n, 3, generator=g, device=dev) * torch.tensor(
            [0.1, 0.3, 0.35], device=dev
        )
        wrist = self.rest_joints[0]
        arm = (self.arm_verts - wrist) @ axis_angle_to_matrix(bend).transpose(1, 2)  # (n, A, 3)
        arm_cam = arm @ rot.transpose(1, 2) + out.joints[:, :1] + transl[:, None]
        show_arm = u(n) < 0.85
        kp3d_cam = kp3d + transl[:, None]

        # 3. crop as inference would: tight box of the hand -> jittered square crop
        uv = project_points(verts_cam, k_full)
        box = torch.cat([uv.amin(dim=1), uv.amax(dim=1)], dim=1)
        scale = cfg.crop_scale_jitter[0] + u(n) * (
            cfg.crop_scale_jitter[1] - cfg.crop_scale_jitter[0]
        )
        crop = square_crop(box, CROP_SCALE * scale)
        crop[:, :2] += (u(n, 2) * 2 - 1) * cfg.crop_shift * crop[:, 2:]
        k_crop = crop_intrinsics(k_full, crop, size)

        # left hands: mirror the whole configuration through the camera's x = 0 plane
        left = u(n) < cfg.left_fraction
        transl = torch.where(left[:, None], mirror_points(transl), transl)
        verts_cam = torch.where(left[:, None, None], mirror_points(verts_cam), verts_cam)
        kp3d_cam = torch.where(left[:, None, None], mirror_points(kp3d_cam), kp3d_cam)
        arm_cam = torch.where(left[:, None, None], mirror_points(arm_cam), arm_cam)
        kp3d_model = torch.where(left[:, None, None], mirror_points(kp3d), kp3d)
        pose = torch.where(left[:, None, None], mirror_pose(pose), pose)
        # the mirrored scene seen by the mirrored camera: principal points reflect about x = 0
        k_full = torch.where(left[:, None, None], _mirror_k(k_full, width), k_full)
        k_crop = torch.where(left[:, None, None], _mirror_k(k_crop, size), k_crop)
        crop[:, 0] = torch.where(left, width - crop[:, 0], crop[:, 0])

        # 4. render the hand and forearm together (a hidden forearm is pushed behind the camera)
        arm_cam = torch.where(show_arm[:, None, None], arm_cam, arm_cam * 0 - 1.0)
        scene = torch.cat([verts_cam, arm_cam], dim=1)
        pix = project_points(scene, k_crop)
        frags = rasterize(torch.cat([pix, scene[..., 2:]], dim=-1), self.scene_faces, size, size)
        albedo = sample_skin(
            n, g, self.rest_verts, self.palm_weight, self.nail_mask, self.redness, dev, cfg.split
        )
        # the forearm: the back-of-hand skin colour, or a sleeve of a random colour
        skin = albedo[:, self.palm_weight < 0.05].mean(dim=1)
        sleeve = torch.rand(n, 3, generator=g, device=dev) * (0.2 + 0.8 * u(n, 1))
        arm_colour = torch.where(u(n, 1) < 0.4, sleeve, skin)
        albedo = torch.cat([albedo, arm_colour[:, None].expand(n, len(self.arm_verts), 3)], 1)
        lights, ambient, specular = sample_lights(n, g, dev)
        rgb = shade(
            frags, scene, self.scene_faces, albedo, lights, ambient=ambient, specular=specular
        )
        # texture noise on the skin (pores, hair, shading irregularities)
        rgb = rgb * (1 + 0.04 * torch.randn(rgb.shape, generator=g, device=dev))
        if cfg.split == "test":
            background = test_backgrounds(n, g, size, dev)
        else:
            background = procedural_backgrounds(n, g, size, dev)
        if self.user_backgrounds is not None:
            use = u(n) < cfg.user_background_fraction
            if use.any():
                user = self.user_backgrounds.sample(int(use.sum()), g, size, dev)
                background[use] = user
        # the hand's own full silhouette (what the silhouette loss renders); the forearm and
        # occluders only hide parts of it, which `mask_visible` records
        hand_frags = rasterize(
            torch.cat([pix[:, : len(self.rest_verts)], verts_cam[..., 2:]], dim=-1),
            self.faces,
            size,
            size,
        )
        mask = hand_frags.mask
        hand_seen = frags.mask & (frags.face_idx < len(self.faces))
        img = composite(rgb, frags.mask, background.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        occ_rgb, occ_alpha = occluders(n, g, size, mask, dev, cfg.occluder_prob)
        img = img * (1 - occ_alpha) + occ_rgb * occ_alpha
        if cfg.camera_effects:
            img = camera_effects(img.clamp(0, 1), g)

        # 5. labels
        kp2d = project_points(kp3d_cam, k_crop)
        occluded = self._self_occluded(frags.depth, kp2d, kp3d_cam[..., 2], occ_alpha[:, 0])
        from backend.network.camera import fit_weak_perspective, pixels_to_normalized

        cam_weak = fit_weak_perspective(kp3d_model, pixels_to_normalized(kp2d, size))
        return {
            "image": img.clamp(0, 1),
            "mask": mask.float(),
            "mask_visible": (hand_seen.float() * (1 - occ_alpha[:, 0])).gt(0.5).float(),
            "keypoints2d": kp2d,
            "keypoints2d_vis": torch.ones(n, 21, device=dev),
            "keypoints_occluded": occluded.float(),
            "keypoints3d": kp3d_cam,
            "vertices": verts_cam,
            "pose": pose,
            "betas": betas,
            "transl": transl,
            "cam_weak": cam_weak,
            "K": k_crop,
            "K_full": k_full,
            "crop": crop,
            "box_xyxy": crop_to_box(crop),
            "side": left.long(),  # 0 right, 1 left
            "has_3d": torch.ones(n, device=dev),
            "has_mask": torch.ones(n, device=dev),
            "has_mano": torch.ones(n, device=dev),
        }

    @staticmethod
    def _self_occluded(
        depth: Tensor, kp2d: Tensor, kp_depth: Tensor, occ_alpha: Tensor, tolerance_m: float = 0.015
    ) -> Tensor:
        """(n, 21) bool: the keypoint's pixel shows a surface more than `tolerance_m` nearer than
        the keypoint (joints sit ~1 cm under the skin), or an occluder covers it."""
        n, h, w = depth.shape
        col = kp2d[..., 0].floor().long().clamp(0, w - 1)
        row = kp2d[..., 1].floor().long().clamp(0, h - 1)
        idx = torch.arange(n, device=depth.device)[:, None]
        surface = depth[idx, row, col]
        hidden = surface < kp_depth - tolerance_m
        return hidden | (occ_alpha[idx, row, col] > 0.5)


def _mirror_k(k: Tensor, width: float) -> Tensor:
    """K of the mirrored camera: the image flipped left-right, u -> width - u."""
    out = k.clone()
    out[:, 0, 2] = width - k[:, 0, 2]
    return out


LABEL_FIELDS = (
    "image",
    "mask",
    "mask_visible",
    "keypoints2d",
    "keypoints2d_vis",
    "keypoints_occluded",
    "keypoints3d",
    "vertices",
    "pose",
    "betas",
    "transl",
    "cam_weak",
    "K",
    "K_full",
    "crop",
    "box_xyxy",
    "side",
    "has_3d",
    "has_mask",
    "has_mano",
)
