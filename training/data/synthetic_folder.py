"""The on-disk synthetic dataset format: writer and reader (format `hamr.synthetic/1`).

    DIR/meta.json        format, count, seed, batch size, engine config, hand model id, fields
    DIR/labels.npz       one array per label field, first axis = sample index (float32 / int64)
    DIR/images/NNNNNN.jpg (or .png)   the 256x256 crop, RGB
    DIR/masks/NNNNNN.png  8-bit grey: 255 visible hand, 128 hand hidden by an occluder, 0 not hand

Label fields (camera frame is OpenCV, metres; crop pixels with centres at j + 0.5):
keypoints2d (N,21,2) crop pixels; keypoints3d (N,21,3); keypoints_occluded (N,21); pose (N,16,3)
axis-angle with the global orientation in the camera frame, of the `side`'s own model; betas
(N,10); transl (N,3) so that vertices = HandModel(side)(pose, betas).vertices + transl; cam_weak
(N,3); K (N,3,3) of the crop; K_full (N,3,3) of the virtual 640x480 image; crop (N,3) = (cx, cy,
side) and box_xyxy (N,4) in that image; side (N,) 0 right / 1 left.
Imports torch, numpy and PIL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FORMAT = "hamr.synthetic/1"
STORED_FIELDS = (
    "keypoints2d",
    "keypoints3d",
    "keypoints_occluded",
    "pose",
    "betas",
    "transl",
    "cam_weak",
    "K",
    "K_full",
    "crop",
    "box_xyxy",
    "side",
)


def encode_mask(mask: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(H, W) full and visible hand masks (bool/0-1) -> (H, W) uint8 (255 / 128 / 0)."""
    out = np.zeros(mask.shape, np.uint8)
    out[mask > 0.5] = 128
    out[visible > 0.5] = 255
    return out


def decode_mask(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 mask image -> (full, visible) float32 masks."""
    return (encoded >= 64).astype(np.float32), (encoded >= 192).astype(np.float32)


class SyntheticFolderWriter:
    """Appends batches from the engine to a dataset folder; `close()` writes labels and meta."""

    def __init__(self, out: str | Path, meta: dict, image_format: str = "jpg") -> None:
        if image_format not in ("jpg", "png"):
            raise ValueError("image_format must be 'jpg' or 'png'")
        self.out = Path(out)
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        (self.out / "masks").mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta, format=FORMAT, image_format=image_format)
        self.image_format = image_format
        self.labels: dict[str, list[np.ndarray]] = {k: [] for k in STORED_FIELDS}
        self.count = 0

    def add(self, batch: dict[str, torch.Tensor], transl: torch.Tensor, limit: int) -> None:
        """Write up to `limit` samples of an engine batch (transl (B, 3): see module doc)."""
        n = min(limit, batch["image"].shape[0])
        images = batch["image"][:n].permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5
        images = images.clip(0, 255).astype(np.uint8)
        masks = batch["mask"][:n].cpu().numpy()
        visible = batch["mask_visible"][:n].cpu().numpy()
        for i in range(n):
            name = f"{self.count + i:06d}"
            img = Image.fromarray(images[i])
            if self.image_format == "jpg":
                img.save(self.out / "images" / f"{name}.jpg", quality=95)
            else:
                img.save(self.out / "images" / f"{name}.png")
            Image.fromarray(encode_mask(masks[i], visible[i])).save(
                self.out / "masks" / f"{name}.png"
            )
        for k in STORED_FIELDS:
            src = transl if k == "transl" else batch[k]
            self.labels[k].append(src[:n].cpu().numpy())
        self.count += n

    def close(self) -> Path:
        arrays = {}
        for k, parts in self.labels.items():
            a = np.concatenate(parts)
            arrays[k] = a.astype(np.int64) if k == "side" else a.astype(np.float32)
        np.savez_compressed(self.out / "labels.npz", **arrays)
        meta = dict(self.meta, count=self.count, fields=list(STORED_FIELDS))
        (self.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return self.out


class SyntheticFolder(torch.utils.data.Dataset):
    """Reads a `hamr.synthetic/1` folder; items follow the training batch contract."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a synthetic dataset (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT}")
        with np.load(self.root / "labels.npz", allow_pickle=False) as data:
            self.labels = {k: data[k] for k in data.files}
        self.ext = self.meta["image_format"]

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        name = f"{i:06d}"
        with Image.open(self.root / "images" / f"{name}.{self.ext}") as im:
            image = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
        with Image.open(self.root / "masks" / f"{name}.png") as im:
            mask, visible = decode_mask(np.asarray(im))
        item = {k: torch.from_numpy(np.asarray(v[i])) for k, v in self.labels.items()}
        item["image"] = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        item["mask"] = torch.from_numpy(mask)
        item["mask_visible"] = torch.from_numpy(visible)
        item["keypoints2d_vis"] = torch.ones(21)
        for flag in ("has_3d", "has_mask", "has_mano"):
            item[flag] = torch.tensor(1.0)
        return item
