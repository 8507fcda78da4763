"""The 2D pose module: a stacked hourglass (Newell et al., ECCV 2016) predicting keypoint heat-maps.

Stem: 7x7 stride-2 conv -> residual -> 2x2 max-pool, taking a 256x256 crop to 64x64 features.
Each stack: a recursive hourglass (pool, residuals, nearest up-sampling, skip branches), residual
blocks, a 1x1 conv and a 1x1 heat-map head; between stacks the features and heat-maps are
remapped by 1x1 convs and added back to the stack's input (Newell's intermediate supervision).

`Residual` (the pre-activation bottleneck) is shared with the mesh encoder in `regressor.py`.
Imports torch only; never the training package or bpy.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Residual(nn.Module):
    """Pre-activation bottleneck (Newell et al. 2016, Fig. 4 left; He et al. 2016):
    BN-ReLU-conv1x1(C/2)-BN-ReLU-conv3x3(C/2, stride)-BN-ReLU-conv1x1(C) plus a skip connection
    (1x1 strided conv when the shape changes). (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 2
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride)
            if in_channels != out_channels or stride != 1
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        # the body starts with a (not in-place) BN, so its in-place ReLUs never touch x
        return self.skip(x) + self.body(x)


def residual_blocks(channels: int, count: int) -> nn.Sequential:
    """`count` shape-preserving residual blocks of `channels` channels."""
    return nn.Sequential(*(Residual(channels, channels) for _ in range(count)))


class Hourglass(nn.Module):
    """One hourglass of `depth` levels: out = up(x) + upsample(low(maxpool(x))), recursively
    (Newell et al. 2016, Fig. 3). (B, C, H, W) -> (B, C, H, W) with H, W divisible by 2**depth."""

    def __init__(self, depth: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.skip = residual_blocks(channels, blocks)
        self.down = residual_blocks(channels, blocks)
        self.inner = (
            Hourglass(depth - 1, channels, blocks)
            if depth > 1
            else residual_blocks(channels, blocks)
        )
        self.up = residual_blocks(channels, blocks)

    def forward(self, x: Tensor) -> Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))  # (B, C, H/2, W/2)
        return self.skip(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class StackedHourglass(nn.Module):
    """images (B, 3, S, S) normalised -> per-stack heat-maps and the last stack's features.

    stem_widths: channels after the 7x7 conv and after the stem's first residual; features:
    channels inside the hourglasses; stacks, depth, blocks: as in `HamrConfig`."""

    def __init__(
        self,
        num_keypoints: int,
        stem_widths: tuple[int, int],
        features: int,
        stacks: int,
        depth: int,
        blocks: int,
    ) -> None:
        super().__init__()
        w0, w1 = stem_widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 7, stride=2, padding=3, bias=False),  # (B, w0, S/2, S/2)
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            Residual(w0, w1),  # (B, w1, S/2, S/2)
            nn.MaxPool2d(2),  # (B, w1, S/4, S/4)
            Residual(w1, features),  # (B, F, S/4, S/4)
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, features, blocks) for _ in range(stacks))
        self.post = nn.ModuleList(
            nn.Sequential(
                residual_blocks(features, blocks),
                nn.Conv2d(features, features, 1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
            )
            for _ in range(stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(features, num_keypoints, 1) for _ in range(stacks))
        for head in self.heads:  # near-zero initial heat-maps, so the first MSE is the targets'
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        self.remap_features = nn.ModuleList(
            nn.Conv2d(features, features, 1) for _ in range(stacks - 1)
        )
        self.remap_heatmaps = nn.ModuleList(
            nn.Conv2d(num_keypoints, features, 1) for _ in range(stacks - 1)
        )

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """images (B, 3, S, S) -> (heat-maps: list of (B, K, S/4, S/4), one per stack; features
        (B, F, S/4, S/4) of the last stack, the input of its heat-map head)."""
        x = self.stem(images)  # (B, F, S/4, S/4)
        heatmaps = []
        stages = zip(self.hourglasses, self.post, self.heads, strict=True)
        for i, (hourglass, post, head) in enumerate(stages):
            features = post(hourglass(x))  # (B, F, S/4, S/4)
            heatmaps.append(head(features))  # (B, K, S/4, S/4)
            if i < len(self.remap_features):
                # Newell's merge: the next stack sees its input plus remapped features and heat-maps
                x = x + self.remap_features[i](features) + self.remap_heatmaps[i](heatmaps[-1])
        return heatmaps, features
