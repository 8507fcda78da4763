"""Shared fixtures for the CLI, server and video tests.

- `checkpoint`: a tiny random network saved in the real checkpoint format (small widths, so a
  crop runs in well under a second on a shared CPU; its heat-map head is biased to 0.8 so scores
  are the size a trained network gives on a hand, and the detector and tracker keep their hands).
  The behaviour tests must not depend on how well the shipped network happens to be trained;
  `tests/test_shipped_checkpoint.py` tests the shipped one itself;
- `predictor`: one `Predictor` on that checkpoint for the session;
- `xdg_env`: an environment whose XDG_* folders are fresh temporary ones (server uploads);
- `free_port()`: a free TCP port on 127.0.0.1; `check_prediction`, `check_camera_identity`: the
  checks of the prediction JSON contract (test modules import them from `conftest`);
- `hand_video`: a short synthetic clip (12 frames, 256x256, 10 fps, mp4v) of the open hand
  model rendered with backend.render moving over a background, with its true hand boxes;
- `sample_photo`, `sample_box`: the InterHand2.6M sample and its annotated hand box (skipped
  without ../shared/samples);
- `write_clip`, `with_display_matrix`: an mp4v clip of given frames, and a copy of a clip tagged
  to be shown turned (as phones tag portrait clips).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# The CPU is shared (2 cores, other jobs): torch's default intra-op threads then spin-wait on
# each other and a small forward pass takes ~50x longer than on one thread. Pin one thread here
# and in every subprocess the tests start (`xdg_env`).
torch.set_num_threads(1)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
SAMPLE_PHOTO = SAMPLES / "interhand2.6m" / "image29590.jpg"
# annotations_derived.json: bbox_xywh [32.6, 116.9, 183.0, 117.8] of image29590 (a left hand)
SAMPLE_BOX = (32.6, 116.9, 215.6, 234.7)


def pytest_configure(config: pytest.Config) -> None:
    # starlette's TestClient asks for httpx2 when plain httpx is installed; httpx works.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.hand_model.model import hand_model_id
    from backend.network import HamrConfig, HamrNet
    from backend.network.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = dataclasses.replace(
        HamrConfig.light(),
        stem_widths=(8, 16),
        hourglass_features=16,
        hourglass_depth=2,
        encoder_widths=(16, 16, 16, 16),
        regressor_hidden=64,
    )
    net = HamrNet(config)
    with torch.no_grad():
        head = net.hourglass.heads[-1]
        head.bias.fill_(0.8)
        torch.nn.init.normal_(head.weight, std=0.02)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    save_checkpoint(path, net, hand_model_id=hand_model_id("open"), metadata={"tests": True})
    return path


@pytest.fixture(scope="session")
def predictor(checkpoint: Path):
    from backend.pipeline.photo import Predictor

    return Predictor(checkpoint)


@pytest.fixture
def xdg_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        env[name] = str(folder)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("HAMR_TOKEN", None)
    env.pop("HAMR_CHECKPOINT", None)
    return env


def check_camera_identity(hand: dict) -> None:
    """keypoints2d is the projection of joints3d_cam with K, within 1e-3 px (DESIGN.md)."""
    K = np.asarray(hand["camera"]["K"])
    joints = np.asarray(hand["joints3d_cam"])
    assert joints.shape == (21, 3) and (joints[:, 2] > 0).all()
    uvw = joints @ K.T
    np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], hand["keypoints2d"], atol=1e-3)


def check_prediction(pred: dict, width: int, height: int, hands: int) -> None:
    """A `hamr.prediction/1` dict with `hands` hands for a width x height image."""
    assert pred["schema"] == "hamr.prediction/1"
    assert pred["image"] == {"width": width, "height": height}
    assert set(pred["model"]) == {"checkpoint", "hand_model"}
    assert pred["detector"] in (None, "mediapipe", "hamr")  # None: the boxes were given
    assert len(pred["hands"]) == hands
    for hand in pred["hands"]:
        assert hand["side"] in ("left", "right") and 0 <= hand["score"] <= 1
        assert np.asarray(hand["pose_axis_angle"]).shape == (16, 3)
        assert len(hand["betas"]) == 10 and len(hand["cam_weak"]) == 3
        assert len(hand["box_xyxy"]) == 4 and len(hand["transl"]) == 3
        check_camera_identity(hand)
        fit = hand["fit"]  # None, or the fit to MediaPipe's landmarks
        assert fit is None or fit["rms_px_after"] <= fit["rms_px_before"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sample_box() -> tuple[float, float, float, float]:
    return SAMPLE_BOX


@pytest.fixture(scope="session")
def sample_photo() -> Path:
    if not SAMPLE_PHOTO.is_file():
        pytest.skip(f"sample photos not available ({SAMPLES})")
    return SAMPLE_PHOTO


@dataclass
class HandVideo:
    path: Path
    fps: float
    boxes: list[tuple[float, float, float, float]]  # true hand box per frame (image pixels)

    @property
    def num_frames(self) -> int:
        return len(self.boxes)


def render_hand_frames(
    num_frames: int = 12, size: int = 256
) -> tuple[list[np.ndarray], list[tuple[float, ...]]]:
    """Frames of the open hand model (palm to the camera, fingers up, a relaxed pose) drifting
    right and turning slowly over a textured background, and the hand's box in each."""
    from scipy.spatial.transform import Rotation

    from backend.camera import default_focal, intrinsics
    from backend.hand_model.model import HandModel
    from backend.hand_model.poses import named_pose
    from backend.render import render_overlay

    model = HandModel("right")
    pose = named_pose("relaxed", model.rest_joints()[0], "right").float().clone()  # (16, 3)
    pose[0] = 0  # global orientation is applied below
    verts = model(pose[None]).vertices[0].detach().double().numpy()  # (V, 3) model frame
    # model axes: x distal, y dorsal, z ulnar -> camera: fingers up (-y), back of the hand away
    base = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    K = intrinsics(size, size, default_focal(size, size))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    background = np.stack(
        [90 + 60 * np.sin(xx / 23.0), 110 + 40 * np.cos(yy / 31.0), 140 + 0 * xx], axis=-1
    )
    background = (background + rng.normal(0, 6, background.shape)).clip(0, 255).astype(np.uint8)
    frames, boxes = [], []
    for i in range(num_frames):
        yaw = Rotation.from_euler("y", math.radians(-15 + 2 * i)).as_matrix()
        centre = verts.mean(0)
        cam = (verts - centre) @ (yaw @ base).T + np.array([-0.05 + 0.006 * i, 0.0, 0.45])
        uv = cam @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        frames.append(render_overlay(background, cam, model.faces, K, alpha=1.0, supersample=1))
        boxes.append((*uv.min(0).tolist(), *uv.max(0).tolist()))
    return frames, boxes


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """(H, W, 3) uint8 RGB frames -> an mp4v clip at `path`."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def with_display_matrix(src: Path, dst: Path, quarter_turns_cw: int) -> Path:
    """A copy of an MP4 whose first track header ('tkhd' box, ISO 14496-12 8.3.2) carries the
    display matrix that turns the stored frames `quarter_turns_cw` quarter turns clockwise for
    display, as phones tag the clips they record held upright."""
    import struct

    data = src.read_bytes()
    at = data.find(b"tkhd")
    assert at > 0, "no track header"
    version = data[at + 4]
    # after the box type: version+flags, times, track id, reserved, duration (v0 32-bit, v1
    # 64-bit), 8 reserved, layer, alternate group, volume, 2 reserved: then the 3x3 matrix
    start = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    a, b, c, d = {0: (1, 0, 0, 1), 1: (0, 1, -1, 0), 2: (-1, 0, 0, -1), 3: (0, -1, 1, 0)}[
        quarter_turns_cw % 4
    ]
    matrix = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    dst.write_bytes(data[:start] + matrix + data[start + 36 :])
    return dst


@pytest.fixture(scope="session")
def hand_video(tmp_path_factory: pytest.TempPathFactory) -> HandVideo:
    frames, boxes = render_hand_frames()
    path = write_clip(tmp_path_factory.mktemp("video") / "hand.mp4", frames, 10.0)
    return HandVideo(path, 10.0, boxes)


# ----------------------------------------------------------------------------- HTTP servers
# (shared by test_server.py and test_service_*.py; `http` takes the requesting module's `server`)


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import os

    env = dict(os.environ)
    root = tmp_path_factory.mktemp("xdg")
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        (root / name).mkdir()
        env[name] = str(root / name)
    env["OMP_NUM_THREADS"] = "1"  # see conftest: the CPU is shared
    env.pop("HAMR_TOKEN", None)
    return env


@pytest.fixture(scope="module")
def http(server) -> Iterator:
    """An httpx client of the module's `server` fixture (test_server.Server)."""
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def photo_bytes(sample_photo: Path) -> bytes:
    return sample_photo.read_bytes()
