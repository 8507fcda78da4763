"""The mesh regression module of HAMR: a convolutional encoder and HMR's iterative regressor.

The encoder reads the hourglass's last features concatenated with its last heat-maps (HAMR Sec. 3)
and reduces them with strided residual stages to a small map, flattened into the feature vector
(flattening keeps where things are, which the camera's translation needs). The regressor (HMR,
Kanazawa et al. 2018, "iterative error feedback") starts from a mean parameter vector and adds
`iterations` corrections, each predicted by two hidden FC layers from [feature, current params].

The parameter vector holds, in order: 16 joint rotations in 6D (96), betas (10) and the camera as
(log s, s tx, s ty) (3). The camera is regressed in that form because each entry is O(1) (s is ~8,
s t is the root's offset in normalised crop units) and exp keeps s positive; `decode_params` turns
it back into cam = (s, tx, ty).

Imports torch and the project's network modules only; never the training package or bpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backend.hand_model.constants import NUM_JOINTS

from .hourglass import Residual
from .rotation import matrix_to_rotation_6d, rotation_6d_to_matrix

ROT6D_DIM = NUM_JOINTS * 6  # 96


@dataclass
class RegressorParams:
    """One regressor iteration's prediction, decoded."""

    rotmats: Tensor  # (B, 16, 3, 3) per-joint rotations, MANO joint order, root first
    betas: Tensor  # (B, 10) shape coefficients
    cam: Tensor  # (B, 3) weak camera (s, tx, ty), see camera.py


def encode_params(rotmats: Tensor, betas: Tensor, cam: Tensor) -> Tensor:
    """rotmats (B, 16, 3, 3), betas (B, NB), cam (B, 3) = (s, tx, ty) -> (B, 96 + NB + 3)."""
    s = cam[:, :1]
    cam_raw = torch.cat([s.log(), s * cam[:, 1:]], dim=1)  # (B, 3) (log s, s tx, s ty)
    rot6d = matrix_to_rotation_6d(rotmats).flatten(1)  # (B, 96)
    return torch.cat([rot6d, betas, cam_raw], dim=1)


def decode_params(params: Tensor) -> RegressorParams:
    """(B, 96 + NB + 3) -> rotation matrices, betas and cam = (s, tx, ty); inverse of
    `encode_params`."""
    rot6d, rest = params[:, :ROT6D_DIM], params[:, ROT6D_DIM:]
    rotmats = rotation_6d_to_matrix(rot6d.unflatten(1, (NUM_JOINTS, 6)))  # (B, 16, 3, 3)
    betas, cam_raw = rest[:, :-3], rest[:, -3:]
    s = cam_raw[:, :1].exp()  # (B, 1)
    cam = torch.cat([s, cam_raw[:, 1:] / s], dim=1)  # (B, 3)
    return RegressorParams(rotmats, betas, cam)


class MeshEncoder(nn.Module):
    """(B, C_in, H, H) -> (B, widths[-1] * (H / 2**len(widths))**2) feature vector.

    One stage per width: a stride-2 residual block and `blocks - 1` more at that resolution; then
    BN-ReLU (the pre-activation blocks leave their output un-normalised) and flatten."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers.append(Residual(in_channels, width, stride=2))
            layers.extend(Residual(width, width) for _ in range(blocks - 1))
            in_channels = width
        layers += [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Flatten(1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class IterativeRegressor(nn.Module):
    """HMR's regressor: params_{k+1} = params_k + D([feature, params_k]), k < iterations, from the
    mean `mean_params` (a buffer saved with the weights, since the corrections are learnt
    relative to it)."""

    def __init__(
        self,
        feature_dim: int,
        mean_params: Tensor,
        hidden: int,
        iterations: int,
        dropout: float,
    ) -> None:
        super().__init__()
        n = mean_params.numel()
        self.iterations = iterations
        self.register_buffer("mean_params", mean_params.detach().clone().float())  # (P,)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim + n, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.decoder = nn.Linear(hidden, n)
        # HMR's small initial corrections: the first predictions stay near the mean
        nn.init.xavier_uniform_(self.decoder.weight, gain=0.01)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, features: Tensor) -> list[Tensor]:
        """features (B, D) -> list of `iterations` parameter vectors (B, P), float32, last final."""
        params = self.mean_params.expand(features.shape[0], -1)  # (B, P)
        out = []
        for _ in range(self.iterations):
            delta = self.decoder(self.mlp(torch.cat([features, params.to(features.dtype)], 1)))
            params = params + delta.float()  # accumulate in float32 under autocast too
            out.append(params)
        return out
