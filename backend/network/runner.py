"""The loaded network: a checkpoint plus both hands' models, turning 256-px crops into outputs.

`HandNetwork` is what the detectors and the pipelines share: `crop_for` cuts a hand box out of a
photo as training does (`backend.crop`, left hands mirrored into right ones), `run_crops` runs
the network on a batch of crops, `heatmap_confidence` says how sure it is of each. The right
hand's model is the network's own, the left one is built from the same source. Imports torch,
numpy and the backend's hand model, crop geometry and network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from backend.crop import CROP_SIZE, crop_image, square_crop
from backend.errors import OptionError
from backend.hand_model.model import HandModel

from .checkpoint import load_checkpoint
from .hamr import HamrOutput
from .hourglass import fold_batchnorm

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "hamr_light.safetensors"
)


class HandNetwork:
    """A loaded HAMR network plus both hand models; thread-safe for sequential use."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        mano_dir: str | os.PathLike | None = None,
    ) -> None:
        self.checkpoint = Path(checkpoint or os.environ.get("HAMR_CHECKPOINT", DEFAULT_CHECKPOINT))
        if device == "cuda" and not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but no CUDA device is available")
        self.device = torch.device(device)
        self.model, self.info = load_checkpoint(self.checkpoint, self.device, mano_dir=mano_dir)
        self.model = fold_batchnorm(self.model.eval())  # inference only: conv + BN as one conv
        source = self.model.config.hand_model
        self.hands = {
            "right": self.model.hand_model,
            "left": HandModel("left", source=source, mano_dir=mano_dir).to(self.device),
        }
        self.hand_model_id = self.info["hand_model_id"]

    @torch.no_grad()
    def run_crops(self, crops: np.ndarray) -> HamrOutput:
        """crops (B, 256, 256, 3) uint8 right-hand crops -> HamrOutput."""
        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255
        return self.model(x)

    @staticmethod
    def heatmap_confidence(output: HamrOutput) -> torch.Tensor:
        """(B,) mean over keypoints of the final heat-maps' peak value (about 1 when confident)."""
        return output.heatmaps[-1].flatten(2).amax(dim=2).mean(dim=1).clamp(0, 1)

    def crops_for(self, image: np.ndarray, box_xyxy, flip: bool) -> tuple[np.ndarray, torch.Tensor]:
        """The 256 crop of a box (mirrored when `flip`) and its (cx, cy, side)."""
        crop = square_crop(torch.tensor(box_xyxy, dtype=torch.float64))
        return crop_image(image, tuple(crop.tolist()), CROP_SIZE, flip=flip), crop
