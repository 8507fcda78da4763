"""Shared machinery of the dataset readers: one annotated hand in a full image -> one training item.

Each reader (FreiHAND, RHD, STB, the sample sets) turns its own files into a `HandSample`: the full
image, the 21 keypoints in the project's order (backend/hand_model/constants.py) in the image's
pixels, the image's pinhole K when the dataset has one, 3D keypoints and masks when known, and the
side. `HandCropDataset.__getitem__` then crops it exactly as inference does (backend/crop.py) and
packs the item contract shared by every reader (`ITEM_KEYS`):

    image (3, 256, 256) float [0, 1] RGB crop      mask, mask_visible (256, 256) float 0/1
    keypoints2d (21, 2) crop pixels                 keypoints2d_vis (21,) 1 where annotated
    keypoints3d (21, 3) camera frame, metres        keypoints3d_valid (21,) 1 where 3D is known
    pose (16, 3), betas (10,), cam_weak (3,) zeros  (MANO fits of other datasets are not used)
    K (3, 3) the crop's intrinsics                  crop (3,) (cx, cy, side), box_xyxy (4,) in
    side () long, 0 right / 1 left                  the ORIGINAL image; index () long
    has_3d, has_mask, has_mano (always 0), has_K () float flags

`keypoints3d_valid` extends the brief's contract: STB's keypoint 0 is the palm centre, not the
wrist, and InterHand marks joints invalid one by one, so a per-keypoint 3D mask is needed; it is
`has_3d` broadcast everywhere else. Items are never flipped here: `side` is the hand's own side and
training flips left hands later with one shared function. Readers may add evaluation-only keys
(FreiHAND's `vertices_gt`), which `MixedDataset` drops.

The crop: the tight box of the annotated 2D keypoints, grown on every side by BOX_MARGIN (10 %) of
its longer side because keypoints are joint centres and fingers have thickness (and to at least
MIN_BOX_SIDE pixels on each axis, so a degenerate annotation still gives a finite crop), then
`square_crop` (CROP_SCALE x the longer side) resampled to CROP_SIZE. Training may jitter the crop's
scale and centre (`CropJitter`), deterministically per (seed, epoch, index); evaluation does not.
Readers given a `RealAugment` (training on teacher-labelled real hands, train.py's `real_augment`)
also turn the crop in-plane and jitter its colours, from the same generator after the jitter's
draws: the crop turns by theta about its centre (`backend.crop.rotate_in_crop`: crop pixels
u' = c + R(theta) (u - c)), keypoints2d with it, keypoints3d by Rz(theta) about the camera's z
axis (`backend.crop.rotation_z`, so their projection turns with the 2D), the MANO global
orientation pose[0] becomes Rz R (the other joints stay) and K becomes the turned crop's
projection (`crop_intrinsics` with the angle); `crop` and `box_xyxy` stay the unturned ones.
Keypoints turned out of the crop stay as labels.

Pixels follow DESIGN.md (pixel (row i, col j) has its centre at (j + 0.5, i + 0.5)); datasets' own
K matrices are used as given. Where a dataset has no K, `default_intrinsics` stands in: focal
DEFAULT_FOCAL_FACTOR x max(W, H), principal point at the image centre, and `has_K` = 0.
Imports torch, numpy, PIL and backend only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from backend.crop import (
    CROP_SIZE,
    crop_image,
    crop_intrinsics,
    points_to_crop,
    rotation_z,
    square_crop,
)
from backend.hand_model.constants import NUM_BETAS, NUM_JOINTS, NUM_KEYPOINTS
from backend.network.rotation import axis_angle_to_matrix, matrix_to_axis_angle

BOX_MARGIN = 0.1  # keypoint box growth on each side, fraction of its longer side (finger thickness)
MIN_BOX_SIDE = 16.0  # pixels: the grown keypoint box is at least this wide and tall
DEFAULT_FOCAL_FACTOR = 1.2  # focal length of `default_intrinsics`, in units of max(W, H)

# The keys of every reader's item (see the module docstring), in a fixed order.
ITEM_KEYS: tuple[str, ...] = (
    "image", "mask", "mask_visible", "keypoints2d", "keypoints2d_vis", "keypoints3d",
    "keypoints3d_valid", "pose", "betas", "cam_weak", "K", "crop", "box_xyxy", "side",
    "has_3d", "has_mask", "has_mano", "has_K", "index",
)  # fmt: skip


@dataclass(frozen=True)
class CropJitter:
    """Training-time perturbation of the crop, like a detector's imprecise box."""

    scale: tuple[float, float] = (0.9, 1.15)  # crop side multiplied by U(scale[0], scale[1])
    shift: float = 0.08  # centre moved by U(-shift, shift) x crop side, on each axis


@dataclass(frozen=True)
class RealAugment:
    """Training-time rotation and colour changes of real crops (module docstring). Every draw is
    made on every item (fixed generator use), whether or not its effect applies."""

    rotation: float = 30.0  # degrees: the crop turns by U(-rotation, rotation)
    brightness: float = 0.25  # pixels x U(1 - b, 1 + b)
    contrast: float = 0.25  # distance from the crop's mean grey x U(1 - c, 1 + c)
    saturation: float = 0.25  # distance from each pixel's grey x U(1 - s, 1 + s)
    hue: float = 0.04  # hue turned by U(-hue, hue) of a full turn (in YIQ's chroma plane)
    grayscale_p: float = 0.1  # probability of a grey crop (after the changes above)
    blur_p: float = 0.2  # probability of a Gaussian blur, sigma U(blur_sigma)
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # crop pixels


@dataclass
class HandSample:
    """One hand in one full image, before cropping; 2D in image pixels, project keypoint order."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    keypoints2d: np.ndarray  # (21, 2) image pixels
    keypoints2d_vis: np.ndarray  # (21,) 1 where the 2D keypoint is annotated, else 0
    side: int  # 0 right, 1 left: the hand's own side
    K: np.ndarray | None = None  # (3, 3) the image's intrinsics; None: the dataset has none
    keypoints3d: np.ndarray | None = None  # (21, 3) camera frame, metres, OpenCV axes
    keypoints3d_valid: np.ndarray | None = None  # (21,); None with 3D: all valid
    mask: np.ndarray | None = None  # (H, W) bool hand silhouette
    mask_visible: np.ndarray | None = None  # (H, W) bool visible part; None: same as mask
    box_xyxy: np.ndarray | None = None  # (4,) hand box; None: from the annotated keypoints
    pose: np.ndarray | None = None  # (16, 3) MANO axis-angle of the hand; None: zeros in the item
    extra: dict[str, Tensor] = field(default_factory=dict)  # reader-specific item entries


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (stored pixels; EXIF orientation is not applied,
    because the annotations refer to the stored pixel grid)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def project(points3d: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points, (3, 3) K -> (N, 2) pixels (K p)[:2] / (K p)[2], float64."""
    p = np.asarray(points3d, np.float64) @ np.asarray(K, np.float64).T
    return p[:, :2] / p[:, 2:3]


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """(3, 3) stand-in K for an image without calibration (see the module docstring)."""
    f = DEFAULT_FOCAL_FACTOR * max(width, height)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def keypoint_extent(keypoints2d: np.ndarray, vis: np.ndarray) -> float:
    """Longer side in pixels of the tight box of the annotated keypoints (0 if none)."""
    pts = keypoints2d[vis > 0]
    return float((pts.max(0) - pts.min(0)).max()) if len(pts) else 0.0


def keypoint_box(keypoints2d: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """(21, 2) image pixels, (21,) annotation flags -> (4,) hand box x0, y0, x1, y1 (module doc)."""
    pts = keypoints2d[vis > 0]
    if len(pts) == 0:
        raise ValueError("no annotated keypoint to place the crop")
    lo, hi = pts.min(0), pts.max(0)
    half = (hi - lo) / 2 + BOX_MARGIN * (hi - lo).max()
    half = np.maximum(half, MIN_BOX_SIDE / 2)
    centre = (lo + hi) / 2
    return np.concatenate([centre - half, centre + half])


def jitter_crop(crop: Tensor, jitter: CropJitter, rng: np.random.Generator) -> Tensor:
    """(3,) crop (cx, cy, side) -> (3,) crop rescaled and shifted as `jitter` says."""
    side = crop[2] * rng.uniform(*jitter.scale)
    shift = torch.from_numpy(rng.uniform(-jitter.shift, jitter.shift, 2)) * crop[2]
    return torch.cat([crop[:2] + shift, side[None]])


_GREY = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)  # RGB -> luma (Rec. 601)
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=torch.float64,
)


def colour_augment(image: Tensor, aug: RealAugment, rng: np.random.Generator) -> Tensor:
    """(3, H, W) float RGB in [0, 1] -> the same with `aug`'s colour changes, in [0, 1]."""
    b, c, s = (1 + rng.uniform(-x, x) for x in (aug.brightness, aug.contrast, aug.saturation))
    hue = rng.uniform(-aug.hue, aug.hue) * 2 * np.pi
    grey_draw, blur_draw, sigma = rng.uniform(), rng.uniform(), rng.uniform(*aug.blur_sigma)
    x = image.double() * b
    mean = (x * _GREY[:, None, None]).sum(0).mean()
    x = (x - mean) * c + mean
    grey = (x * _GREY[:, None, None]).sum(0, keepdim=True)
    x = (x - grey) * s + grey
    ch, sh = np.cos(hue), np.sin(hue)
    turn = torch.tensor([[1, 0, 0], [0, ch, -sh], [0, sh, ch]], dtype=torch.float64)
    yiq_turn = torch.linalg.solve(_RGB_TO_YIQ, turn @ _RGB_TO_YIQ)  # RGB -> RGB
    x = torch.einsum("ij,jhw->ihw", yiq_turn, x).clamp(0, 1)
    if grey_draw < aug.grayscale_p:
        x = (x * _GREY[:, None, None]).sum(0, keepdim=True).expand(3, -1, -1)
    if blur_draw < aug.blur_p:
        radius = int(np.ceil(3 * sigma))
        k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
        k = (k / k.sum())[None, None]
        y = torch.nn.functional.pad(x[:, None], (radius, radius, 0, 0), mode="replicate")
        y = torch.nn.functional.conv2d(y, k[..., None, :])
        y = torch.nn.functional.pad(y, (0, 0, radius, radius), mode="replicate")
        x = torch.nn.functional.conv2d(y, k[..., :, None])[:, 0]
    return x.clamp(0, 1).to(image.dtype)


def crop_masks(
    mask: np.ndarray, visible: np.ndarray, crop: tuple[float, float, float], angle: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(H, W) bool masks -> two (CROP_SIZE, CROP_SIZE) float 0/1 crops, resampled like the image
    (bilinear, then thresholded at one half)."""
    stack = np.stack([mask, visible, np.zeros_like(mask)], axis=-1).astype(np.uint8) * 255
    out = torch.from_numpy(crop_image(stack, crop, CROP_SIZE, angle=angle)) >= 128
    return out[..., 0].float(), out[..., 1].float()


def build_item(
    sample: HandSample,
    index: int,
    jitter: CropJitter | None = None,
    rng: np.random.Generator | None = None,
    augment: RealAugment | None = None,
) -> dict[str, Tensor]:
    """Crop one `HandSample` and pack the item contract (module docstring)."""
    height, width = sample.image.shape[:2]
    has_K = sample.K is not None
    K = np.asarray(sample.K if has_K else default_intrinsics(width, height), np.float64)
    vis = np.asarray(sample.keypoints2d_vis, np.float64)
    box = sample.box_xyxy if sample.box_xyxy is not None else keypoint_box(sample.keypoints2d, vis)
    box = torch.as_tensor(np.asarray(box, np.float64))
    crop = square_crop(box)  # (3,) float64
    if (jitter is not None or augment is not None) and rng is None:
        raise ValueError("crop jitter and augmentation need a random generator")
    if jitter is not None:
        crop = jitter_crop(crop, jitter, rng)
    angle = 0.0
    if augment is not None:
        angle = float(np.deg2rad(rng.uniform(-augment.rotation, augment.rotation)))
    crop_tuple = tuple(float(c) for c in crop)
    image = crop_image(sample.image, crop_tuple, CROP_SIZE, angle=angle)
    uv = points_to_crop(
        torch.from_numpy(np.asarray(sample.keypoints2d, np.float64)), crop, angle=angle
    )
    image = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    if augment is not None:
        image = colour_augment(image, augment, rng)
    pose = torch.zeros(NUM_JOINTS, 3)
    if sample.pose is not None:
        pose = torch.from_numpy(np.asarray(sample.pose, np.float64))
        if angle:
            root = rotation_z(angle) @ axis_angle_to_matrix(pose[0])
            pose = torch.cat([matrix_to_axis_angle(root)[None], pose[1:]])
        pose = pose.float()

    has_3d = sample.keypoints3d is not None
    if has_3d:
        kp3d = torch.from_numpy(np.asarray(sample.keypoints3d, np.float64))
        if angle:
            kp3d = kp3d @ rotation_z(angle).T
        valid = sample.keypoints3d_valid
        valid3d = torch.ones(NUM_KEYPOINTS) if valid is None else torch.as_tensor(valid)
    else:
        kp3d = torch.zeros(NUM_KEYPOINTS, 3)
        valid3d = torch.zeros(NUM_KEYPOINTS)

    has_mask = sample.mask is not None
    if has_mask:
        visible = sample.mask if sample.mask_visible is None else sample.mask_visible
        mask, mask_visible = crop_masks(sample.mask, visible, crop_tuple, angle)
    else:
        mask, mask_visible = torch.zeros(CROP_SIZE, CROP_SIZE), torch.zeros(CROP_SIZE, CROP_SIZE)

    item = {
        "image": image,
        "mask": mask,
        "mask_visible": mask_visible,
        "keypoints2d": uv.float(),
        "keypoints2d_vis": torch.from_numpy(vis).float(),
        "keypoints3d": kp3d.float(),
        "keypoints3d_valid": valid3d.float(),
        "pose": pose,
        "betas": torch.zeros(NUM_BETAS),
        "cam_weak": torch.zeros(3),
        "K": crop_intrinsics(torch.from_numpy(K), crop, CROP_SIZE, angle).float(),
        "crop": crop.float(),
        "box_xyxy": box.float(),
        "side": torch.tensor(sample.side, dtype=torch.long),
        "has_3d": torch.tensor(float(has_3d)),
        "has_mask": torch.tensor(float(has_mask)),
        "has_mano": torch.tensor(0.0),
        "has_K": torch.tensor(float(has_K)),
        "index": torch.tensor(index, dtype=torch.long),
    }
    item.update(sample.extra)
    return item


class HandCropDataset(torch.utils.data.Dataset):
    """Base of the readers: a subclass sets `name`, implements `__len__` and `load(index)`; this
    class crops and packs the item. Augmentation randomness comes from a numpy generator seeded
    with (seed, epoch, index), so items are reproducible in any DataLoader worker; call
    `set_epoch` before each epoch (with non-persistent workers) to draw new jitter. A reader that
    passes `real_augment` on also turns and recolours its crops (module docstring)."""

    name = "hands"

    def __init__(
        self,
        crop_jitter: CropJitter | None = None,
        seed: int = 0,
        real_augment: RealAugment | None = None,
    ) -> None:
        self.crop_jitter = crop_jitter
        self.real_augment = real_augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> HandSample:
        """The uncropped hand of item `index` (0 <= index < len(self))."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        index %= n
        rng = None
        if self.crop_jitter is not None or self.real_augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
        return build_item(self.load(index), index, self.crop_jitter, rng, self.real_augment)
