"""Mixing datasets for training, and building a dataset from a short text spec.

`MixedDataset` draws item i of an epoch by picking a dataset with probability proportional to its
weight, then one of its items uniformly, from a numpy generator seeded with (seed, epoch, i): the
mix is reproducible in any DataLoader worker and changes with `set_epoch`. Its items carry exactly
`common.ITEM_KEYS` plus `source` () long (the position of the item's dataset in the list), so
batches of mixed datasets collate: reader-specific extras (FreiHAND's `vertices_gt`) and the
synthetic folder's extra labels (keypoints_occluded, transl, K_full) are dropped, and what a
synthetic item lacks is filled in (has_K = 1, keypoints3d_valid = has_3d, index).

`build_dataset("NAME[:PATH]", split)` names a dataset the way configs and the command line do:

    freihand:ROOT            training/data/freihand.py (train -> training, test -> evaluation)
    rhd:ROOT                 training/data/rhd.py (train -> training, test -> evaluation)
    stb:ROOT                 training/data/stb.py (train: B2-B6, test: B1)
    samples-NAME[:ROOT]      training/data/samples.py, NAME in freihand, onehand10k, panoptic,
                             interhand2.6m; ROOT defaults to ../shared/samples; same for any split
    synthetic-folder:DIR     a folder written by `python -m training.synthesize` (the folder is
                             the split; its crops were jittered at synthesis, so crop_jitter and
                             seed are not used)
    teacher-folder:DIR       real photos labelled by `python -m training.label_real`
                             (training/data/teacher_folder.py; the labeller's --holdout globs
                             made its test split)

Items also carry the per-sample label weights `weight_2d` and `weight_3d` () float
(`LABEL_WEIGHT_KEYS`; the teacher folder's confidence, 1 for every other reader).

Extra keyword arguments (crop_jitter, seed) go to the reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .common import ITEM_KEYS
from .freihand import FreiHAND
from .rhd import RHD
from .samples import DEFAULT_SAMPLES_ROOT, SampleSet
from .samples import NAMES as SAMPLE_SET_NAMES
from .stb import STB
from .synthetic_folder import SyntheticFolder
from .teacher_folder import TeacherFolder

SPLITS = ("train", "test")
_NATIVE_SPLITS = {"train": "training", "test": "evaluation"}  # FreiHAND and RHD folder names
DATASET_NAMES: tuple[str, ...] = (
    "freihand", "rhd", "stb", *(f"samples-{n}" for n in SAMPLE_SET_NAMES), "synthetic-folder",
    "teacher-folder",
)  # fmt: skip
# per-sample loss weights (training.losses.hamr_loss): 1 where a reader has none
LABEL_WEIGHT_KEYS: tuple[str, ...] = ("weight_2d", "weight_3d")


def conform_item(item: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """Any reader's item (SyntheticFolder's too) -> a dict with exactly ITEM_KEYS and
    LABEL_WEIGHT_KEYS."""
    out = {k: item[k] for k in ITEM_KEYS if k in item}
    out.setdefault("keypoints3d_valid", item["has_3d"] * torch.ones(item["keypoints3d"].shape[0]))
    out.setdefault("has_K", torch.tensor(1.0))  # the synthetic crops' K is exact
    out.setdefault("index", torch.tensor(index, dtype=torch.long))
    for k in LABEL_WEIGHT_KEYS:
        out[k] = torch.as_tensor(item.get(k, 1.0), dtype=torch.float32)
    missing = set(ITEM_KEYS) - set(out)
    if missing:
        raise KeyError(f"item lacks {sorted(missing)}")
    return out


class MixedDataset(torch.utils.data.Dataset):
    """`length` items drawn from `datasets` with probabilities proportional to `weights`."""

    def __init__(
        self,
        datasets: Sequence[torch.utils.data.Dataset],
        weights: Sequence[float],
        length: int,
        seed: int = 0,
    ) -> None:
        if not datasets or len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets and {len(weights)} weights: need one each")
        w = np.asarray(weights, np.float64)
        if (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        for d, wi in zip(datasets, w, strict=True):
            if wi > 0 and len(d) == 0:
                raise ValueError(f"dataset {getattr(d, 'name', d)!r} is empty but has weight {wi}")
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        self.datasets = list(datasets)
        self.probabilities = w / w.sum()
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new mix (and new crop jitter in readers that have it) for this epoch."""
        self.epoch = epoch
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """Mixed index -> (dataset position, item index in that dataset)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        source = int(rng.choice(len(self.datasets), p=self.probabilities))
        return source, int(rng.integers(len(self.datasets[source])))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        source, j = self.locate(index)
        item = conform_item(self.datasets[source][j], j)
        item["source"] = torch.tensor(source, dtype=torch.long)
        return item


def _need_path(name: str, path: str | None) -> Path:
    if not path:
        raise ValueError(f"dataset {name!r} needs a path: '{name}:/path/to/{name}'")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset {name!r}: path {p} does not exist")
    return p


def build_dataset(spec: str, split: str, **kw) -> torch.utils.data.Dataset:
    """'NAME[:PATH]' (module docstring) and split 'train' | 'test' -> the dataset."""
    name, _, path = spec.partition(":")
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r} in {spec!r}; known: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name.startswith("samples-"):
        root = Path(path).expanduser() if path else DEFAULT_SAMPLES_ROOT
        if not root.exists():
            raise FileNotFoundError(f"dataset {name!r}: samples folder {root} does not exist")
        return SampleSet(root, name.removeprefix("samples-"), **kw)
    root = _need_path(name, path)
    if name == "freihand":
        return FreiHAND(root, _NATIVE_SPLITS[split], **kw)
    if name == "rhd":
        return RHD(root, _NATIVE_SPLITS[split], **kw)
    if name == "stb":
        return STB(root, split, **kw)
    if name == "teacher-folder":
        return TeacherFolder(root, split, **kw)
    unknown = set(kw) - {"crop_jitter", "seed"}
    if unknown:
        raise TypeError(f"synthetic-folder takes no options {sorted(unknown)}")
    return SyntheticFolder(root)
