"""The loaded network: a checkpoint plus both hands' models, turning 256-px crops into outputs.

`HandNetwork` is what the detectors and the pipelines share: `crop_for` cuts a hand box out of a
photo as training does (`backend.crop`, left hands mirrored into right ones), `run_crops` runs
the network on a batch of crops, `heatmap_confidence` says how sure it is of each. The right
hand's model is the network's own, the left one is built from the same source. Imports torch,
numpy and the backend's hand model, crop geometry and network.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from backend.crop import CROP_SIZE, crop_image, square_crop
from backend.errors import OptionError
from backend.hand_model.model import HandModel

from .checkpoint import load_checkpoint
from .hamr import HamrOutput

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "hamr_light.safetensors"
)


class _Backbone(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor):
        return self.net.backbone(images)


class _BackboneAndRegressor(_Backbone):
    def forward(self, images: torch.Tensor):
        heatmaps, feature = self.net.backbone(images)
        return (*heatmaps, feature, *self.net.regressor(feature))


@torch.no_grad()
def frozen_backbone(model: torch.nn.Module):
    """The network's convolutional part (`HamrNet.backbone`) traced and frozen for inference:
    TorchScript folds each conv -> BN pair into one conv and runs without Python's per-module
    overhead: on one thread 16-17 ms of CPU time per crop against 21-23 ms eager (a shared
    2-core machine); the same outputs to float rounding (tests/test_network.py). Traced once
    on one crop (~0.7 s, so it pays for itself in a server or a long clip, not in one photo);
    any batch size runs (the graph has no shape-dependent branches). Call it under
    `torch.jit.optimized_execution(False)`: the graph as frozen, the same result from the first
    call on (the profiling executor's first calls differ and are slower). TorchScript is
    deprecated in torch 2.13 (its warnings are silenced here); where it fails or is gone, the
    eager `model.backbone` is returned instead."""
    size = model.config.input_size
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, size, size, device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(_Backbone(model).eval(), example))
    except (AttributeError, RuntimeError):  # no TorchScript in this torch
        return model.backbone


class OnnxBackbone:
    """The network's convolutional part (`HamrNet.backbone`) and its regressor exported to ONNX
    and run by ONNX Runtime's CPU kernels: a crop's whole pass (with `HamrNet.head`) 15.0 ms on
    one thread against 19.3 ms with `frozen_backbone` and 24.8 eager (`benchmarks.inference`'s
    `cpu_runtimes`, this 2-core machine); the same outputs to float rounding
    (tests/test_network.py), the same from the first call, any batch size. Built in ~0.4 s
    (export in memory, no file). `make setup` installs onnxruntime and onnx (torch's exporter
    needs it); `build` returns None without them, on a GPU device, or where the export fails,
    and `HandNetwork` falls back to `frozen_backbone`. threads: ONNX Runtime's intra-op threads
    (None: torch's own count, `torch.get_num_threads()`)."""

    def __init__(self, session, stacks: int) -> None:
        self.session = session
        self.stacks = stacks  # heat-map outputs, one per hourglass stack

    @classmethod
    @torch.no_grad()
    def build(cls, model: torch.nn.Module, threads: int | None = None) -> OnnxBackbone | None:
        if next(model.parameters()).device.type != "cpu":
            return None
        try:
            import onnx  # noqa: F401  (torch.onnx.export writes the graph with it)
            import onnxruntime as ort
        except ImportError:
            return None
        size = model.config.input_size
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _BackboneAndRegressor(model).eval(),
                    (torch.zeros(1, 3, size, size),),
                    buffer,
                    dynamo=False,
                    opset_version=17,
                    input_names=["images"],
                    dynamic_axes={"images": {0: "batch"}},
                )
        except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError):
            return None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings and below stay quiet
        # idle threads sleep instead of spinning: on 2 cores a spinning pool slows MediaPipe
        # and the fusion, which run between the network's calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                buffer.getvalue(), options, providers=["CPUExecutionProvider"]
            )
        except Exception:  # noqa: BLE001  (ONNX Runtime's own Fail/InvalidGraph types)
            return None  # the TorchScript form runs instead
        return cls(session, model.config.num_stacks)

    def __call__(self, images: torch.Tensor):
        """images (B, 3, S, S) float32 -> `HamrNet.backbone`'s (heat-maps, feature) and the
        regressor's parameters of each iteration: `HamrNet.head`'s arguments."""
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {"images": x})]
        stacks = self.stacks
        return tuple(outputs[:stacks]), outputs[stacks], outputs[stacks + 1 :]


class HandNetwork:
    """A loaded HAMR network plus both hand models; thread-safe for sequential use. frozen: run
    the convolutional part in its fastest inference form, ONNX Runtime on a CPU
    (`OnnxBackbone`), else traced and frozen (`frozen_backbone`); faster per crop, ~0.4-0.7 s
    more to load: what `hamr serve` and `hamr video` use. `backbone_kind` says which runs:
    "onnxruntime", "torchscript" or "eager"."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        mano_dir: str | os.PathLike | None = None,
        frozen: bool = False,
    ) -> None:
        self.checkpoint = Path(checkpoint or os.environ.get("HAMR_CHECKPOINT", DEFAULT_CHECKPOINT))
        if device == "cuda" and not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but no CUDA device is available")
        self.device = torch.device(device)
        self.model, self.info = load_checkpoint(self.checkpoint, self.device, mano_dir=mano_dir)
        self.model.eval()
        # the network's convolutional part: eager, or traced and frozen (`frozen_backbone`)
        self.backbone, self.backbone_kind = self.model.backbone, "eager"
        if frozen:
            onnx_backbone = OnnxBackbone.build(self.model)
            if onnx_backbone is not None:
                self.backbone, self.backbone_kind = onnx_backbone, "onnxruntime"
            else:
                self.backbone = frozen_backbone(self.model)
                if self.backbone is not self.model.backbone:
                    self.backbone_kind = "torchscript"
        source = self.model.config.hand_model
        self.hands = {
            "right": self.model.hand_model,
            "left": HandModel("left", source=source, mano_dir=mano_dir).to(self.device),
        }
        self.hand_model_id = self.info["hand_model_id"]

    @torch.no_grad()
    def run_crops(self, crops: np.ndarray, mesh: bool = True) -> HamrOutput:
        """crops (B, 256, 256, 3) uint8 right-hand crops -> HamrOutput (mesh=False: no vertices,
        `HamrNet.head`)."""
        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255
        with torch.jit.optimized_execution(False):
            return self.model.head(*self.backbone(x), mesh=mesh)

    @staticmethod
    def heatmap_confidence(output: HamrOutput) -> torch.Tensor:
        """(B,) mean over keypoints of the final heat-maps' peak value (about 1 when confident)."""
        return output.heatmaps[-1].flatten(2).amax(dim=2).mean(dim=1).clamp(0, 1)

    def crops_for(self, image: np.ndarray, box_xyxy, flip: bool) -> tuple[np.ndarray, torch.Tensor]:
        """The 256 crop of a box (mirrored when `flip`) and its (cx, cy, side)."""
        crop = square_crop(torch.tensor(box_xyxy, dtype=torch.float64))
        return crop_image(image, tuple(crop.tolist()), CROP_SIZE, flip=flip), crop
