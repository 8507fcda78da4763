"""Tiny datasets in the official on-disk layouts of FreiHAND, RHD and STB (and a synthetic folder),
with known ground truth, for the reader tests.

Labels are made the way the datasets make them: known 3D keypoints (a simple synthetic hand) in
each dataset's own joint order, units and camera frame, and 2D labels projected through a known K.
The dataset orders are spelled out here by joint NAME (not by the readers' index tables), so the
tests check the readers' conversions against an independent statement of each convention. Every
image has a red marker on the thumb tip, so a test can see that the crop and the keypoint order
agree. Each `write_*` returns the truth in the project's order (backend/hand_model/constants.py).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

from backend.hand_model.constants import KEYPOINT_NAMES
from training.data.synthetic_folder import SyntheticFolderWriter

MARKER_RGB = (230, 30, 30)  # drawn on the thumb tip
MARKER_HALF = 4  # marker and mask squares are (2 * half + 1) pixels wide
FINGERS = ("thumb", "index", "middle", "ring", "pinky")
JOINTS = ("mcp", "pip", "dip", "tip")  # our finger keypoints 1..4


def our_name(name: str) -> str:
    """'index_tip' / 'little_mcp' style name -> the project's name ('index4', 'pinky1')."""
    finger, joint = name.split("_")
    finger = {"little": "pinky"}.get(finger, finger)
    return f"{finger}{JOINTS.index(joint) + 1}"


def to_dataset_order(ours: np.ndarray, names: list[str]) -> np.ndarray:
    """(21, ...) in the project's order -> the order given by dataset joint `names`; a name that
    is not 'finger_joint' maps to our keypoint 0."""
    return np.stack([ours[KEYPOINT_NAMES.index(our_name(n)) if "_" in n else 0] for n in names])


# The datasets' own orders, from their documentation (see the readers' docstrings for sources).
RHD_NAMES = ["wrist"] + [
    f"{f}_{j}"
    for f in ("thumb", "index", "middle", "ring", "little")
    for j in ("tip", "dip", "pip", "mcp")
]
STB_NAMES = ["palm"] + [
    f"{f}_{j}"
    for f in ("little", "ring", "middle", "index", "thumb")
    for j in ("mcp", "pip", "dip", "tip")
]


def hand_template(left: bool = False) -> np.ndarray:
    """(21, 3) a flat open right hand (left: mirrored), project order, metres, wrist at the
    origin, fingers pointing up (-y); the thumb tip is the leftmost point of a right hand."""
    bases = {
        "thumb": (-0.03, -0.02),
        "index": (-0.02, -0.085),
        "middle": (0.0, -0.09),
        "ring": (0.018, -0.085),
        "pinky": (0.034, -0.075),
    }
    dirs = {
        "thumb": (-0.7, -0.7),
        "index": (-0.15, -1.0),
        "middle": (0.0, -1.0),
        "ring": (0.12, -1.0),
        "pinky": (0.25, -1.0),
    }
    kp = np.zeros((21, 3))
    for f, finger in enumerate(FINGERS):
        d = np.array(dirs[finger]) / np.linalg.norm(dirs[finger])
        p = np.array([*bases[finger], 0.004 * f])
        for j, length in enumerate((0.0, 0.032, 0.025, 0.02)):
            p = p + np.array([*(d * length), 0.004])
            kp[1 + 4 * f + j] = p
    if left:
        kp[:, 0] *= -1
    return kp


def place_hand(rng: np.random.Generator, centre, scale: float = 1.0, left: bool = False):
    """(21, 3) the template rotated in-plane by up to 20 degrees, scaled, moved to `centre`."""
    a = np.radians(rng.uniform(-20, 20))
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return hand_template(left) @ rot.T * scale + np.asarray(centre, np.float64)


def intrinsics(f: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def project(xyz: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = xyz @ K.T
    return p[:, :2] / p[:, 2:]


def paint_square(img: np.ndarray, uv, value, half: int = MARKER_HALF) -> None:
    """Fill the square of pixels centred on the pixel that contains image point uv."""
    j, i = int(np.floor(uv[0])), int(np.floor(uv[1]))
    img[max(i - half, 0) : i + half + 1, max(j - half, 0) : j + half + 1] = value


def picture(width: int, height: int, rgb, thumb_tips) -> np.ndarray:
    """(H, W, 3) uint8 solid `rgb` with a red marker at each thumb tip (image pixels)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = rgb
    for uv in thumb_tips:
        paint_square(img, uv, MARKER_RGB)
    return img


def _dump_json(path: Path, array: np.ndarray) -> None:
    path.write_text(json.dumps(np.asarray(array).tolist()))


# FreiHAND ----------------------------------------------------------------------------------------
FREIHAND_VERSION_RGB = ((40, 160, 40), (40, 40, 160), (40, 160, 160), (110, 110, 110))


def write_freihand(
    root: Path, unique: int = 2, eval_count: int = 2, eval_labels: bool = True, seed: int = 0
) -> dict:
    """FreiHAND_pub_v2 layout; image i of the training set shows sample i % unique over the
    background FREIHAND_VERSION_RGB[i // unique]. Masks: a square at the middle-finger MCP.
    Returns {"training": {"xyz", "K"}, "evaluation": {"xyz", "K", "verts"}} (project order)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for split, count, versions in (("training", unique, 4), ("evaluation", eval_count, 1)):
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        focal, centre = rng.uniform(380, 420, count), 112 + rng.uniform(-3, 3, (count, 2))
        K = np.stack([intrinsics(focal[j], *centre[j]) for j in range(count)])
        xyz = np.stack([place_hand(rng, (0.0, 0.06, 0.7)) for _ in range(count)])
        for v in range(versions):
            for j in range(count):
                img = picture(224, 224, FREIHAND_VERSION_RGB[v], [project(xyz[j], K[j])[4]])
                Image.fromarray(img).save(
                    root / split / "rgb" / f"{v * count + j:08d}.jpg", quality=95
                )
        _dump_json(root / f"{split}_K.json", K)
        if split == "training":
            (root / split / "mask").mkdir(exist_ok=True)
            for j in range(count):
                mask = np.zeros((224, 224), np.uint8)
                paint_square(mask, project(xyz[j], K[j])[9], 255)
                Image.fromarray(mask).save(root / split / "mask" / f"{j:08d}.jpg", quality=95)
            _dump_json(root / "training_xyz.json", xyz)
            _dump_json(root / "training_mano.json", np.zeros((count, 1, 61)))
            _dump_json(root / "training_verts.json", np.zeros((count, 778, 3)))
            truth[split] = {"xyz": xyz, "K": K}
        else:
            verts = xyz[:, :1] + rng.normal(0, 0.03, (count, 778, 3))
            if eval_labels:
                _dump_json(root / "evaluation_xyz.json", xyz)
                _dump_json(root / "evaluation_verts.json", verts)
            truth[split] = {"xyz": xyz, "K": K, "verts": verts}
    return truth


# RHD ---------------------------------------------------------------------------------------------
RHD_PERSON = 1  # mask class of the person; hands: 2-17 left, 18-33 right


def write_rhd(root: Path, split: str = "training", seed: int = 0) -> list[dict]:
    """RHD_published_v2 layout with three 320x320 images:
    0: both hands fully visible (left in the image's left half);
    1: right hand with 12 visible keypoints (an item), left hand with 5 (not an item);
    2: a tiny left hand (box < 16 px) and an invisible right hand: no item.
    Mask classes: each hand's wrist square in its own class (17 left, 18 right: the range ends),
    its index tip square in the OTHER hand's class (33 / 2), its pinky tip square person (1).
    Returns per image {"left", "right"}: {"xyz" (21, 3), "vis" (21,)} in project order, and "K"."""
    rng = np.random.default_rng(seed)
    base = root / split
    (base / "color").mkdir(parents=True, exist_ok=True)
    (base / "mask").mkdir(parents=True, exist_ok=True)
    K = intrinsics(280.0, 160.0, 160.0)
    partial = np.zeros(21)
    partial[[0, 1, 2, 3, 4, 5, 6, 9, 10, 13, 17, 20]] = 1  # 12 visible
    few = np.zeros(21)
    few[[0, 5, 9, 13, 17]] = 1
    scenes = [
        {
            "left": (place_hand(rng, (-0.08, 0.05, 0.6), left=True), np.ones(21)),
            "right": (place_hand(rng, (0.08, 0.05, 0.6)), np.ones(21)),
        },
        {
            "left": (place_hand(rng, (-0.08, 0.05, 0.6), left=True), few),
            "right": (place_hand(rng, (0.08, 0.05, 0.6)), partial),
        },
        {
            "left": (place_hand(rng, (-0.05, 0.0, 0.6), scale=0.08, left=True), np.ones(21)),
            "right": (place_hand(rng, (0.08, 0.05, 0.6)), np.zeros(21)),
        },
    ]
    anno, truth = {}, []
    for i, scene in enumerate(scenes):
        uv = {s: project(xyz, K) for s, (xyz, _) in scene.items()}
        img = picture(320, 320, (40, 40, 160), [uv["left"][4], uv["right"][4]])
        classes = np.zeros((320, 320), np.uint8)
        for s, own, other in (("left", 17, 33), ("right", 18, 2)):
            paint_square(classes, uv[s][0], own)
            paint_square(classes, uv[s][8], other)
            paint_square(classes, uv[s][20], RHD_PERSON)
        Image.fromarray(img).save(base / "color" / f"{i:05d}.png")
        Image.fromarray(classes).save(base / "mask" / f"{i:05d}.png")
        xyz42 = np.concatenate(
            [to_dataset_order(scene[s][0], RHD_NAMES) for s in ("left", "right")]
        )
        vis42 = np.concatenate(
            [to_dataset_order(scene[s][1], RHD_NAMES) for s in ("left", "right")]
        )
        uv42 = project(xyz42, K)
        anno[i] = {
            "xyz": xyz42.astype(np.float32),
            "K": K.astype(np.float32),
            "uv_vis": np.concatenate([uv42, vis42[:, None]], 1).astype(np.float32),
        }
        truth.append(
            {
                s: {"xyz": xyz.astype(np.float32).astype(np.float64), "vis": vis}
                for s, (xyz, vis) in scene.items()
            }
            | {"K": K}
        )
    with open(base / f"anno_{split}.pickle", "wb") as f:
        pickle.dump(anno, f, protocol=2)
    return truth


# STB ---------------------------------------------------------------------------------------------
STB_K = intrinsics(607.92271, 314.78337, 236.42484)
STB_K[1, 1] = 607.88192
STB_OM = np.array([0.00531, -0.01196, 0.00301])  # readme: colour -> depth rotation vector
STB_T_MM = np.array([-24.0381, -0.4563, -1.2326])  # readme: colour -> depth translation


def rodrigues(om: np.ndarray) -> np.ndarray:
    """Rotation vector -> matrix, R = I + sin(a) [k]x + (1 - cos(a)) [k]x^2."""
    a = np.linalg.norm(om)
    k = om / a
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def write_stb(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """STB layout for all 12 sequences (B1*: 2 frames, the others 1), 640x480 images.
    Returns {sequence: (frames, 21, 3)} colour-camera-frame metres in project order, keypoint 0
    being the PALM centre (midpoint of wrist and middle MCP), as STB labels it."""
    rng = np.random.default_rng(seed)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    R = rodrigues(STB_OM)
    truth = {}
    for b in range(1, 7):
        for kind in ("Counting", "Random"):
            seq = f"B{b}{kind}"
            (root / "images" / seq).mkdir(parents=True, exist_ok=True)
            frames = []
            for i in range(2 if b == 1 else 1):
                xyz = place_hand(rng, (rng.uniform(-0.05, 0.05), 0.05, 0.5), left=True)
                xyz[0] = (xyz[0] + xyz[9]) / 2  # the palm centre replaces the wrist
                img = picture(640, 480, (90, 90, 90), [project(xyz, STB_K)[4]])
                Image.fromarray(img).save(root / "images" / seq / f"SK_color_{i}.png")
                frames.append(xyz)
            truth[seq] = np.stack(frames)
            depth_mm = (truth[seq] * 1000) @ R.T + STB_T_MM  # X_depth = R X_color + T
            para = np.stack([to_dataset_order(x, STB_NAMES) for x in depth_mm])  # (n, 21, 3)
            scipy.io.savemat(
                root / "labels" / f"{seq}_SK.mat", {"handPara": para.transpose(2, 1, 0)}
            )
    return truth


# Synthetic folder --------------------------------------------------------------------------------
def write_synthetic_folder(out: Path, count: int = 3, seed: int = 0) -> Path:
    """A `hamr.synthetic/1` folder from a hand-made batch (no rendering): the labels are
    consistent (2D = projection of 3D through the crop's K), the pictures flat grey."""
    rng = np.random.default_rng(seed)
    K = intrinsics(500.0, 128.0, 128.0)
    kp3d = np.stack([place_hand(rng, (0.0, 0.04, 0.5)) for _ in range(count)])
    batch = {
        "image": torch.full((count, 3, 256, 256), 0.5),
        "mask": torch.zeros(count, 256, 256),
        "mask_visible": torch.zeros(count, 256, 256),
        "keypoints2d": torch.from_numpy(np.stack([project(x, K) for x in kp3d])).float(),
        "keypoints3d": torch.from_numpy(kp3d).float(),
        "keypoints_occluded": torch.zeros(count, 21),
        "pose": torch.zeros(count, 16, 3),
        "betas": torch.zeros(count, 10),
        "cam_weak": torch.zeros(count, 3),
        "K": torch.from_numpy(K).float().expand(count, 3, 3),
        "K_full": torch.from_numpy(K).float().expand(count, 3, 3),
        "crop": torch.tensor([[320.0, 240.0, 256.0]]).expand(count, 3),
        "box_xyxy": torch.tensor([[240.0, 160.0, 400.0, 320.0]]).expand(count, 4),
        "side": torch.zeros(count, dtype=torch.long),
    }
    writer = SyntheticFolderWriter(out, {"seed": seed}, image_format="png")
    writer.add(batch, torch.zeros(count, 3), count)
    return writer.close()
