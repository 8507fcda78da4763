"""The HAMR network's configuration: one typed dataclass, saved as JSON inside every checkpoint.

`HamrConfig.paper()` is the size of Zhang et al. (ICCV 2019): a 2-stack, 256-feature hourglass
with 64x64 heat-maps and 3 regressor iterations. `HamrConfig.light()` (the default) is a smaller
network that runs at interactive rates on a laptop CPU. `to_dict` / `from_dict` round-trip through
JSON; `from_dict` is strict (unknown or missing keys, wrong types and invalid values raise
ValueError), so a checkpoint never silently rebuilds a different network.

Imports the standard library and the hand model's names (sources, named poses) only; never the
training package or bpy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from backend.hand_model.constants import NUM_BETAS, NUM_KEYPOINTS
from backend.hand_model.model import SOURCES
from backend.hand_model.poses import NAMED_POSES

ROTATION_REPRESENTATIONS = ("6d",)


@dataclass(frozen=True)
class HamrConfig:
    # --- input and 2D pose module (stacked hourglass, Newell et al. 2016)
    input_size: int = 256  # side of the square RGB crop, pixels
    heatmap_size: int = 64  # side of the heat-maps; the hourglass runs at input_size / 4
    num_keypoints: int = 21  # heat-map channels, FreiHAND/OpenPose keypoint order
    stem_widths: tuple[int, int] = (16, 32)  # channels of the stem's 7x7 stride-2 conv, residual
    num_stacks: int = 1  # hourglasses in sequence, each with its own heat-map head
    hourglass_depth: int = 4  # down-samplings inside one hourglass (64 -> 4 pixels at depth 4)
    hourglass_features: int = 96  # channels inside the hourglass (the paper: 256)
    hourglass_blocks: int = 1  # residual blocks per hourglass branch and after each hourglass
    # --- mesh regression module (HAMR Sec. 3): encoder + iterative regressor (HMR)
    encoder_widths: tuple[int, ...] = (64, 96, 128, 128)  # one stride-2 stage each: 64 -> 4 px
    encoder_blocks: int = 1  # residual blocks per encoder stage (the first one strided)
    regressor_hidden: int = 512  # width of the two hidden FC layers (1024 in HMR and HAMR)
    regressor_iterations: int = 3  # iterative error feedback steps (HMR: 3)
    dropout: float = 0.5  # dropout after each hidden FC layer while training (HMR: 0.5)
    rotation: str = "6d"  # per-joint rotation representation the regressor predicts
    num_betas: int = NUM_BETAS  # shape coefficients (the hand models have 10)
    hand_model: str = "open"  # hand-model source the network is built on: "open" or "mano"
    # --- regressor initialisation (the buffer the first iteration starts from)
    init_pose: str = "relaxed"  # named finger pose (hand_model.poses) of the mean initialisation
    init_crop_fill: float = 0.8  # fraction of the crop side the mean hand spans (sets mean s)

    def __post_init__(self) -> None:
        problems = []
        if self.input_size % 4 or self.heatmap_size != self.input_size // 4:
            problems.append(
                f"heatmap_size must be input_size / 4 (the hourglass stride), got "
                f"{self.heatmap_size} for input_size {self.input_size}"
            )
        if self.num_keypoints != NUM_KEYPOINTS:
            problems.append(f"num_keypoints must be {NUM_KEYPOINTS}, got {self.num_keypoints}")
        if self.num_betas != NUM_BETAS:
            problems.append(f"num_betas must be {NUM_BETAS}, got {self.num_betas}")
        if len(self.stem_widths) != 2 or min(self.stem_widths) < 2:
            problems.append(f"stem_widths must be two widths >= 2, got {self.stem_widths}")
        if self.num_stacks < 1 or self.hourglass_blocks < 1 or self.encoder_blocks < 1:
            problems.append("num_stacks, hourglass_blocks and encoder_blocks must be >= 1")
        if self.hourglass_depth < 1 or self.heatmap_size % 2**self.hourglass_depth:
            problems.append(
                f"heatmap_size {self.heatmap_size} must be divisible by 2**hourglass_depth "
                f"({self.hourglass_depth})"
            )
        if self.hourglass_features < 2 or self.hourglass_features % 2:
            problems.append(f"hourglass_features must be even, got {self.hourglass_features}")
        if not self.encoder_widths or self.heatmap_size % 2 ** len(self.encoder_widths):
            problems.append(
                f"encoder_widths needs 1..log2(heatmap_size) stages, got {self.encoder_widths}"
            )
        if any(w < 2 or w % 2 for w in self.encoder_widths):
            problems.append(f"encoder_widths must be even, got {self.encoder_widths}")
        if self.regressor_hidden < 1 or self.regressor_iterations < 1:
            problems.append("regressor_hidden and regressor_iterations must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rotation not in ROTATION_REPRESENTATIONS:
            problems.append(f"rotation must be one of {ROTATION_REPRESENTATIONS}")
        if self.hand_model not in SOURCES:
            problems.append(f"hand_model must be one of {SOURCES}, got {self.hand_model!r}")
        if self.init_pose not in NAMED_POSES:
            problems.append(f"init_pose must be one of {tuple(NAMED_POSES)}")
        if not 0.0 < self.init_crop_fill <= 2.0:
            problems.append(f"init_crop_fill must be in (0, 2], got {self.init_crop_fill}")
        if problems:
            raise ValueError("invalid HamrConfig: " + "; ".join(problems))

    @property
    def encoder_output_size(self) -> int:
        """Side in pixels of the encoder's last feature map (flattened into the feature vector)."""
        return self.heatmap_size // 2 ** len(self.encoder_widths)

    @property
    def feature_dim(self) -> int:
        """Length of the image feature vector the regressor reads."""
        return self.encoder_widths[-1] * self.encoder_output_size**2

    @classmethod
    def light(cls) -> HamrConfig:
        """The default: 1 stack of 96 features, a narrow stem, a small encoder and a 512-wide
        regressor; fast on a CPU."""
        return cls()

    @classmethod
    def paper(cls) -> HamrConfig:
        """Zhang et al. 2019: 2-stack hourglass with 256 features (Newell's stem 64 -> 128), 64x64
        heat-maps, a 4-stage encoder and HMR's 1024-wide regressor with 3 iterations."""
        return cls(
            stem_widths=(64, 128),
            num_stacks=2,
            hourglass_features=256,
            encoder_widths=(256, 256, 512, 512),
            regressor_hidden=1024,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HamrConfig:
        """Inverse of `to_dict`. Raises ValueError on unknown or missing keys, wrong types or
        invalid values."""
        defaults = cls()
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(
                "HamrConfig keys do not match: "
                + (f"unknown {unknown} " if unknown else "")
                + (f"missing {missing}" if missing else "")
            )
        values = {}
        for name in names:
            expected, value = type(getattr(defaults, name)), data[name]
            if expected is tuple and isinstance(value, list | tuple):
                value = tuple(value)
                ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            elif expected is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, expected) and not isinstance(value, bool)
            if not ok:
                raise ValueError(
                    f"HamrConfig.{name} must be {expected.__name__}, got {data[name]!r}"
                )
            values[name] = value
        return cls(**values)
