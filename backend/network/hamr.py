"""HAMR (Zhang et al., ICCV 2019): a 256x256 right-hand crop -> heat-maps, MANO pose and shape, weak
camera, mesh, 3D and 2D keypoints, end to end differentiable.

images -> StackedHourglass -> heat-maps (B, 21, 64, 64) + features
[features, heat-maps] -> MeshEncoder -> feature vector -> IterativeRegressor -> 6D rotations,
betas, cam -> HandModel.forward_rotmat -> vertices, 21 keypoints -> weak_project -> 2D keypoints.

The hand layer (and the 6D -> matrix map in front of it) always runs in float32 outside autocast,
so the mesh stays exact under bf16 mixed precision. The regressor starts from a mean built from the
hand model itself: the palm facing the camera with the fingers up, the named `init_pose` finger
pose, zero betas and the camera that centres that mean hand in the crop, spanning `init_crop_fill`
of it.

Imports torch and the backend's hand model; never the training package or bpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backend.hand_model.keypoints import keypoint_layer, layer_keypoints
from backend.hand_model.model import HandModel
from backend.hand_model.poses import named_pose, palm_normal

from .camera import weak_project
from .config import HamrConfig
from .hourglass import StackedHourglass
from .regressor import (
    IterativeRegressor,
    MeshEncoder,
    RegressorParams,
    decode_params,
    encode_params,
)
from .rotation import axis_angle_to_matrix, matrix_to_axis_angle

# ImageNet statistics of RGB in [0, 1], applied inside the network.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Camera-frame directions of the mean hand (OpenCV axes): fingers up, palm facing the camera.
MEAN_FINGER_DIRECTION = (0.0, -1.0, 0.0)
MEAN_PALM_NORMAL = (0.0, 0.0, -1.0)


@dataclass
class HamrOutput:
    """Everything `HamrNet.forward` predicts for a batch of B crops (float32 unless noted)."""

    heatmaps: list[Tensor]  # per stack (B, 21, 64, 64), last = final; the 2D module's output
    pose: Tensor  # (B, 16, 3) axis-angle, MANO joint order, root = global orientation
    rotmats: Tensor  # (B, 16, 3, 3) the same rotations as matrices (what the hand layer used)
    betas: Tensor  # (B, 10)
    cam: Tensor  # (B, 3) weak camera (s, tx, ty) of the crop, camera.py
    vertices: Tensor | None  # (B, V, 3) metres, model rotated by the global orientation, no
    # translation; None from `head(mesh=False)`
    keypoints3d: Tensor  # (B, 21, 3) FreiHAND order, same frame as `vertices`
    keypoints2d: Tensor  # (B, 21, 2) normalised crop coordinates in [-1, 1], weak_project
    params_per_iteration: list[RegressorParams]  # every regressor iteration, last = final
    faces: Tensor  # (F, 3) long, the hand model's triangles (shared by the batch)


def _frame_rotation(src_a: Tensor, src_b: Tensor, dst_a: Tensor, dst_b: Tensor) -> Tensor:
    """(3, 3) rotation taking direction src_a to dst_a and the plane (src_a, src_b) to
    (dst_a, dst_b): R = D S^T with S, D the orthonormal frames built from each pair."""

    def frame(a: Tensor, b: Tensor) -> Tensor:
        e1 = a / a.norm()
        e2 = b - (b @ e1) * e1
        e2 = e2 / e2.norm()
        return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=1)  # (3, 3) columns

    return frame(dst_a, dst_b) @ frame(src_a, src_b).T


@torch.no_grad()
def mean_parameters(hand_model: HandModel, config: HamrConfig) -> Tensor:
    """(P,) the regressor's starting point for this hand model: rotations of the palm-to-camera
    global orientation and the `init_pose` fingers, zero betas, and the camera that centres the mean
    hand's 2D bounding box in the crop with its longer side spanning `init_crop_fill` of it."""
    rest = hand_model.rest_joints()[0].float().cpu()  # (16, 3) model frame
    pose = named_pose(config.init_pose, rest, hand_model.side)  # (16, 3) axis-angle
    rotmats = axis_angle_to_matrix(pose)  # (16, 3, 3)
    rotmats[0] = _frame_rotation(
        rest[4] - rest[0],  # wrist -> middle knuckle: the fingers' direction
        palm_normal(rest, hand_model.side),
        rest.new_tensor(MEAN_FINGER_DIRECTION),
        rest.new_tensor(MEAN_PALM_NORMAL),
    )
    betas = rest.new_zeros(1, config.num_betas)
    model_device = hand_model.tip_vertex_ids.device
    hand = hand_model.forward_rotmat(rotmats[None].to(model_device), betas.to(model_device))
    xy = hand.vertices[0, :, :2].cpu()  # (V, 2) camera-frame x, y of the mean hand
    lo, hi = xy.amin(0), xy.amax(0)
    s = 2.0 * config.init_crop_fill / (hi - lo).max()  # normalised units per metre
    cam = torch.cat([s[None], -(lo + hi) / 2])[None]  # (1, 3) centre the box: u_n = s (x - c)
    return encode_params(rotmats[None], betas, cam)[0]


class HamrNet(nn.Module):
    """The HAMR network for one hand side (the backend runs it on right-hand crops)."""

    def __init__(
        self,
        config: HamrConfig,
        side: str = "right",
        *,
        mano_dir: str | os.PathLike | None = None,
    ) -> None:
        """Builds the network and its own `HandModel(side, config.hand_model)`; `mano_dir` only
        matters for the official MANO source (defaults to $HAMR_MANO_DIR)."""
        super().__init__()
        self.config = config
        self.side = side
        self.hand_model = HandModel(side, source=config.hand_model, mano_dir=mano_dir)
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False
        )
        self.hourglass = StackedHourglass(
            config.num_keypoints,
            config.stem_widths,
            config.hourglass_features,
            config.num_stacks,
            config.hourglass_depth,
            config.hourglass_blocks,
        )
        self.encoder = MeshEncoder(
            config.hourglass_features + config.num_keypoints,
            config.encoder_widths,
            config.encoder_blocks,
        )
        self.regressor = IterativeRegressor(
            config.feature_dim,
            mean_parameters(self.hand_model, config),
            config.regressor_hidden,
            config.regressor_iterations,
            config.dropout,
        )

    def forward(self, images: Tensor) -> HamrOutput:
        """images (B, 3, S, S) RGB in [0, 1], S = config.input_size -> HamrOutput."""
        size = self.config.input_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {images.shape}")
        return self.head(*self.backbone(images))

    def backbone(self, images: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """images (B, 3, S, S) -> (each stack's heat-maps (B, K, S/4, S/4), the mesh encoder's
        feature (B, D)): the convolutional part, which `backend.network.runner` traces and
        freezes for inference (tensors in, tensors out, no shape-dependent Python)."""
        x = (images - self.pixel_mean) / self.pixel_std  # (B, 3, S, S)
        # channels-last convolutions are ~15 % faster on CPU (oneDNN) and suit tensor cores
        x = x.contiguous(memory_format=torch.channels_last)
        heatmaps, features = self.hourglass(x)  # K x (B, 21, S/4, S/4), (B, F, S/4, S/4)
        # HAMR Sec. 3: the mesh regressor reads the 2D module's features and its heat-maps
        feature = self.encoder(torch.cat([features, heatmaps[-1]], dim=1))  # (B, D)
        return tuple(heatmaps), feature

    def head(
        self,
        heatmaps: tuple[Tensor, ...],
        feature: Tensor,
        params: list[Tensor] | tuple[Tensor, ...] | None = None,
        mesh: bool = True,
    ) -> HamrOutput:
        """`backbone`'s output -> HamrOutput: the iterative regression of MANO pose, shape and
        camera, then the MANO layer and the weak projection. params: the regressor's output for
        `feature` when it ran already (the ONNX Runtime graph of `backend.network.runner`
        holds it). mesh=False: the 21 keypoints from the hand model's keypoint layer
        (`backend.hand_model.keypoints`, the same numbers to float rounding), no vertices
        (None) and only the final iteration decoded (`params_per_iteration` holds that one),
        for callers that only read the final parameters and keypoints (the photo path)."""
        if params is None:
            params = self.regressor(feature)  # iterations x (B, P) float32

        with torch.autocast(feature.device.type, enabled=False):
            decoded = params if mesh else params[-1:]
            per_iteration = [decode_params(p.float()) for p in decoded]
            final = per_iteration[-1]
            if mesh:
                hand = self.hand_model.forward_rotmat(final.rotmats, final.betas)  # (B, V, 3), ...
                vertices, keypoints3d = hand.vertices, hand.keypoints
            else:
                layer = keypoint_layer(self.hand_model)
                vertices, keypoints3d = None, layer_keypoints(layer, final.rotmats, final.betas)
            keypoints2d = weak_project(keypoints3d, final.cam)  # (B, 21, 2)
            pose = matrix_to_axis_angle(final.rotmats)  # (B, 16, 3)
        return HamrOutput(
            heatmaps=[h.float() for h in heatmaps],
            pose=pose,
            rotmats=final.rotmats,
            betas=final.betas,
            cam=final.cam,
            vertices=vertices,
            keypoints3d=keypoints3d,
            keypoints2d=keypoints2d,
            params_per_iteration=per_iteration,
            faces=self.hand_model.faces_tensor,
        )
